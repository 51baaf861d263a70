#include "datasets/make_dataset.hpp"

#include <turbojpeg.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace millrace::datasets {
namespace {

namespace fs = std::filesystem;

constexpr int kMinPhotoSide = 256;
// Decoded photos stay in memory for the whole run; a few dozen 512-pixel photos are ~25 MB.
constexpr int kMaxPhotos = 32;
// Mean of max(B,G,R) - min(B,G,R): grey scans and greyish drawings score near 0.
constexpr double kMinPhotoChroma = 5.0;
// Mean |Laplacian| of the luma: photos score 10-20 on the packaged samples, flat graphics
// (colour wheel 1.3, logos 4.9) and very smooth images (the retina fundus, 1.6) stay below.
constexpr double kMinPhotoDetail = 5.0;
constexpr double kMinCropArea = 0.4;
constexpr double kMaxAspect = 16.0 / 9.0;
constexpr double kFourThirds = 4.0 / 3.0;
constexpr double kPortraitProbability = 0.25;
constexpr int kMinQuality = 75;
constexpr int kMaxQuality = 95;

// TIFF is left out: in the packaged sample folders it holds multi-page scientific stacks only.
constexpr std::array<const char*, 6> kPhotoExtensions = {".jpg", ".jpeg", ".png",
                                                         ".bmp", ".webp", ".ppm"};
// Candidates above this many pixels are skipped rather than decoded.
constexpr std::int64_t kMaxPhotoPixels = std::int64_t{64} << 20;

// SplitMix64 finaliser: turns (seed, image number) into unrelated engine seeds.
std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Draws built on the raw engine output only: std::mt19937_64's sequence is fixed by the standard,
// the std::uniform_*_distribution algorithms are not, and the files must not change with them.
class Draws {
 public:
  Draws(std::uint64_t seed, std::uint64_t stream)
      : engine_(mix64(mix64(seed) ^ (stream + 0x9E3779B97F4A7C15ull))) {}

  std::uint64_t bits() { return engine_(); }
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  bool chance(double p) { return uniform() < p; }

  // Inclusive bounds, unbiased: the top partial block of the 64-bit range is rejected.
  int uniform_int(int lo, int hi) {
    const auto range = static_cast<std::uint64_t>(static_cast<std::int64_t>(hi) - lo) + 1;
    constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
    const std::uint64_t limit = kMax - kMax % range;
    std::uint64_t x = engine_();
    while (x >= limit) x = engine_();
    return static_cast<int>(lo + static_cast<std::int64_t>(x % range));
  }

 private:
  std::mt19937_64 engine_;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool has_photo_extension(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  return std::find(kPhotoExtensions.begin(), kPhotoExtensions.end(), ext) != kPhotoExtensions.end();
}

bool read_bytes(const fs::path& path, std::vector<unsigned char>& bytes) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return false;
  bytes.clear();
  std::array<unsigned char, 1 << 16> chunk{};
  std::size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), file)) > 0) {
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
  }
  const bool ok = std::ferror(file) == 0;
  std::fclose(file);
  return ok;
}

// JPEG candidates go through TurboJPEG rather than cv::imread: it reports a damaged file (the
// sample folder ships a deliberately truncated one) as an error instead of printing libjpeg
// warnings, and a photo that decodes only with warnings is no source for clean crops.
cv::Mat read_jpeg(const fs::path& path) {
  std::vector<unsigned char> bytes;
  if (!read_bytes(path, bytes) || bytes.empty()) return {};
  const std::unique_ptr<void, int (*)(tjhandle)> handle(tjInitDecompress(), tjDestroy);
  if (handle == nullptr) return {};
  int width = 0;
  int height = 0;
  int subsampling = 0;
  int colorspace = 0;
  if (tjDecompressHeader3(handle.get(), bytes.data(), bytes.size(), &width, &height, &subsampling,
                          &colorspace) != 0 ||
      static_cast<std::int64_t>(width) * height > kMaxPhotoPixels) {
    return {};
  }
  cv::Mat bgr(height, width, CV_8UC3);
  if (tjDecompress2(handle.get(), bytes.data(), bytes.size(), bgr.data, width,
                    static_cast<int>(bgr.step), height, TJPF_BGR, 0) != 0) {
    return {};
  }
  return bgr;
}

cv::Mat read_candidate(const fs::path& path) {
  const std::string ext = lower(path.extension().string());
  if (ext == ".jpg" || ext == ".jpeg") return read_jpeg(path);
  try {
    return cv::imread(path.string(), cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    return {};  // an unreadable candidate is simply not a photo source
  }
}

// Returns the photo as 8-bit BGR, or an empty Mat when the image is not a usable colour photo.
cv::Mat as_photo(const cv::Mat& image) {
  if (image.empty() || image.depth() != CV_8U) return {};
  if (std::min(image.cols, image.rows) < kMinPhotoSide) return {};
  cv::Mat bgr;
  if (image.channels() == 4) {
    double alpha_min = 0;
    cv::Mat alpha;
    cv::extractChannel(image, alpha, 3);
    cv::minMaxLoc(alpha, &alpha_min);
    if (alpha_min < 255) return {};
    cv::cvtColor(image, bgr, cv::COLOR_BGRA2BGR);
  } else if (image.channels() == 3) {
    bgr = image;
  } else {
    return {};
  }
  std::array<cv::Mat, 3> planes;
  cv::split(bgr, planes.data());
  cv::Mat hi = cv::max(cv::max(planes[0], planes[1]), planes[2]);
  cv::Mat lo = cv::min(cv::min(planes[0], planes[1]), planes[2]);
  if (cv::mean(hi - lo)[0] < kMinPhotoChroma) return {};
  cv::Mat gray;
  cv::Mat laplacian;
  cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
  cv::Laplacian(gray, laplacian, CV_16S);
  if (cv::mean(cv::abs(laplacian))[0] < kMinPhotoDetail) return {};
  return bgr;
}

std::vector<cv::Mat> load_photos(const std::vector<std::string>& dirs) {
  std::vector<cv::Mat> photos;
  for (const std::string& dir : dirs) {
    std::error_code ec;
    std::vector<fs::path> files;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->is_regular_file(ec) && has_photo_extension(it->path())) files.push_back(it->path());
    }
    // Directory order is the file system's; sorting makes the photo numbering reproducible.
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) {
      if (photos.size() >= static_cast<std::size_t>(kMaxPhotos)) return photos;
      cv::Mat photo = as_photo(read_candidate(file));
      if (!photo.empty()) photos.push_back(std::move(photo));
    }
  }
  return photos;
}

cv::Size target_size(DatasetSpec::Size size, Draws& draws) {
  // ImageNet is dominated by 4:3 frames; the rest spread up to 16:9.
  const double ratio = draws.chance(0.5) ? kFourThirds : draws.uniform(1.0, kMaxAspect);
  int short_side = 0;
  int long_side = 0;
  if (size == DatasetSpec::Size::kImageNet) {
    short_side = draws.uniform_int(333, 500);
    long_side = static_cast<int>(std::lround(short_side * ratio));
  } else {
    long_side = draws.uniform_int(1200, 2800);
    short_side = static_cast<int>(std::lround(long_side / ratio));
  }
  const bool portrait = draws.chance(kPortraitProbability);
  return portrait ? cv::Size(short_side, long_side) : cv::Size(long_side, short_side);
}

// Brightness, contrast and per-channel gain in one table per channel.
void jitter(cv::Mat& image, Draws& draws) {
  const double brightness = draws.uniform(-16.0, 16.0);
  const double contrast = draws.uniform(0.85, 1.15);
  std::array<double, 3> gain{};
  for (double& g : gain) g = draws.uniform(0.92, 1.08);
  cv::Mat table(1, 256, CV_8UC3);
  for (int v = 0; v < 256; ++v) {
    auto& entry = table.at<cv::Vec3b>(0, v);
    for (int c = 0; c < 3; ++c) {
      entry[c] =
          cv::saturate_cast<std::uint8_t>((v * gain[c] - 128.0) * contrast + 128.0 + brightness);
    }
  }
  cv::LUT(image, table, image);
}

// Photographs enlarged past their native resolution turn smooth and compress far better than real
// photos of that size; sensor-like grain, in proportion to the enlargement, restores the detail
// that a JPEG encoder has to spend bytes on.
void add_grain(cv::Mat& image, double upscale, Draws& draws) {
  const double sigma = std::min(6.0, 1.5 * (upscale - 1.0));
  if (sigma <= 0.25) return;
  cv::Mat noise(image.size(), CV_16SC3);
  cv::RNG rng(draws.bits());
  rng.fill(noise, cv::RNG::NORMAL, 0.0, sigma);
  cv::Mat widened;
  image.convertTo(widened, CV_16SC3);
  widened += noise;
  widened.convertTo(image, CV_8UC3);
}

cv::Mat from_photo(const cv::Mat& photo, cv::Size size, Draws& draws) {
  const double aspect = static_cast<double>(size.width) / size.height;
  const double area = draws.uniform(kMinCropArea, 1.0) * photo.cols * photo.rows;
  double w = std::sqrt(area * aspect);
  double h = std::sqrt(area / aspect);
  // An aspect far from the photo's may not fit at the drawn area: take the largest window that
  // does.
  const double fit = std::min({1.0, photo.cols / w, photo.rows / h});
  w *= fit;
  h *= fit;
  const int crop_w = std::clamp(static_cast<int>(std::lround(w)), 1, photo.cols);
  const int crop_h = std::clamp(static_cast<int>(std::lround(h)), 1, photo.rows);
  const int x = draws.uniform_int(0, photo.cols - crop_w);
  const int y = draws.uniform_int(0, photo.rows - crop_h);
  cv::Mat image;
  cv::resize(photo(cv::Rect(x, y, crop_w, crop_h)), image, size, 0, 0, cv::INTER_AREA);
  if (draws.chance(0.5)) cv::flip(image, image, 1);
  jitter(image, draws);
  add_grain(image, static_cast<double>(size.width) / crop_w, draws);
  return image;
}

// A random smooth field in [lo, hi], one channel or three, enlarged from a coarse grid.
cv::Mat smooth_field(cv::Size size, int channels, double lo, double hi, Draws& draws) {
  const int gx = draws.uniform_int(2, 5);
  const int gy = draws.uniform_int(2, 5);
  cv::Mat coarse(gy, gx, CV_32FC(channels));
  auto* values = coarse.ptr<float>();
  for (int i = 0; i < gx * gy * channels; ++i)
    values[i] = static_cast<float>(draws.uniform(lo, hi));
  cv::Mat field;
  cv::resize(coarse, field, size, 0, 0, cv::INTER_CUBIC);
  return field;
}

// A plane wave sin(fx*x + fy*y + phase), built from row and column tables by the angle-sum
// identity, so that no per-pixel sine is evaluated.
cv::Mat plane_wave(cv::Size size, Draws& draws) {
  const double period = draws.uniform(3.0, 40.0);
  const double angle = draws.uniform(0.0, CV_PI);
  const double fx = 2.0 * CV_PI * std::cos(angle) / period;
  const double fy = 2.0 * CV_PI * std::sin(angle) / period;
  const double phase = draws.uniform(0.0, 2.0 * CV_PI);
  std::vector<float> sin_x(size.width);
  std::vector<float> cos_x(size.width);
  for (int x = 0; x < size.width; ++x) {
    sin_x[x] = static_cast<float>(std::sin(fx * x + phase));
    cos_x[x] = static_cast<float>(std::cos(fx * x + phase));
  }
  cv::Mat wave(size, CV_32FC1);
  for (int y = 0; y < size.height; ++y) {
    const auto sin_y = static_cast<float>(std::sin(fy * y));
    const auto cos_y = static_cast<float>(std::cos(fy * y));
    auto* row = wave.ptr<float>(y);
    for (int x = 0; x < size.width; ++x) row[x] = sin_x[x] * cos_y + cos_x[x] * sin_y;
  }
  return wave;
}

cv::Scalar random_colour(Draws& draws) {
  return {draws.uniform(0.0, 255.0), draws.uniform(0.0, 255.0), draws.uniform(0.0, 255.0)};
}

cv::Mat procedural(cv::Size size, Draws& draws) {
  cv::Mat canvas;
  smooth_field(size, 3, 0.0, 255.0, draws).convertTo(canvas, CV_8UC3);
  const int min_side = std::min(size.width, size.height);
  const int shapes = draws.uniform_int(4, 12);
  for (int i = 0; i < shapes; ++i) {
    const cv::Point2f centre(static_cast<float>(draws.uniform(0.0, size.width)),
                             static_cast<float>(draws.uniform(0.0, size.height)));
    const cv::Size2f extent(static_cast<float>(draws.uniform(0.05, 0.5) * min_side),
                            static_cast<float>(draws.uniform(0.05, 0.5) * min_side));
    const auto angle = static_cast<float>(draws.uniform(0.0, 180.0));
    const cv::Scalar colour = random_colour(draws);
    const cv::RotatedRect box(centre, extent, angle);
    if (draws.chance(0.5)) {
      cv::ellipse(canvas, box, colour, cv::FILLED, cv::LINE_AA);
    } else {
      std::array<cv::Point2f, 4> corners;
      box.points(corners.data());
      std::array<cv::Point, 4> polygon;
      for (int k = 0; k < 4; ++k) polygon[k] = corners[k];
      cv::fillConvexPoly(canvas, polygon.data(), 4, colour, cv::LINE_AA);
    }
  }
  cv::Mat image;
  canvas.convertTo(image, CV_32FC3);
  // Two wave textures whose strength varies smoothly over the frame: some regions flat, some busy.
  for (int layer = 0; layer < 2; ++layer) {
    cv::Mat wave = plane_wave(size, draws).mul(smooth_field(size, 1, 0.0, 28.0, draws));
    cv::Mat tint;
    cv::merge(std::vector<cv::Mat>{wave * draws.uniform(0.6, 1.0), wave * draws.uniform(0.6, 1.0),
                                   wave * draws.uniform(0.6, 1.0)},
              tint);
    image += tint;
  }
  cv::Mat noise(size, CV_32FC3);
  cv::RNG rng(draws.bits());
  rng.fill(noise, cv::RNG::NORMAL, 0.0, draws.uniform(3.0, 7.0));
  image += noise;
  cv::Mat out;
  image.convertTo(out, CV_8UC3);
  return out;
}

class JpegEncoder {
 public:
  JpegEncoder() : handle_(tjInitCompress()) {
    if (handle_ == nullptr) {
      throw std::runtime_error(std::string("TurboJPEG: ") + tjGetErrorStr2(nullptr));
    }
  }
  JpegEncoder(const JpegEncoder&) = delete;
  JpegEncoder& operator=(const JpegEncoder&) = delete;
  ~JpegEncoder() { tjDestroy(handle_); }

  // The returned bytes live in this encoder until the next call.
  std::pair<const unsigned char*, std::size_t> encode(const cv::Mat& bgr, int quality) {
    buffer_.resize(tjBufSize(bgr.cols, bgr.rows, TJSAMP_420));
    unsigned char* out = buffer_.data();
    unsigned long size = buffer_.size();
    if (tjCompress2(handle_, bgr.data, bgr.cols, static_cast<int>(bgr.step), bgr.rows, TJPF_BGR,
                    &out, &size, TJSAMP_420, quality, TJFLAG_NOREALLOC) != 0) {
      throw std::runtime_error(std::string("TurboJPEG: ") + tjGetErrorStr2(handle_));
    }
    return {out, static_cast<std::size_t>(size)};
  }

 private:
  tjhandle handle_;
  std::vector<unsigned char> buffer_;
};

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

void write_file(const fs::path& path, const void* data, std::size_t size) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) {
    throw std::runtime_error("cannot open " + path.string() + ": " + errno_text(errno));
  }
  const bool written = std::fwrite(data, 1, size, file) == size;
  const int write_errno = errno;
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed) {
    throw std::runtime_error("cannot write " + path.string() + ": " +
                             errno_text(written ? errno : write_errno));
  }
}

void make_dirs(const fs::path& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec || !fs::is_directory(path, ec)) {
    throw std::runtime_error("cannot create folder " + path.string() + ": " +
                             (ec ? ec.message() : std::string("not a folder")));
  }
}

int digits(int n) {
  int d = 1;
  while (n >= 10) {
    n /= 10;
    ++d;
  }
  return d;
}

std::string padded(int value, int width) {
  std::string s = std::to_string(value);
  if (static_cast<int>(s.size()) < width) s.insert(0, width - s.size(), '0');
  return s;
}

}  // namespace

DatasetReport make_dataset(const DatasetSpec& spec, const std::function<void(int, int)>& progress) {
  if (spec.dir.empty()) throw std::invalid_argument("dataset: 'dir' is empty");
  if (spec.count < 1) throw std::invalid_argument("dataset: 'count' must be at least 1");
  // im2rec numbers only folders that hold images, so an empty class would shift the labels.
  if (spec.classes < 1 || spec.classes > spec.count) {
    throw std::invalid_argument("dataset: 'classes' must be between 1 and 'count' (" +
                                std::to_string(spec.count) + "), got " +
                                std::to_string(spec.classes));
  }

  const fs::path root(spec.dir);
  make_dirs(root);
  const int class_width = std::max(3, digits(spec.classes - 1));
  const int image_width = std::max(6, digits(spec.count - 1));
  std::vector<std::string> class_names(spec.classes);
  for (int c = 0; c < spec.classes; ++c) {
    class_names[c] = "class_" + padded(c, class_width);
    make_dirs(root / class_names[c]);
  }

  const std::vector<cv::Mat> photos =
      load_photos(spec.photo_dirs.empty() ? default_photo_dirs() : spec.photo_dirs);

  DatasetReport report;
  JpegEncoder encoder;
  std::string list;
  for (int i = 0; i < spec.count; ++i) {
    const int label = static_cast<int>(static_cast<std::int64_t>(i) * spec.classes / spec.count);
    const std::string relative = class_names[label] + "/img_" + padded(i, image_width) + ".jpg";

    Draws draws(spec.seed, static_cast<std::uint64_t>(i));
    const cv::Size size = target_size(spec.size, draws);
    const int quality = draws.uniform_int(kMinQuality, kMaxQuality);
    cv::Mat image;
    if (!photos.empty()) {
      const cv::Mat& photo = photos[draws.uniform_int(0, static_cast<int>(photos.size()) - 1)];
      image = from_photo(photo, size, draws);
      ++report.from_photos;
    } else {
      image = procedural(size, draws);
      ++report.procedural;
    }
    const auto [bytes, length] = encoder.encode(image, quality);
    write_file(root / relative, bytes, length);
    report.bytes += static_cast<std::int64_t>(length);
    ++report.images;

    std::array<char, 32> label_text{};
    std::snprintf(label_text.data(), label_text.size(), "%f", static_cast<double>(label));
    list += std::to_string(i) + '\t' + label_text.data() + '\t' + relative + '\n';
    if (progress) progress(i + 1, spec.count);
  }

  const fs::path list_path = root / "labels.lst";
  write_file(list_path, list.data(), list.size());
  report.list_path = list_path.string();
  return report;
}

std::vector<std::string> default_photo_dirs() {
  std::vector<fs::path> package_roots = {"/usr/lib/python3/dist-packages",
                                         "/usr/local/lib/python3/dist-packages"};
  for (const char* lib : {"/usr/lib", "/usr/local/lib"}) {
    std::error_code ec;
    std::vector<fs::path> versions;
    for (fs::directory_iterator it(lib, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind("python3.", 0) == 0) versions.push_back(it->path());
    }
    std::sort(versions.begin(), versions.end());
    for (const fs::path& version : versions) {
      package_roots.push_back(version / "dist-packages");
      package_roots.push_back(version / "site-packages");
    }
  }
  std::vector<fs::path> candidates;
  candidates.reserve(2 * package_roots.size() + 1);
  for (const fs::path& root : package_roots) candidates.push_back(root / "skimage" / "data");
  // Debian moves matplotlib's data out of the package folder into /usr/share.
  candidates.emplace_back("/usr/share/matplotlib/mpl-data/sample_data");
  for (const fs::path& root : package_roots) {
    candidates.push_back(root / "matplotlib" / "mpl-data" / "sample_data");
  }

  std::vector<std::string> dirs;
  std::vector<fs::path> seen;
  for (const fs::path& candidate : candidates) {
    std::error_code ec;
    if (!fs::is_directory(candidate, ec)) continue;
    const fs::path canonical = fs::canonical(candidate, ec);
    if (ec || std::find(seen.begin(), seen.end(), canonical) != seen.end()) continue;
    seen.push_back(canonical);
    dirs.push_back(candidate.string());
  }
  return dirs;
}

}  // namespace millrace::datasets
