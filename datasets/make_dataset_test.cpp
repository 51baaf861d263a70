#include "datasets/make_dataset.hpp"

#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/temp_dir.hpp"

namespace millrace::datasets {
namespace {

namespace fs = std::filesystem;

// ITU-T T.81 Annex K.1, the luminance table that libjpeg scales by the quality setting.
constexpr std::array<int, 64> kAnnexKLuminance = {
    16, 11, 10, 16, 24,  40,  51,  61,  12, 12, 14, 19, 26,  58,  60,  55,
    14, 13, 16, 24, 40,  57,  69,  56,  14, 17, 22, 29, 51,  87,  80,  62,
    18, 22, 37, 56, 68,  109, 103, 77,  24, 35, 55, 64, 81,  104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99};

std::vector<unsigned char> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The sum of the 64 entries of the first quantisation table (id 0) in a baseline JPEG, or -1.
int luminance_table_sum(const std::vector<unsigned char>& jpeg) {
  std::size_t pos = 2;  // after SOI
  while (pos + 4 <= jpeg.size()) {
    if (jpeg[pos] != 0xFF) return -1;
    const int marker = jpeg[pos + 1];
    const std::size_t length = (jpeg[pos + 2] << 8) | jpeg[pos + 3];
    if (marker == 0xDB) {
      std::size_t p = pos + 4;
      while (p < pos + 2 + length) {
        const int precision = jpeg[p] >> 4;
        const int id = jpeg[p] & 0x0F;
        const std::size_t entry = precision == 0 ? 1 : 2;
        int sum = 0;
        for (int i = 0; i < 64; ++i) {
          const std::size_t at = p + 1 + i * entry;
          sum += entry == 1 ? jpeg[at] : (jpeg[at] << 8) | jpeg[at + 1];
        }
        if (id == 0) return sum;
        p += 1 + 64 * entry;
      }
    }
    if (marker == 0xDA) return -1;
    pos += 2 + length;
  }
  return -1;
}

// The libjpeg quality whose scaled Annex K table has this sum (jcparam.c: jpeg_quality_scaling and
// jpeg_add_quant_table with force_baseline), or -1 if none or several do.
int quality_from_table_sum(int sum) {
  int found = -1;
  for (int q = 1; q <= 100; ++q) {
    const int scale = q < 50 ? 5000 / q : 200 - 2 * q;
    int total = 0;
    for (const int base : kAnnexKLuminance) {
      total += std::clamp((base * scale + 50) / 100, 1, 255);
    }
    if (total == sum) {
      if (found != -1) return -1;
      found = q;
    }
  }
  return found;
}

struct ListEntry {
  int index = 0;
  std::string label_text;
  std::string path;
};

std::vector<ListEntry> read_list(const fs::path& path) {
  std::ifstream in(path);
  std::vector<ListEntry> entries;
  std::string line;
  while (std::getline(in, line)) {
    ListEntry e;
    std::istringstream fields(line);
    std::string index;
    if (!std::getline(fields, index, '\t') || !std::getline(fields, e.label_text, '\t') ||
        !std::getline(fields, e.path)) {
      ADD_FAILURE() << "malformed list line: '" << line << "'";
      continue;
    }
    e.index = std::stoi(index);
    entries.push_back(e);
  }
  return entries;
}

std::vector<std::string> jpegs_under(const fs::path& root) {
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file() && entry.path().extension() == ".jpg") {
      files.push_back(fs::relative(entry.path(), root).generic_string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

class MakeDatasetTest : public ::testing::Test {
 protected:
  DatasetSpec spec(const std::string& sub, int count) const {
    DatasetSpec s;
    s.dir = (root_ / sub).string();
    s.count = count;
    s.classes = 4;
    s.seed = 7;
    return s;
  }

  // A folder of photo candidates of which none is usable: grey, too small, flat graphics, a
  // truncated JPEG and a file that only claims to be one.
  fs::path unusable_photos() const {
    fs::path dir = root_ / "unusable";
    fs::create_directories(dir);
    cv::RNG rng(1);
    cv::Mat grey(300, 400, CV_8UC1);
    rng.fill(grey, cv::RNG::UNIFORM, 0, 256);
    EXPECT_TRUE(cv::imwrite((dir / "grey.png").string(), grey));
    cv::Mat small(120, 160, CV_8UC3);
    rng.fill(small, cv::RNG::UNIFORM, 0, 256);
    EXPECT_TRUE(cv::imwrite((dir / "small.png").string(), small));
    cv::Mat flat(300, 400, CV_8UC3);
    for (int y = 0; y < flat.rows; ++y) {
      for (int x = 0; x < flat.cols; ++x) {
        flat.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<std::uint8_t>(x * 255 / 399),
                                             static_cast<std::uint8_t>(y * 255 / 299), 128);
      }
    }
    EXPECT_TRUE(cv::imwrite((dir / "gradient.png").string(), flat));
    cv::Mat busy(300, 400, CV_8UC3);
    rng.fill(busy, cv::RNG::UNIFORM, 0, 256);
    std::vector<unsigned char> jpeg;
    EXPECT_TRUE(cv::imencode(".jpg", busy, jpeg));
    jpeg.resize(jpeg.size() / 2);
    std::ofstream((dir / "truncated.jpg").string(), std::ios::binary)
        .write(reinterpret_cast<const char*>(jpeg.data()),
               static_cast<std::streamsize>(jpeg.size()));
    std::ofstream((dir / "not_an_image.jpg").string()) << "hello";
    return dir;
  }

  // One usable photo whose colours are unmistakable: strongly red, little blue, with texture.
  fs::path red_photo() const {
    fs::path dir = root_ / "red";
    fs::create_directories(dir);
    cv::Mat photo(360, 480, CV_8UC3);
    cv::RNG rng(2);
    cv::Mat noise(photo.size(), CV_8UC1);
    rng.fill(noise, cv::RNG::UNIFORM, 0, 40);
    for (int y = 0; y < photo.rows; ++y) {
      for (int x = 0; x < photo.cols; ++x) {
        const int t = noise.at<std::uint8_t>(y, x) + ((x / 8 + y / 8) % 2) * 30;
        photo.at<cv::Vec3b>(y, x) =
            cv::Vec3b(static_cast<std::uint8_t>(20 + t / 2), static_cast<std::uint8_t>(60 + t),
                      static_cast<std::uint8_t>(170 + t));
      }
    }
    EXPECT_TRUE(cv::imwrite((dir / "red.png").string(), photo));
    return dir;
  }

  const millrace::testing::TempDir dir_{"millrace_datasets"};
  const fs::path root_ = dir_.path();
};

// The quality probe used below, checked on encodings of known quality.
TEST(QualityProbe, RecoversTheEncoderQuality) {
  cv::Mat image(64, 64, CV_8UC3);
  cv::RNG(3).fill(image, cv::RNG::UNIFORM, 0, 256);
  for (const int q : {50, 75, 76, 85, 94, 95}) {
    std::vector<unsigned char> jpeg;
    ASSERT_TRUE(cv::imencode(".jpg", image, jpeg, {cv::IMWRITE_JPEG_QUALITY, q}));
    EXPECT_EQ(quality_from_table_sum(luminance_table_sum(jpeg)), q);
  }
}

TEST_F(MakeDatasetTest, WritesImageNetLikeSetWithIm2recList) {
  const DatasetSpec s = spec("set", 20);
  std::vector<std::pair<int, int>> calls;
  const DatasetReport report =
      make_dataset(s, [&](int done, int total) { calls.emplace_back(done, total); });

  EXPECT_EQ(report.images, 20);
  EXPECT_EQ(report.from_photos + report.procedural, 20);
  EXPECT_EQ(fs::path(report.list_path), fs::path(s.dir) / "labels.lst");
  ASSERT_EQ(calls.size(), 20u);
  for (int k = 0; k < 20; ++k) EXPECT_EQ(calls[k], std::make_pair(k + 1, 20));

  const std::vector<ListEntry> list = read_list(report.list_path);
  ASSERT_EQ(list.size(), 20u);
  // A sorted walk of the folders, as im2rec.py makes its list, must visit the files in list order.
  const std::vector<std::string> on_disk = jpegs_under(s.dir);
  ASSERT_EQ(on_disk.size(), 20u);
  std::map<std::string, int> per_class;
  std::int64_t total_bytes = 0;
  std::set<std::uintmax_t> sizes;
  std::set<int> qualities;
  for (int i = 0; i < 20; ++i) {
    const ListEntry& e = list[i];
    EXPECT_EQ(e.index, i);
    EXPECT_EQ(e.path, on_disk[i]);
    // 20 images in 4 classes: five each, in class order; im2rec prints labels with "%f".
    const int label = i / 5;
    EXPECT_EQ(e.label_text, std::to_string(label) + ".000000") << e.path;
    EXPECT_EQ(e.path.substr(0, 10), "class_00" + std::to_string(label) + "/");
    ++per_class[e.path.substr(0, 9)];

    const fs::path file = fs::path(s.dir) / e.path;
    const cv::Mat image = cv::imread(file.string(), cv::IMREAD_COLOR);
    ASSERT_FALSE(image.empty()) << file;
    const int short_side = std::min(image.cols, image.rows);
    const int long_side = std::max(image.cols, image.rows);
    EXPECT_GE(short_side, 333) << file;
    EXPECT_LE(short_side, 500) << file;
    EXPECT_LE(static_cast<double>(long_side) / short_side, 1.78) << file;

    const std::vector<unsigned char> bytes = read_file(file);
    total_bytes += static_cast<std::int64_t>(bytes.size());
    sizes.insert(bytes.size());
    const int quality = quality_from_table_sum(luminance_table_sum(bytes));
    EXPECT_GE(quality, 75) << file;
    EXPECT_LE(quality, 95) << file;
    qualities.insert(quality);

    const std::unique_ptr<void, int (*)(tjhandle)> tj(tjInitDecompress(), tjDestroy);
    int w = 0;
    int h = 0;
    int subsampling = -1;
    int colorspace = -1;
    ASSERT_EQ(tjDecompressHeader3(tj.get(), bytes.data(), bytes.size(), &w, &h, &subsampling,
                                  &colorspace),
              0);
    EXPECT_EQ(subsampling, TJSAMP_420) << file;
    EXPECT_EQ(colorspace, TJCS_YCbCr) << file;
  }
  EXPECT_EQ(per_class.size(), 4u);
  EXPECT_EQ(report.bytes, total_bytes);
  EXPECT_EQ(sizes.size(), 20u);
  EXPECT_GE(qualities.size(), 5u);  // 20 draws from 21 values
}

TEST_F(MakeDatasetTest, SameSpecGivesIdenticalBytesAndOtherSeedDoesNot) {
  DatasetSpec a = spec("a", 20);
  DatasetSpec b = spec("b", 20);
  DatasetSpec c = spec("c", 20);
  c.seed = 8;
  make_dataset(a, {});
  make_dataset(b, {});
  make_dataset(c, {});
  const std::vector<std::string> files = jpegs_under(a.dir);
  ASSERT_EQ(files.size(), 20u);
  ASSERT_EQ(jpegs_under(b.dir), files);
  EXPECT_EQ(read_file(fs::path(a.dir) / "labels.lst"), read_file(fs::path(b.dir) / "labels.lst"));
  int differing_seed = 0;
  for (const std::string& f : files) {
    const auto bytes = read_file(fs::path(a.dir) / f);
    EXPECT_EQ(bytes, read_file(fs::path(b.dir) / f)) << f;
    if (bytes != read_file(fs::path(c.dir) / f)) ++differing_seed;
  }
  EXPECT_EQ(differing_seed, 20);
}

TEST_F(MakeDatasetTest, FallsBackToProceduralImagesOfRealisticSize) {
  DatasetSpec s = spec("procedural", 20);
  s.photo_dirs = {"/nonexistent"};
  const DatasetReport report = make_dataset(s, {});
  EXPECT_EQ(report.procedural, 20);
  EXPECT_EQ(report.from_photos, 0);
  double bytes_per_pixel = 0;
  for (const std::string& f : jpegs_under(s.dir)) {
    const cv::Mat image = cv::imread((fs::path(s.dir) / f).string());
    ASSERT_FALSE(image.empty()) << f;
    EXPECT_GE(std::min(image.cols, image.rows), 333);
    EXPECT_LE(std::min(image.cols, image.rows), 500);
    bytes_per_pixel += static_cast<double>(fs::file_size(fs::path(s.dir) / f)) / image.total();
  }
  // Photographic ImageNet JPEGs average ~45 KB at 500x375; procedural ones must land near that.
  const double kb_at_500x375 = bytes_per_pixel / 20 * 500 * 375 / 1024;
  EXPECT_GT(kb_at_500x375, 25.0);
  EXPECT_LT(kb_at_500x375, 70.0);
}

TEST_F(MakeDatasetTest, IgnoresUnusableCandidatesAndCropsUsablePhotos) {
  DatasetSpec none = spec("none", 8);
  none.photo_dirs = {unusable_photos().string()};
  const DatasetReport none_report = make_dataset(none, {});
  EXPECT_EQ(none_report.procedural, 8);
  EXPECT_EQ(none_report.from_photos, 0);

  DatasetSpec red = spec("red", 8);
  red.photo_dirs = {unusable_photos().string(), red_photo().string()};
  const DatasetReport red_report = make_dataset(red, {});
  EXPECT_EQ(red_report.from_photos, 8);
  EXPECT_EQ(red_report.procedural, 0);
  std::set<std::string> means;
  for (const std::string& f : jpegs_under(red.dir)) {
    const cv::Mat image = cv::imread((fs::path(red.dir) / f).string());
    ASSERT_FALSE(image.empty()) << f;
    const cv::Scalar mean = cv::mean(image);  // B, G, R
    // The source has R - B ~ 165 on average; jitter moves each channel by well under 40.
    EXPECT_GT(mean[2] - mean[0], 100.0) << f;
    std::ostringstream key;
    key << mean[0] << ',' << mean[1] << ',' << mean[2];
    means.insert(key.str());
  }
  EXPECT_EQ(means.size(), 8u);  // crops, flips and jitter make every image differ
}

TEST_F(MakeDatasetTest, LargeImagesHaveLongSideInRange) {
  DatasetSpec s = spec("large", 4);
  s.classes = 2;
  s.size = DatasetSpec::Size::kLarge;
  make_dataset(s, {});
  const std::vector<std::string> files = jpegs_under(s.dir);
  ASSERT_EQ(files.size(), 4u);
  for (const std::string& f : files) {
    const cv::Mat image = cv::imread((fs::path(s.dir) / f).string());
    ASSERT_FALSE(image.empty()) << f;
    const int long_side = std::max(image.cols, image.rows);
    EXPECT_GE(long_side, 1200) << f;
    EXPECT_LE(long_side, 2800) << f;
    EXPECT_LE(static_cast<double>(long_side) / std::min(image.cols, image.rows), 1.78) << f;
  }
}

TEST_F(MakeDatasetTest, PadsClassFoldersSoThatSortedOrderIsLabelOrder) {
  DatasetSpec s = spec("classes", 12);
  s.classes = 12;
  s.photo_dirs = {"/nonexistent"};
  make_dataset(s, {});
  const std::vector<ListEntry> list = read_list(fs::path(s.dir) / "labels.lst");
  ASSERT_EQ(list.size(), 12u);
  EXPECT_EQ(list[11].path, "class_011/img_000011.jpg");
  EXPECT_EQ(list[11].label_text, "11.000000");
  EXPECT_EQ(jpegs_under(s.dir).back(), list[11].path);
}

TEST_F(MakeDatasetTest, RejectsImpossibleSpecs) {
  DatasetSpec s = spec("bad", 3);
  s.classes = 4;
  EXPECT_THROW(make_dataset(s, {}), std::invalid_argument);
  s.classes = 0;
  EXPECT_THROW(make_dataset(s, {}), std::invalid_argument);
  s = spec("bad", 0);
  EXPECT_THROW(make_dataset(s, {}), std::invalid_argument);
  s = spec("bad", 3);
  s.dir.clear();
  EXPECT_THROW(make_dataset(s, {}), std::invalid_argument);
}

TEST_F(MakeDatasetTest, NamesThePathWhenItCannotWrite) {
  const fs::path blocker = root_ / "plain_file";
  std::ofstream(blocker.string()) << "x";
  DatasetSpec s = spec("unused", 2);
  s.classes = 1;
  s.dir = (blocker / "set").string();
  try {
    make_dataset(s, {});
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(blocker.string()), std::string::npos) << e.what();
  }

  // A folder where the second image should go blocks that file's write.
  s.dir = (root_ / "half").string();
  const fs::path occupied = fs::path(s.dir) / "class_000" / "img_000001.jpg";
  fs::create_directories(occupied);
  try {
    make_dataset(s, {});
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(occupied.string()), std::string::npos) << e.what();
  }
}

TEST(DefaultPhotoDirs, ListsExistingFoldersOnce) {
  const std::vector<std::string> dirs = default_photo_dirs();
  std::set<fs::path> canonical;
  for (const std::string& d : dirs) {
    EXPECT_TRUE(fs::is_directory(d)) << d;
    EXPECT_TRUE(canonical.insert(fs::canonical(d)).second) << d;
  }
}

}  // namespace
}  // namespace millrace::datasets
