#include "stages/decode/decode_kernel.hpp"

#include <gtest/gtest.h>
#include <png.h>
#include <sys/resource.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <string>
#include <thread>
#include <vector>

#include "stages/common/jpeg/jpeg_test_support.hpp"

#ifndef MILLRACE_TEST_DATA_DIR
#define MILLRACE_TEST_DATA_DIR "/work/main/tests/data"
#endif

namespace millrace::decode {
namespace {

using Bytes = std::vector<std::uint8_t>;

const std::string kNotAnImage = "not a JPEG/PNG/WebP/BMP/TIFF image";

Bytes read_corpus(const std::string& name) {
  const std::string path = std::string(MILLRACE_TEST_DATA_DIR) + "/bad/" + name;
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "cannot open " << path;
  return Bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

struct Decoded {
  Info info;
  Bytes pixels;
};

Decoded decode_bytes(const Bytes& data, const Options& options = {}) {
  Decoded result;
  result.info = decode(data.data(), data.size(), options, result.pixels);
  return result;
}

std::string error_of(const Bytes& data, const Options& options = {}) {
  Bytes out;
  try {
    decode(data.data(), data.size(), options, out);
  } catch (const DecodeError& e) {
    return e.what();
  }
  return "(no error)";
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// A deterministic photo-like RGB image: smooth gradients plus fine noise, so that JPEG has real
// work in every block.
cv::Mat textured_rgb(int width, int height, int seed) {
  cv::Mat rgb(height, width, CV_8UC3);
  cv::RNG rng(static_cast<std::uint64_t>(seed) * 7919u + 17u);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double r = 128 + 90 * std::sin(x / 13.0 + seed) * std::cos(y / 17.0);
      const double g = 255.0 * x / std::max(width - 1, 1) * 0.7 + 40 * std::sin((x + y) / 5.0);
      const double b = 60 + 120 * (((x / 8) + (y / 8)) % 2) + 20 * std::cos(y / 3.0 + seed);
      auto& px = rgb.at<cv::Vec3b>(y, x);
      px[0] = cv::saturate_cast<std::uint8_t>(r + rng.uniform(-12, 13));
      px[1] = cv::saturate_cast<std::uint8_t>(g + rng.uniform(-12, 13));
      px[2] = cv::saturate_cast<std::uint8_t>(b + rng.uniform(-12, 13));
    }
  }
  return rgb;
}

Bytes encode_cv(const cv::Mat& rgb, const std::string& ext, const std::vector<int>& params = {}) {
  cv::Mat stored;
  if (rgb.channels() == 3) {
    cv::cvtColor(rgb, stored, cv::COLOR_RGB2BGR);
  } else if (rgb.channels() == 4) {
    cv::cvtColor(rgb, stored, cv::COLOR_RGBA2BGRA);
  } else {
    stored = rgb;
  }
  std::vector<std::uint8_t> buf;
  EXPECT_TRUE(cv::imencode(ext, stored, buf, params));
  return buf;
}

Bytes encode_jpeg_cv(const cv::Mat& rgb, int quality, bool progressive = false) {
  return encode_cv(
      rgb, ".jpg",
      {cv::IMWRITE_JPEG_QUALITY, quality, cv::IMWRITE_JPEG_PROGRESSIVE, progressive ? 1 : 0});
}

// OpenCV 4.6's imencode always subsamples chroma 4:2:0, so other samplings (and CMYK) come
// from TurboJPEG's encoder.
Bytes encode_jpeg_tj(const cv::Mat& image, int quality, int subsampling, int pixel_format) {
  tjhandle tj = tjInitCompress();
  EXPECT_NE(tj, nullptr);
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(tj, image.data, image.cols, static_cast<int>(image.step), image.rows,
                             pixel_format, &jpeg, &size, subsampling, quality, TJFLAG_ACCURATEDCT);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(tj);
  Bytes out(jpeg, jpeg + size);
  tjFree(jpeg);
  tjDestroy(tj);
  return out;
}

// The reference: OpenCV's decoder (libjpeg through its own glue), converted to RGB.
Bytes reference_rgb(const Bytes& data, int* width = nullptr, int* height = nullptr,
                    int flags = cv::IMREAD_COLOR) {
  const cv::Mat bgr = cv::imdecode(data, flags);
  EXPECT_FALSE(bgr.empty());
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  if (width != nullptr) *width = rgb.cols;
  if (height != nullptr) *height = rgb.rows;
  return Bytes(rgb.data, rgb.data + rgb.total() * 3);
}

::testing::AssertionResult same_bytes(const Bytes& actual, const Bytes& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "sizes differ: " << actual.size() << " vs " << expected.size();
  }
  const auto mismatch = std::mismatch(actual.begin(), actual.end(), expected.begin());
  if (mismatch.first != actual.end()) {
    const auto at = mismatch.first - actual.begin();
    return ::testing::AssertionFailure() << "first difference at byte " << at << ": "
                                         << int{*mismatch.first} << " vs " << int{*mismatch.second};
  }
  return ::testing::AssertionSuccess();
}

Bytes mat_bytes(const cv::Mat& m) {
  const cv::Mat c = m.isContinuous() ? m : m.clone();
  return Bytes(c.data, c.data + c.total() * c.elemSize());
}

// ---------------------------------------------------------------------------------------------
// JPEG: bit-identity with OpenCV

struct JpegCase {
  const char* name;
  int width;
  int height;
  int quality;
  int subsampling;  // TJSAMP_*, or -1 for OpenCV's encoder (4:2:0)
  bool progressive;
};

class JpegMatchesOpenCv : public ::testing::TestWithParam<JpegCase> {};

TEST_P(JpegMatchesOpenCv, BitIdenticalRgb) {
  const JpegCase& c = GetParam();
  const cv::Mat rgb = textured_rgb(c.width, c.height, c.width + c.quality);
  const Bytes jpeg = c.subsampling < 0 ? encode_jpeg_cv(rgb, c.quality, c.progressive)
                                       : encode_jpeg_tj(rgb, c.quality, c.subsampling, TJPF_RGB);
  int w = 0;
  int h = 0;
  const Bytes expected = reference_rgb(jpeg, &w, &h);
  ASSERT_EQ(w, c.width);
  ASSERT_EQ(h, c.height);

  const Decoded got = decode_bytes(jpeg);
  EXPECT_EQ(got.info.format, "jpeg");
  EXPECT_EQ(got.info.width, c.width);
  EXPECT_EQ(got.info.height, c.height);
  EXPECT_TRUE(got.info.warnings.empty());
  EXPECT_TRUE(same_bytes(got.pixels, expected));
}

INSTANTIATE_TEST_SUITE_P(
    Samplings, JpegMatchesOpenCv,
    ::testing::Values(JpegCase{"cv_q75_420_333x500", 333, 500, 75, -1, false},
                      JpegCase{"cv_q95_420_333x500", 333, 500, 95, -1, false},
                      JpegCase{"cv_q95_420_500x333", 500, 333, 95, -1, false},
                      JpegCase{"cv_q90_420_progressive", 257, 129, 90, -1, true},
                      JpegCase{"tj_q75_444_333x500", 333, 500, 75, TJSAMP_444, false},
                      JpegCase{"tj_q95_444_333x500", 333, 500, 95, TJSAMP_444, false},
                      JpegCase{"tj_q90_422_odd", 101, 77, 90, TJSAMP_422, false},
                      JpegCase{"tj_q90_420_1x1", 1, 1, 90, TJSAMP_420, false}),
    [](const ::testing::TestParamInfo<JpegCase>& info) { return std::string(info.param.name); });

TEST(DecodeJpeg, CorpusGoodFilesMatchOpenCv) {
  for (const char* name : {"good_1.jpg", "good_2.jpg"}) {
    SCOPED_TRACE(name);
    const Bytes jpeg = read_corpus(name);
    const Decoded got = decode_bytes(jpeg);
    EXPECT_EQ(got.info.width, 320);
    EXPECT_EQ(got.info.height, 240);
    EXPECT_EQ(got.info.format, "jpeg");
    EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(jpeg)));
  }
}

TEST(DecodeJpeg, GrayscaleIsReplicatedToRgb) {
  cv::Mat gray;
  cv::cvtColor(textured_rgb(123, 45, 3), gray, cv::COLOR_RGB2GRAY);
  for (const Bytes& jpeg : {encode_cv(gray, ".jpg", {cv::IMWRITE_JPEG_QUALITY, 90}),
                            encode_jpeg_tj(gray, 80, TJSAMP_GRAY, TJPF_GRAY)}) {
    // OpenCV's grayscale read outputs libjpeg's luminance plane untouched.
    const cv::Mat luma = cv::imdecode(jpeg, cv::IMREAD_GRAYSCALE);
    ASSERT_EQ(luma.cols, 123);
    const Decoded got = decode_bytes(jpeg);
    ASSERT_EQ(got.info.width, 123);
    ASSERT_EQ(got.info.height, 45);
    ASSERT_EQ(got.pixels.size(), std::size_t{123} * 45 * 3);
    for (int y = 0; y < 45; ++y) {
      for (int x = 0; x < 123; ++x) {
        const std::uint8_t* px = &got.pixels[(static_cast<std::size_t>(y) * 123 + x) * 3];
        const std::uint8_t v = luma.at<std::uint8_t>(y, x);
        ASSERT_EQ(px[0], v) << x << "," << y;
        ASSERT_EQ(px[1], v) << x << "," << y;
        ASSERT_EQ(px[2], v) << x << "," << y;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// CMYK

struct CmykPatch {
  std::array<int, 4> ink;  // C, M, Y, K amounts: 0 = none, 255 = full
  std::array<int, 3> rgb;  // (255-C)(255-K)/255 etc., worked out by hand
};

const std::array<CmykPatch, 8> kCmykPatches = {{
    {{0, 0, 0, 0}, {255, 255, 255}},
    {{255, 0, 0, 0}, {0, 255, 255}},
    {{0, 255, 0, 0}, {255, 0, 255}},
    {{0, 0, 255, 0}, {255, 255, 0}},
    {{0, 255, 255, 0}, {255, 0, 0}},
    {{0, 0, 0, 255}, {0, 0, 0}},
    {{0, 0, 0, 128}, {127, 127, 127}},
    {{128, 64, 0, 64}, {95, 143, 191}},
}};

void expect_cmyk_patches(const Decoded& got, int tolerance) {
  ASSERT_EQ(got.info.width, 16 * static_cast<int>(kCmykPatches.size()));
  ASSERT_EQ(got.info.height, 16);
  for (std::size_t i = 0; i < kCmykPatches.size(); ++i) {
    // The centre of each patch, away from the block edges that carry ringing.
    const std::size_t x = i * 16 + 8;
    const std::uint8_t* px = &got.pixels[(8 * static_cast<std::size_t>(got.info.width) + x) * 3];
    for (int c = 0; c < 3; ++c) {
      EXPECT_NEAR(px[c], kCmykPatches[i].rgb[c], tolerance) << "patch " << i << " channel " << c;
    }
  }
}

TEST(DecodeCmyk, AdobeCmykFromPillowGivesInkColours) {
  const Bytes jpeg = read_corpus("cmyk_adobe.jpg");
  const Decoded got = decode_bytes(jpeg);
  EXPECT_EQ(got.info.format, "jpeg");
  expect_cmyk_patches(got, 2);
  // OpenCV converts with its own approximation, k - ((255 - c) * k >> 8): within one level.
  const Bytes theirs = reference_rgb(jpeg);
  ASSERT_EQ(theirs.size(), got.pixels.size());
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    ASSERT_NEAR(got.pixels[i], theirs[i], 1) << "byte " << i;
  }
}

TEST(DecodeCmyk, YcckFromTurboJpegGivesInkColours) {
  // TurboJPEG writes CMYK as YCCK with an Adobe marker and stores the values it is given; Adobe
  // files hold inverted ink, so feed 255 - ink.
  cv::Mat cmyk(16, 16 * static_cast<int>(kCmykPatches.size()), CV_8UC4);
  for (int y = 0; y < cmyk.rows; ++y) {
    for (int x = 0; x < cmyk.cols; ++x) {
      const auto& ink = kCmykPatches[static_cast<std::size_t>(x / 16)].ink;
      for (int c = 0; c < 4; ++c) {
        cmyk.at<cv::Vec4b>(y, x)[c] = static_cast<std::uint8_t>(255 - ink[c]);
      }
    }
  }
  const Bytes jpeg = encode_jpeg_tj(cmyk, 100, TJSAMP_444, TJPF_CMYK);
  const Decoded got = decode_bytes(jpeg);
  expect_cmyk_patches(got, 3);
  const Bytes theirs = reference_rgb(jpeg);
  ASSERT_EQ(theirs.size(), got.pixels.size());
  for (std::size_t i = 0; i < theirs.size(); ++i) {
    ASSERT_NEAR(got.pixels[i], theirs[i], 1) << "byte " << i;
  }
}

TEST(DecodeCmyk, OpenCvFormulaIsCvImdecodeBitForBit) {
  // Options::Cmyk::kOpenCv (decode `compat: mxnet`) is OpenCV's own conversion, so MXNet's; the
  // default rounded one is not.
  const Bytes jpeg = read_corpus("cmyk_adobe.jpg");
  Options options;
  options.cmyk = Options::Cmyk::kOpenCv;
  const Decoded got = decode_bytes(jpeg, options);
  const Bytes theirs = reference_rgb(jpeg);
  ASSERT_EQ(got.pixels.size(), theirs.size());
  EXPECT_TRUE(got.pixels == theirs);
  EXPECT_FALSE(decode_bytes(jpeg).pixels == theirs);
  expect_cmyk_patches(got, 3);
}

// ---------------------------------------------------------------------------------------------
// EXIF orientation

// An APP1 "Exif" segment whose IFD0 holds a Make tag and then the orientation.
Bytes exif_segment(std::uint32_t orientation, bool little_endian, std::uint16_t type = 3) {
  Bytes tiff;
  auto put16 = [&](std::uint16_t v) {
    if (little_endian) {
      tiff.push_back(static_cast<std::uint8_t>(v & 0xFF));
      tiff.push_back(static_cast<std::uint8_t>(v >> 8));
    } else {
      tiff.push_back(static_cast<std::uint8_t>(v >> 8));
      tiff.push_back(static_cast<std::uint8_t>(v & 0xFF));
    }
  };
  auto put32 = [&](std::uint32_t v) {
    if (little_endian) {
      put16(static_cast<std::uint16_t>(v & 0xFFFF));
      put16(static_cast<std::uint16_t>(v >> 16));
    } else {
      put16(static_cast<std::uint16_t>(v >> 16));
      put16(static_cast<std::uint16_t>(v & 0xFFFF));
    }
  };
  tiff.push_back(little_endian ? 'I' : 'M');
  tiff.push_back(little_endian ? 'I' : 'M');
  put16(42);
  put32(8);       // IFD0 right after the header
  put16(2);       // two entries
  put16(0x010F);  // Make, ASCII, 4 bytes inline
  put16(2);
  put32(4);
  for (char ch : {'C', 'a', 'm', '\0'}) tiff.push_back(static_cast<std::uint8_t>(ch));
  put16(0x0112);  // Orientation
  put16(type);
  put32(1);
  if (type == 3) {
    put16(static_cast<std::uint16_t>(orientation));  // SHORT, left-justified in the value field
    put16(0);
  } else {
    put32(orientation);
  }
  put32(0);  // no next IFD

  Bytes segment = {0xFF, 0xE1};
  const std::size_t length = 2 + 6 + tiff.size();
  segment.push_back(static_cast<std::uint8_t>(length >> 8));
  segment.push_back(static_cast<std::uint8_t>(length & 0xFF));
  for (char ch : {'E', 'x', 'i', 'f', '\0', '\0'}) segment.push_back(static_cast<std::uint8_t>(ch));
  segment.insert(segment.end(), tiff.begin(), tiff.end());
  return segment;
}

Bytes insert_after_soi(const Bytes& jpeg, const Bytes& segment) {
  Bytes out(jpeg.size() + segment.size());
  const auto after_soi = std::copy_n(jpeg.begin(), 2, out.begin());
  const auto after_segment = std::copy(segment.begin(), segment.end(), after_soi);
  std::copy(jpeg.begin() + 2, jpeg.end(), after_segment);
  return out;
}

// Where displayed pixel (x, y) comes from in the stored W x H image, straight from the EXIF
// specification's description of each orientation value.
std::pair<int, int> stored_position(int orientation, int x, int y, int w, int h) {
  switch (orientation) {
    case 1:
      return {x, y};
    case 2:
      return {w - 1 - x, y};
    case 3:
      return {w - 1 - x, h - 1 - y};
    case 4:
      return {x, h - 1 - y};
    case 5:
      return {y, x};
    case 6:
      return {y, h - 1 - x};
    case 7:
      return {w - 1 - y, h - 1 - x};
    case 8:
      return {w - 1 - y, x};
    default:
      return {-1, -1};
  }
}

// 37x22 (odd, not a multiple of the MCU), with a red block in the stored top-left corner and a
// green one in the stored top-right, on a textured background.
cv::Mat orientation_source() {
  cv::Mat rgb = textured_rgb(37, 22, 5);
  rgb(cv::Rect(0, 0, 8, 8)).setTo(cv::Scalar(255, 0, 0));
  rgb(cv::Rect(29, 0, 8, 8)).setTo(cv::Scalar(0, 255, 0));
  return rgb;
}

enum class Corner { kTopLeft, kTopRight, kBottomRight, kBottomLeft };

const std::uint8_t* corner_pixel(const Decoded& d, Corner corner) {
  const int w = d.info.width;
  const int h = d.info.height;
  // Two pixels in from the corner, inside the 8x8 block wherever it landed.
  const int x = (corner == Corner::kTopLeft || corner == Corner::kBottomLeft) ? 2 : w - 3;
  const int y = (corner == Corner::kTopLeft || corner == Corner::kTopRight) ? 2 : h - 3;
  return &d.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
}

class ExifOrientation : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(ExifOrientation, PixelsFollowTheSpecification) {
  const auto [orientation, little_endian] = GetParam();
  const Bytes plain = encode_jpeg_tj(orientation_source(), 100, TJSAMP_444, TJPF_RGB);
  const Bytes jpeg = insert_after_soi(plain, exif_segment(orientation, little_endian));

  Options as_stored;
  as_stored.exif = false;
  const Decoded stored = decode_bytes(jpeg, as_stored);
  ASSERT_EQ(stored.info.width, 37);
  ASSERT_EQ(stored.info.height, 22);
  EXPECT_TRUE(same_bytes(stored.pixels, decode_bytes(plain).pixels));

  const Decoded shown = decode_bytes(jpeg);
  const bool swapped = orientation >= 5;
  ASSERT_EQ(shown.info.width, swapped ? 22 : 37);
  ASSERT_EQ(shown.info.height, swapped ? 37 : 22);
  ASSERT_EQ(shown.pixels.size(), stored.pixels.size());
  for (int y = 0; y < shown.info.height; ++y) {
    for (int x = 0; x < shown.info.width; ++x) {
      const auto [sx, sy] = stored_position(orientation, x, y, 37, 22);
      const std::size_t d = (static_cast<std::size_t>(y) * shown.info.width + x) * 3;
      const std::size_t s = (static_cast<std::size_t>(sy) * 37 + sx) * 3;
      ASSERT_TRUE(std::equal(&shown.pixels[d], &shown.pixels[d] + 3, &stored.pixels[s]))
          << "orientation " << orientation << " at " << x << "," << y;
    }
  }

  // Where the stored top-left (red) and top-right (green) corners are shown, per orientation.
  constexpr std::array<Corner, 9> kRedAt = {
      Corner::kTopLeft,     Corner::kTopLeft,     Corner::kTopRight,
      Corner::kBottomRight, Corner::kBottomLeft,  Corner::kTopLeft,
      Corner::kTopRight,    Corner::kBottomRight, Corner::kBottomLeft};
  constexpr std::array<Corner, 9> kGreenAt = {
      Corner::kTopRight,    Corner::kTopRight,    Corner::kTopLeft,
      Corner::kBottomLeft,  Corner::kBottomRight, Corner::kBottomLeft,
      Corner::kBottomRight, Corner::kTopRight,    Corner::kTopLeft};
  const std::uint8_t* red = corner_pixel(shown, kRedAt[static_cast<std::size_t>(orientation)]);
  EXPECT_GT(red[0], 230);
  EXPECT_LT(red[1], 25);
  EXPECT_LT(red[2], 25);
  const std::uint8_t* green = corner_pixel(shown, kGreenAt[static_cast<std::size_t>(orientation)]);
  EXPECT_LT(green[0], 25);
  EXPECT_GT(green[1], 230);
  EXPECT_LT(green[2], 25);

  // OpenCV applies EXIF orientation in imdecode too: an independent implementation to agree with.
  EXPECT_TRUE(same_bytes(shown.pixels, reference_rgb(jpeg)));
}

INSTANTIATE_TEST_SUITE_P(AllEight, ExifOrientation,
                         ::testing::Combine(::testing::Range(1, 9), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& info) {
                           return "orientation" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_II" : "_MM");
                         });

TEST(DecodeExif, PeekReportsStoredSize) {
  const Bytes jpeg = insert_after_soi(
      encode_jpeg_tj(orientation_source(), 90, TJSAMP_420, TJPF_RGB), exif_segment(6, true));
  const Info info = peek(jpeg.data(), jpeg.size());
  EXPECT_EQ(info.width, 37);
  EXPECT_EQ(info.height, 22);
  EXPECT_EQ(decode_bytes(jpeg).info.width, 22);
}

TEST(DecodeExif, LongTypedOrientationIsHonoured) {
  const Bytes plain = encode_jpeg_tj(orientation_source(), 95, TJSAMP_444, TJPF_RGB);
  const Decoded a = decode_bytes(insert_after_soi(plain, exif_segment(8, false, 4)));
  const Decoded b = decode_bytes(insert_after_soi(plain, exif_segment(8, false, 3)));
  EXPECT_EQ(a.info.width, 22);
  EXPECT_TRUE(same_bytes(a.pixels, b.pixels));
}

TEST(DecodeExif, InvalidOrMalformedExifLeavesPixelsAsStored) {
  const Bytes plain = encode_jpeg_tj(orientation_source(), 95, TJSAMP_444, TJPF_RGB);
  const Decoded reference = decode_bytes(plain);

  Bytes out_of_range = exif_segment(9, true);
  Bytes zero = exif_segment(0, false);
  Bytes bad_offset = exif_segment(6, true);
  bad_offset[2 + 2 + 6 + 4] = 0xF0;  // IFD0 offset far past the segment
  Bytes bad_order = exif_segment(6, true);
  bad_order[2 + 2 + 6] = 'X';
  Bytes cut = exif_segment(6, true);
  cut.erase(cut.end() - 16, cut.end());  // the orientation entry runs past the segment end
  cut[2] = static_cast<std::uint8_t>((cut.size() - 2) >> 8);
  cut[3] = static_cast<std::uint8_t>((cut.size() - 2) & 0xFF);

  for (const Bytes& segment : {out_of_range, zero, bad_offset, bad_order, cut}) {
    const Decoded got = decode_bytes(insert_after_soi(plain, segment));
    EXPECT_EQ(got.info.width, 37);
    EXPECT_EQ(got.info.height, 22);
    EXPECT_TRUE(same_bytes(got.pixels, reference.pixels));
  }
}

TEST(DecodeExif, FindsExifAfterAnotherApp1Segment) {
  // XMP also lives in APP1; the orientation must still be found in the EXIF one behind it.
  const std::string xmp = "http://ns.adobe.com/xap/1.0/";
  Bytes xmp_segment = {0xFF, 0xE1, 0, static_cast<std::uint8_t>(2 + xmp.size() + 1)};
  xmp_segment.insert(xmp_segment.end(), xmp.begin(), xmp.end());
  xmp_segment.push_back(0);
  Bytes both = xmp_segment;
  const Bytes exif = exif_segment(3, true);
  both.insert(both.end(), exif.begin(), exif.end());

  const Bytes plain = encode_jpeg_tj(orientation_source(), 95, TJSAMP_444, TJPF_RGB);
  const Decoded got = decode_bytes(insert_after_soi(plain, both));
  const Decoded expected = decode_bytes(insert_after_soi(plain, exif));
  EXPECT_TRUE(same_bytes(got.pixels, expected.pixels));
  const Decoded stored = decode_bytes(plain);
  EXPECT_FALSE(same_bytes(got.pixels, stored.pixels));
}

TEST(DecodeExif, RotatedCmykCombinesBothConversions) {
  cv::Mat cmyk(22, 37, CV_8UC4);
  cv::randu(cmyk, 0, 256);
  const Bytes plain = encode_jpeg_tj(cmyk, 95, TJSAMP_444, TJPF_CMYK);
  const Decoded stored = decode_bytes(plain);
  const Decoded shown = decode_bytes(insert_after_soi(plain, exif_segment(6, true)));
  ASSERT_EQ(shown.info.width, 22);
  ASSERT_EQ(shown.info.height, 37);
  for (int y = 0; y < 37; ++y) {
    for (int x = 0; x < 22; ++x) {
      const auto [sx, sy] = stored_position(6, x, y, 37, 22);
      const std::size_t d = (static_cast<std::size_t>(y) * 22 + x) * 3;
      const std::size_t s = (static_cast<std::size_t>(sy) * 37 + sx) * 3;
      ASSERT_TRUE(std::equal(&shown.pixels[d], &shown.pixels[d] + 3, &stored.pixels[s]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Truncated and corrupt JPEGs

TEST(DecodeTruncated, CorpusFileStrictThrowsLenientReturnsImage) {
  const Bytes jpeg = read_corpus("truncated.jpg");
  EXPECT_EQ(error_of(jpeg),
            "truncated or corrupt JPEG (decoder warning: Premature end of JPEG file)");

  Options lenient;
  lenient.strict = false;
  const Decoded got = decode_bytes(jpeg, lenient);
  ASSERT_EQ(got.info.width, 300);
  ASSERT_EQ(got.info.height, 200);
  ASSERT_EQ(got.info.warnings.size(), 1u);
  EXPECT_EQ(got.info.warnings[0], "Premature end of JPEG file");

  // Row error against the generating formula (R = x*255/299, G = y*255/199, B = 64): the rows
  // the data still covers are close to it, the last rows were never in the file.
  auto row_error = [&](int y) {
    double sum = 0;
    for (int x = 0; x < 300; ++x) {
      const std::uint8_t* px = &got.pixels[(static_cast<std::size_t>(y) * 300 + x) * 3];
      sum +=
          std::abs(px[0] - x * 255 / 299) + std::abs(px[1] - y * 255 / 199) + std::abs(px[2] - 64);
    }
    return sum / (300 * 3);
  };
  for (int y = 0; y < 80; ++y) EXPECT_LT(row_error(y), 3.0) << "row " << y;
  EXPECT_GT(row_error(199), 20.0);
}

TEST(DecodeTruncated, PresentRowsMatchTheCompleteImage) {
  const Bytes whole = read_corpus("good_1.jpg");
  const Bytes cut(whole.begin(),
                  whole.begin() + static_cast<std::ptrdiff_t>(whole.size() * 6 / 10));
  Options lenient;
  lenient.strict = false;
  const Decoded full = decode_bytes(whole);
  const Decoded part = decode_bytes(cut, lenient);
  ASSERT_EQ(part.pixels.size(), full.pixels.size());
  ASSERT_EQ(part.info.warnings.size(), 1u);
  // A quarter of the rows lies well inside the first 60 % of a uniformly textured image.
  const std::size_t quarter = std::size_t{320} * 60 * 3;
  EXPECT_TRUE(std::equal(part.pixels.begin(), part.pixels.begin() + quarter, full.pixels.begin()));
  EXPECT_FALSE(same_bytes(part.pixels, full.pixels));
}

TEST(DecodeTruncated, CutInsideTheHeadersIsATruncatedJpeg) {
  const Bytes whole = read_corpus("good_1.jpg");
  for (std::size_t size : {std::size_t{4}, std::size_t{100}, std::size_t{300}}) {
    const Bytes cut(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(size));
    Options lenient;
    lenient.strict = false;
    const std::string message = error_of(cut, lenient);
    EXPECT_TRUE(starts_with(message, "truncated JPEG: ")) << message;
    EXPECT_NE(message.find(std::to_string(size) + " bytes"), std::string::npos) << message;
    EXPECT_THROW(peek(cut.data(), cut.size()), DecodeError);
  }
}

// A progressive JPEG damaged twice: stray bytes before its second scan (a libjpeg warning) and,
// optionally, impossible spectral parameters in its third scan header (a fatal error).
Bytes damaged_progressive(bool stray_bytes, bool bad_scan) {
  cv::Mat rgb = textured_rgb(128, 96, 9);
  Bytes jpeg = encode_jpeg_cv(rgb, 90, true);
  std::vector<std::size_t> scans;
  for (std::size_t i = 0; i + 1 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA) scans.push_back(i);
  }
  EXPECT_GE(scans.size(), 3u);
  if (bad_scan) {
    const std::size_t s = scans[2];
    const std::size_t components = jpeg[s + 4];
    jpeg[s + 5 + 2 * components + 1] = 70;  // Se beyond the 64 coefficients of a block
  }
  if (stray_bytes) {
    const std::array<std::uint8_t, 2> stray = {0x12, 0x34};
    jpeg.insert(jpeg.begin() + static_cast<std::ptrdiff_t>(scans[1]), stray.begin(), stray.end());
  }
  return jpeg;
}

TEST(DecodeCorrupt, WarningOnlyIsLenientlyAccepted) {
  const Bytes jpeg = damaged_progressive(true, false);
  EXPECT_TRUE(starts_with(error_of(jpeg),
                          "truncated or corrupt JPEG (decoder warning: Corrupt JPEG data: 2 "
                          "extraneous bytes before marker 0xda)"));
  Options lenient;
  lenient.strict = false;
  const Decoded got = decode_bytes(jpeg, lenient);
  EXPECT_EQ(got.info.width, 128);
  ASSERT_EQ(got.info.warnings.size(), 1u);
  EXPECT_NE(got.info.warnings[0].find("extraneous bytes"), std::string::npos);
}

TEST(DecodeCorrupt, FatalErrorIsCorruptJpeg) {
  const Bytes jpeg = damaged_progressive(false, true);
  Options lenient;
  lenient.strict = false;
  for (const Options& options : {Options{}, lenient}) {
    const std::string message = error_of(jpeg, options);
    EXPECT_TRUE(starts_with(message, "corrupt JPEG: Invalid progressive parameters")) << message;
  }
}

TEST(DecodeCorrupt, FatalErrorAfterAWarningIsNotPassedOffAsAWarning) {
  // TurboJPEG reports this one as TJERR_WARNING although decoding stopped at the fatal error.
  const Bytes jpeg = damaged_progressive(true, true);
  Options lenient;
  lenient.strict = false;
  const std::string message = error_of(jpeg, lenient);
  EXPECT_TRUE(starts_with(message, "corrupt JPEG: Invalid progressive parameters")) << message;
  EXPECT_NE(message.find("after decoder warning: Corrupt JPEG data"), std::string::npos);
  EXPECT_TRUE(starts_with(error_of(jpeg), "truncated or corrupt JPEG (decoder warning: "));
}

TEST(DecodeCorrupt, GarbageAfterTheSignatureIsCorrupt) {
  Bytes jpeg = {0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x03, 0x01};
  const std::string message = error_of(jpeg);
  EXPECT_TRUE(starts_with(message, "corrupt JPEG: ") || starts_with(message, "truncated JPEG: "))
      << message;
  // A complete APP0 segment, then bytes that are no marker at all.
  Bytes garbage(500, 0x5A);
  const std::array<std::uint8_t, 6> start = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10};
  std::copy(start.begin(), start.end(), garbage.begin());
  EXPECT_TRUE(starts_with(error_of(garbage), "corrupt JPEG: ")) << error_of(garbage);
}

TEST(DecodeCorrupt, AFailedHeaderDoesNotAffectTheNextImage) {
  // libjpeg stops inside this frame header ("Bogus marker length"); the thread's decompressor
  // must not carry the half-read stream into the next call.
  const Bytes broken = {0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x03, 0x01, 0x00};
  const Bytes good = read_corpus("good_1.jpg");
  for (int i = 0; i < 3; ++i) {
    EXPECT_THROW(decode_bytes(broken), DecodeError);
    const Decoded got = decode_bytes(good);
    EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(good)));
  }
}

// Drops every segment with the given marker that precedes the first scan.
Bytes without_segments(const Bytes& jpeg, std::uint8_t marker) {
  Bytes out(jpeg.begin(), jpeg.begin() + 2);
  std::size_t pos = 2;
  while (pos + 4 <= jpeg.size() && jpeg[pos + 1] != 0xDA) {
    const std::size_t length = static_cast<std::size_t>(jpeg[pos + 2] << 8 | jpeg[pos + 3]);
    if (jpeg[pos + 1] != marker) {
      out.insert(out.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(pos),
                 jpeg.begin() + static_cast<std::ptrdiff_t>(pos + 2 + length));
    }
    pos += 2 + length;
  }
  out.insert(out.end(), jpeg.begin() + static_cast<std::ptrdiff_t>(pos), jpeg.end());
  return out;
}

TEST(DecodeCorrupt, TablesOfEarlierImagesAreNeverReused) {
  // A handle remembers the tables of the images it decoded. An image that lacks its own must get
  // the same result as on a fresh decompressor, whatever the thread decoded before.
  const cv::Mat rgb = textured_rgb(64, 48, 8);
  const Bytes plain = encode_jpeg_cv(rgb, 90);
  const Bytes other = encode_cv(textured_rgb(64, 48, 9), ".jpg",
                                {cv::IMWRITE_JPEG_QUALITY, 20, cv::IMWRITE_JPEG_OPTIMIZE, 1});
  const Bytes no_dqt = without_segments(plain, 0xDB);
  const Bytes no_dht = without_segments(plain, 0xC4);
  ASSERT_LT(no_dqt.size(), plain.size());
  ASSERT_LT(no_dht.size(), plain.size());

  // Without Huffman tables libjpeg falls back to the standard ones, which OpenCV's encoder used.
  const Decoded expected = decode_bytes(plain);
  decode_bytes(other);
  EXPECT_TRUE(same_bytes(decode_bytes(no_dht).pixels, expected.pixels));
  // Without quantization tables there is nothing to fall back to.
  decode_bytes(other);
  const std::string message = error_of(no_dqt);
  EXPECT_TRUE(starts_with(message, "corrupt JPEG: Quantization table")) << message;
}

// ---------------------------------------------------------------------------------------------
// Formats other than JPEG

TEST(DecodeFormats, PngNamedJpgDecodesAsPng) {
  const Bytes png = read_corpus("png_named.jpg");
  const Decoded got = decode_bytes(png);
  EXPECT_EQ(got.info.format, "png");
  ASSERT_EQ(got.info.width, 64);
  ASSERT_EQ(got.info.height, 48);
  for (int y = 0; y < 48; ++y) {
    for (int x = 0; x < 64; ++x) {
      const std::uint8_t* px = &got.pixels[(static_cast<std::size_t>(y) * 64 + x) * 3];
      ASSERT_EQ(px[0], 4 * x);
      ASSERT_EQ(px[1], 5 * y);
      ASSERT_EQ(px[2], (x * y) % 256);
    }
  }
  const Info info = peek(png.data(), png.size());
  EXPECT_EQ(info.format, "png");
  EXPECT_EQ(info.width, 64);
  EXPECT_EQ(info.height, 48);
}

struct LosslessCase {
  const char* name;
  const char* ext;
  std::vector<int> params;
  const char* format;
};

class LosslessFormats : public ::testing::TestWithParam<LosslessCase> {};

TEST_P(LosslessFormats, ExactRgbAndHeaderSize) {
  const LosslessCase& c = GetParam();
  const cv::Mat rgb = textured_rgb(61, 43, 2);
  const Bytes encoded = encode_cv(rgb, c.ext, c.params);
  const Decoded got = decode_bytes(encoded);
  EXPECT_EQ(got.info.format, c.format);
  EXPECT_EQ(got.info.width, 61);
  EXPECT_EQ(got.info.height, 43);
  EXPECT_TRUE(same_bytes(got.pixels, mat_bytes(rgb)));
  const Info info = peek(encoded.data(), encoded.size());
  EXPECT_EQ(info.format, c.format);
  EXPECT_EQ(info.width, 61);
  EXPECT_EQ(info.height, 43);
}

INSTANTIATE_TEST_SUITE_P(
    OpenCvFormats, LosslessFormats,
    ::testing::Values(LosslessCase{"png", ".png", {}, "png"},
                      LosslessCase{"bmp", ".bmp", {}, "bmp"},
                      LosslessCase{"tiff", ".tiff", {}, "tiff"},
                      LosslessCase{
                          "webp_lossless", ".webp", {cv::IMWRITE_WEBP_QUALITY, 101}, "webp"}),
    [](const ::testing::TestParamInfo<LosslessCase>& info) {
      return std::string(info.param.name);
    });

TEST(DecodeFormats, LossyWebpMatchesOpenCv) {
  const Bytes webp = encode_cv(textured_rgb(90, 70, 4), ".webp", {cv::IMWRITE_WEBP_QUALITY, 80});
  const Decoded got = decode_bytes(webp);
  EXPECT_EQ(got.info.format, "webp");
  EXPECT_EQ(got.info.width, 90);
  EXPECT_EQ(got.info.height, 70);
  EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(webp)));
  const Info info = peek(webp.data(), webp.size());
  EXPECT_EQ(info.width, 90);
  EXPECT_EQ(info.height, 70);
}

TEST(DecodeFormats, GrayscalePngIsReplicated) {
  cv::Mat gray(20, 30, CV_8UC1);
  for (int y = 0; y < 20; ++y) {
    for (int x = 0; x < 30; ++x) gray.at<std::uint8_t>(y, x) = static_cast<std::uint8_t>(x * 8 + y);
  }
  const Decoded got = decode_bytes(encode_cv(gray, ".png"));
  ASSERT_EQ(got.pixels.size(), std::size_t{20} * 30 * 3);
  for (int y = 0; y < 20; ++y) {
    for (int x = 0; x < 30; ++x) {
      const std::uint8_t* px = &got.pixels[(static_cast<std::size_t>(y) * 30 + x) * 3];
      ASSERT_EQ(px[0], x * 8 + y);
      ASSERT_EQ(px[1], x * 8 + y);
      ASSERT_EQ(px[2], x * 8 + y);
    }
  }
}

TEST(DecodeFormats, PngAlphaIsDroppedAndSixteenBitsReduced) {
  cv::Mat rgba(12, 10, CV_8UC4);
  cv::Mat rgb16(12, 10, CV_16UC3);
  for (int y = 0; y < 12; ++y) {
    for (int x = 0; x < 10; ++x) {
      rgba.at<cv::Vec4b>(y, x) =
          cv::Vec4b(static_cast<std::uint8_t>(x * 20), static_cast<std::uint8_t>(y * 20), 77,
                    static_cast<std::uint8_t>(x * y));
      // v * 257 maps to v under any 16-to-8 reduction (dropping the low byte or rounding).
      rgb16.at<cv::Vec3w>(y, x) =
          cv::Vec3w(static_cast<std::uint16_t>(x * 20 * 257),
                    static_cast<std::uint16_t>(y * 20 * 257), static_cast<std::uint16_t>(77 * 257));
    }
  }
  for (const Bytes& png : {encode_cv(rgba, ".png"), encode_cv(rgb16, ".png")}) {
    const Decoded got = decode_bytes(png);
    ASSERT_EQ(got.pixels.size(), std::size_t{12} * 10 * 3);
    for (int y = 0; y < 12; ++y) {
      for (int x = 0; x < 10; ++x) {
        const std::uint8_t* px = &got.pixels[(static_cast<std::size_t>(y) * 10 + x) * 3];
        ASSERT_EQ(px[0], x * 20);
        ASSERT_EQ(px[1], y * 20);
        ASSERT_EQ(px[2], 77);
      }
    }
  }
}

TEST(DecodeFormats, TruncatedPngIsAnError) {
  const Bytes png = encode_cv(textured_rgb(80, 60, 1), ".png");
  const Bytes cut(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() / 2));
  EXPECT_TRUE(starts_with(error_of(cut), "truncated PNG: ")) << error_of(cut);
  const Bytes tiny(png.begin(), png.begin() + 20);
  EXPECT_TRUE(starts_with(error_of(tiny), "truncated PNG: ")) << error_of(tiny);
}

TEST(DecodeFormats, UnrecognisedInputsAreRefusedByName) {
  const Bytes random = read_corpus("random.jpg");
  ASSERT_EQ(random.size(), 2048u);
  const std::string message = error_of(random);
  EXPECT_TRUE(starts_with(message, kNotAnImage + " (first bytes ")) << message;
  char first[4];
  std::snprintf(first, sizeof first, "%02x", random[0]);
  EXPECT_NE(message.find(first), std::string::npos) << message;

  const Bytes empty = read_corpus("empty.jpg");
  ASSERT_TRUE(empty.empty());
  EXPECT_EQ(error_of(empty), kNotAnImage + " (empty input)");
  EXPECT_EQ(error_of(Bytes{0x47, 0x49, 0x46, 0x38}), kNotAnImage + " (first bytes 47 49 46 38)");
  // Two bytes of "BM" followed by junk are not taken for a bitmap.
  Bytes bm(64, 0xEE);
  bm[0] = 'B';
  bm[1] = 'M';
  EXPECT_TRUE(starts_with(error_of(bm), kNotAnImage)) << error_of(bm);

  for (const Bytes* bytes : {&random, &empty}) {
    EXPECT_THROW(peek(bytes->data(), bytes->size()), DecodeError);
  }
}

// ---------------------------------------------------------------------------------------------
// max_pixels

const std::string kBombMessage =
    "image is 60000x60000 = 3600000000 pixels, above max_pixels 178956970 (raise decode's "
    "max_pixels to decode it)";

void put_be32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (24 - 8 * i));
}
void put_le(Bytes& b, std::size_t at, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// ---------------------------------------------------------------------------------------------
// PNG through libpng: cv::imdecode's pixels for every kind of PNG, warnings reported, not printed

// One kind of PNG, written by libpng's own encoder so that every colour type and depth appears
// (OpenCV's encoder writes only some of them).
struct PngKind {
  const char* name;
  int color_type;  // PNG_COLOR_TYPE_*
  int bit_depth;
  bool interlaced;
  bool transparency;  // a tRNS chunk (palette alphas, or a gray/RGB colour key)
};

void write_to_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<Bytes*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

// Random samples (every index of a palette valid), written as the kind says.
Bytes encode_png_kind(const PngKind& kind, int width, int height, std::uint32_t seed) {
  cv::RNG rng(seed);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  Bytes out;
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng could not write " << kind.name;
    return {};
  }
  png_set_write_fn(png, &out, write_to_bytes, nullptr);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height),
               kind.bit_depth, kind.color_type,
               kind.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  const int max_sample = (1 << std::min(kind.bit_depth, 16)) - 1;
  std::array<png_color, 256> palette{};
  std::array<png_byte, 256> alphas{};
  if (kind.color_type == PNG_COLOR_TYPE_PALETTE) {
    const int entries = 1 << kind.bit_depth;
    for (auto& c : palette) {
      c = {static_cast<png_byte>(rng.uniform(0, 256)), static_cast<png_byte>(rng.uniform(0, 256)),
           static_cast<png_byte>(rng.uniform(0, 256))};
    }
    for (auto& a : alphas) a = static_cast<png_byte>(rng.uniform(0, 256));
    png_set_PLTE(png, info, palette.data(), entries);
    if (kind.transparency) png_set_tRNS(png, info, alphas.data(), entries / 2 + 1, nullptr);
  } else if (kind.transparency) {
    png_color_16 key{};
    key.gray = static_cast<png_uint_16>(rng.uniform(0, max_sample + 1));
    key.red = static_cast<png_uint_16>(rng.uniform(0, max_sample + 1));
    key.green = static_cast<png_uint_16>(rng.uniform(0, max_sample + 1));
    key.blue = static_cast<png_uint_16>(rng.uniform(0, max_sample + 1));
    png_set_tRNS(png, info, nullptr, 0, &key);
  }
  png_write_info(png, info);
  const std::size_t row_bytes = png_get_rowbytes(png, info);
  Bytes pixels(row_bytes * static_cast<std::size_t>(height));
  for (auto& b : pixels) b = static_cast<std::uint8_t>(rng.uniform(0, 256));
  // A few rows of one value, so that a gray or RGB colour key really matches some pixels.
  for (std::size_t i = 0; i < row_bytes * 2 && i < pixels.size(); ++i) pixels[i] = 0;
  std::vector<png_bytep> rows(static_cast<std::size_t>(height));
  for (int y = 0; y < height; ++y)
    rows[y] = pixels.data() + row_bytes * static_cast<std::size_t>(y);
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// Each colour type at each depth it allows, plain and interlaced, with and without tRNS.
std::vector<PngKind> all_png_kinds() {
  struct Type {
    const char* name;
    int color_type;
    std::vector<int> depths;
    bool transparency;  // whether tRNS is allowed
  };
  const std::vector<Type> types = {
      {"gray", PNG_COLOR_TYPE_GRAY, {1, 2, 4, 8, 16}, true},
      {"gray_alpha", PNG_COLOR_TYPE_GRAY_ALPHA, {8, 16}, false},
      {"rgb", PNG_COLOR_TYPE_RGB, {8, 16}, true},
      {"rgba", PNG_COLOR_TYPE_RGB_ALPHA, {8, 16}, false},
      {"palette", PNG_COLOR_TYPE_PALETTE, {1, 2, 4, 8}, true},
  };
  static std::vector<std::string> names;  // the kinds point at these
  names.clear();
  names.reserve(128);
  std::vector<PngKind> kinds;
  for (const Type& t : types) {
    for (const int depth : t.depths) {
      for (const bool interlaced : {false, true}) {
        for (const bool trns : {false, true}) {
          if (trns && !t.transparency) continue;
          names.push_back(std::string(t.name) + std::to_string(depth) + (trns ? "_trns" : "") +
                          (interlaced ? "_interlaced" : ""));
          kinds.push_back({names.back().c_str(), t.color_type, depth, interlaced, trns});
        }
      }
    }
  }
  return kinds;
}

TEST(DecodePng, EveryKindGivesOpenCvsPixels) {
  const std::vector<PngKind> kinds = all_png_kinds();
  ASSERT_EQ(kinds.size(), 52u);
  std::uint32_t seed = 1;
  for (const PngKind& kind : kinds) {
    // Odd sizes: partial bytes at the end of 1/2/4-bit rows, and every Adam7 pass partly filled.
    for (const auto& [w, h] : {std::pair{37, 23}, std::pair{1, 1}, std::pair{9, 3}}) {
      SCOPED_TRACE(std::string(kind.name) + " " + std::to_string(w) + "x" + std::to_string(h));
      const Bytes png = encode_png_kind(kind, w, h, seed++);
      ASSERT_FALSE(png.empty());
      int rw = 0;
      int rh = 0;
      const Bytes expected = reference_rgb(png, &rw, &rh);
      const Decoded got = decode_bytes(png);
      EXPECT_EQ(got.info.format, "png");
      EXPECT_EQ(got.info.width, rw);
      EXPECT_EQ(got.info.height, rh);
      EXPECT_TRUE(got.info.warnings.empty());
      EXPECT_TRUE(same_bytes(got.pixels, expected));
    }
  }
}

Bytes png_chunk(const char* type, const Bytes& data) {
  Bytes chunk(8 + data.size() + 4);
  put_be32(chunk, 0, static_cast<std::uint32_t>(data.size()));
  std::memcpy(chunk.data() + 4, type, 4);
  std::copy(data.begin(), data.end(), chunk.begin() + 8);
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, chunk.data() + 4, static_cast<uInt>(4 + data.size()));
  put_be32(chunk, 8 + data.size(), static_cast<std::uint32_t>(crc));
  return chunk;
}

// Inserts a chunk right after IHDR (8 bytes of signature, 25 of IHDR).
Bytes with_chunk_after_ihdr(const Bytes& png, const Bytes& chunk) {
  constexpr std::size_t kAfterIhdr = 33;
  EXPECT_GT(png.size(), kAfterIhdr);
  Bytes out(png.size() + chunk.size());
  std::memcpy(out.data(), png.data(), kAfterIhdr);
  std::memcpy(out.data() + kAfterIhdr, chunk.data(), chunk.size());
  std::memcpy(out.data() + kAfterIhdr + chunk.size(), png.data() + kAfterIhdr,
              png.size() - kAfterIhdr);
  return out;
}

// An ICC profile chunk whose profile is far shorter than an ICC header: libpng warns
// "iCCP: too short" and decodes the image.
Bytes short_iccp_chunk() {
  Bytes data = {'i', 'c', 'c', 0, 0};
  const Bytes profile(10, 'x');
  uLongf size = compressBound(profile.size());
  Bytes packed(size);
  EXPECT_EQ(compress(packed.data(), &size, profile.data(), profile.size()), Z_OK);
  data.insert(data.end(), packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(size));
  return png_chunk("iCCP", data);
}

// Runs `f` with the process's stderr sent to a temporary file, and returns what was written.
template <typename F>
std::string captured_stderr(F&& f) {
  std::fflush(stderr);
  std::FILE* sink = std::tmpfile();
  EXPECT_NE(sink, nullptr);
  const int saved = dup(2);
  dup2(fileno(sink), 2);
  f();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::rewind(sink);
  std::string text;
  for (int c = std::fgetc(sink); c != EOF; c = std::fgetc(sink))
    text.push_back(static_cast<char>(c));
  std::fclose(sink);
  return text;
}

TEST(DecodePng, LibpngWarningIsReportedNotPrinted) {
  const Bytes clean = encode_cv(textured_rgb(30, 20, 5), ".png");
  const Bytes png = with_chunk_after_ihdr(clean, short_iccp_chunk());
  Options lenient;
  lenient.strict = false;
  Decoded got;
  EXPECT_EQ(captured_stderr([&] { got = decode_bytes(png, lenient); }), "");
  ASSERT_EQ(got.info.warnings.size(), 1u);
  EXPECT_EQ(got.info.warnings[0], "iCCP: too short");
  EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(clean)));

  // Under strict too: the warning is about a chunk the pixels do not depend on.
  Decoded strict;
  EXPECT_EQ(captured_stderr([&] { strict = decode_bytes(png); }), "");
  ASSERT_EQ(strict.info.warnings.size(), 1u);
  EXPECT_EQ(strict.info.warnings[0], "iCCP: too short");
  EXPECT_TRUE(same_bytes(strict.pixels, reference_rgb(clean)));
}

Bytes zlib_bytes(const Bytes& data) {
  uLongf size = compressBound(data.size());
  Bytes packed(size);
  EXPECT_EQ(compress2(packed.data(), &size, data.data(), data.size(), 9), Z_OK);
  packed.resize(size);
  return packed;
}

std::int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::int64_t{usage.ru_maxrss} * 1024;
}

// Text chunks are never read: libpng would inflate and keep each one (a few kilobytes of zTXt
// each holding 7.9 MB of text; 100 of them cost 790 MB), and a malformed one would warn.
TEST(DecodePng, TextChunksAreNotInflated) {
  const Bytes clean = encode_cv(textured_rgb(30, 20, 7), ".png");
  Bytes ztxt = {'k', 0, 0};
  const Bytes text = zlib_bytes(Bytes(7'900'000, 'a'));
  ztxt.insert(ztxt.end(), text.begin(), text.end());
  const Bytes chunk = png_chunk("zTXt", ztxt);
  Bytes bomb = clean;
  for (int i = 0; i < 100; ++i) bomb = with_chunk_after_ihdr(bomb, chunk);
  const std::int64_t before = peak_rss_bytes();
  const Decoded got = decode_bytes(bomb);
  EXPECT_LT(peak_rss_bytes() - before, std::int64_t{100} << 20);
  EXPECT_TRUE(got.info.warnings.empty());
  EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(clean)));

  Bytes broken = {'k', 0, 0, 'n', 'o', 't', ' ', 'z', 'l', 'i', 'b'};
  const Bytes png = with_chunk_after_ihdr(clean, png_chunk("zTXt", broken));
  Decoded strict;
  EXPECT_EQ(captured_stderr([&] { strict = decode_bytes(png); }), "");
  EXPECT_TRUE(strict.info.warnings.empty());
  EXPECT_TRUE(same_bytes(strict.pixels, reference_rgb(clean)));
}

TEST(DecodePng, SeveralWarningsAreCounted) {
  const Bytes clean = encode_cv(textured_rgb(30, 20, 6), ".png");
  const Bytes png =
      with_chunk_after_ihdr(with_chunk_after_ihdr(clean, short_iccp_chunk()), short_iccp_chunk());
  Options lenient;
  lenient.strict = false;
  const Decoded got = decode_bytes(png, lenient);
  ASSERT_EQ(got.info.warnings.size(), 1u);
  EXPECT_TRUE(starts_with(got.info.warnings[0], "iCCP: too short (and ")) << got.info.warnings[0];
  EXPECT_TRUE(same_bytes(got.pixels, reference_rgb(clean)));
}

TEST(DecodePng, TruncatedPngIsAnErrorWhateverStrict) {
  const Bytes png = encode_cv(textured_rgb(80, 60, 1), ".png");
  Options lenient;
  lenient.strict = false;
  // Inside the image data, and inside the IEND chunk after it (OpenCV refuses both).
  for (const std::size_t keep : {png.size() / 2, png.size() - 6}) {
    const Bytes cut(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(keep));
    for (const Options& options : {Options{}, lenient}) {
      std::string error;
      EXPECT_EQ(captured_stderr([&] { error = error_of(cut, options); }), "");
      EXPECT_TRUE(starts_with(error, "truncated PNG: ")) << error;
      EXPECT_NE(error.find("(input is " + std::to_string(keep) + " bytes)"), std::string::npos)
          << error;
    }
    EXPECT_TRUE(cv::imdecode(cut, cv::IMREAD_COLOR).empty());
  }
}

TEST(DecodePng, CorruptImageDataIsAnError) {
  Bytes png = encode_cv(textured_rgb(80, 60, 2), ".png");
  png[png.size() / 2] ^= 0x5A;  // inside IDAT: its CRC no longer matches
  const std::string error = error_of(png);
  EXPECT_TRUE(starts_with(error, "corrupt PNG: ")) << error;
  EXPECT_NE(error.find("CRC"), std::string::npos) << error;
}

// cv::imdecode applies the orientation of a PNG's eXIf chunk too.
TEST(DecodePng, ExifOrientationFollowsOpenCv) {
  const Bytes clean = encode_cv(textured_rgb(7, 4, 3), ".png");
  for (int orientation = 1; orientation <= 8; ++orientation) {
    SCOPED_TRACE(orientation);
    for (const bool little : {false, true}) {
      Bytes tiff(26, 0);
      tiff[0] = tiff[1] = little ? 'I' : 'M';
      auto put = [&](std::size_t at, std::uint32_t v, int bytes) {
        for (int i = 0; i < bytes; ++i) {
          tiff[at + (little ? i : bytes - 1 - i)] = static_cast<std::uint8_t>(v >> (8 * i));
        }
      };
      put(2, 42, 2);
      put(4, 8, 4);  // the IFD's offset
      put(8, 1, 2);  // one entry
      put(10, 0x0112, 2);
      put(12, 3, 2);  // SHORT
      put(14, 1, 4);  // one value
      put(18, static_cast<std::uint32_t>(orientation), 2);
      const Bytes png = with_chunk_after_ihdr(clean, png_chunk("eXIf", tiff));
      int w = 0;
      int h = 0;
      const Bytes expected = reference_rgb(png, &w, &h);
      const Decoded got = decode_bytes(png);
      EXPECT_EQ(got.info.width, w);
      EXPECT_EQ(got.info.height, h);
      EXPECT_EQ(w, orientation >= 5 ? 4 : 7);
      EXPECT_TRUE(same_bytes(got.pixels, expected));
      Options as_stored;
      as_stored.exif = false;
      EXPECT_TRUE(same_bytes(decode_bytes(png, as_stored).pixels, reference_rgb(clean)));
    }
  }
}

// Headers (with junk where the pixel data would be) that declare a given size.
Bytes png_header(std::uint32_t w, std::uint32_t h) {
  constexpr std::array<std::uint8_t, 16> kStart = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                                                   0,    0,   0,   13,  'I',  'H',  'D',  'R'};
  Bytes b(64, 0);
  std::copy(kStart.begin(), kStart.end(), b.begin());
  put_be32(b, 16, w);
  put_be32(b, 20, h);
  b[24] = 8;  // bit depth
  b[25] = 2;  // truecolour
  return b;
}
Bytes bmp_header(std::int32_t w, std::int32_t h) {
  Bytes b(64, 0);
  b[0] = 'B';
  b[1] = 'M';
  put_le(b, 14, 40, 4);
  put_le(b, 18, static_cast<std::uint32_t>(w), 4);
  put_le(b, 22, static_cast<std::uint32_t>(h), 4);
  return b;
}
Bytes bmp_core_header(std::uint16_t w, std::uint16_t h) {
  Bytes b(64, 0);
  b[0] = 'B';
  b[1] = 'M';
  put_le(b, 14, 12, 4);
  put_le(b, 18, w, 2);
  put_le(b, 20, h, 2);
  return b;
}
Bytes webp_header(const char* fourcc) {
  Bytes b(64, 0);
  std::memcpy(b.data(), "RIFF", 4);
  put_le(b, 4, 56, 4);
  std::memcpy(b.data() + 8, "WEBP", 4);
  std::memcpy(b.data() + 12, fourcc, 4);
  put_le(b, 16, 40, 4);
  return b;
}
Bytes webp_vp8x(std::uint32_t w, std::uint32_t h) {
  Bytes b = webp_header("VP8X");
  put_le(b, 24, w - 1, 3);
  put_le(b, 27, h - 1, 3);
  return b;
}
Bytes webp_vp8(std::uint16_t w, std::uint16_t h) {
  Bytes b = webp_header("VP8 ");
  b[23] = 0x9d;
  b[24] = 0x01;
  b[25] = 0x2a;
  put_le(b, 26, w, 2);
  put_le(b, 28, h, 2);
  return b;
}
Bytes webp_vp8l(std::uint32_t w, std::uint32_t h) {
  Bytes b = webp_header("VP8L");
  b[20] = 0x2f;
  put_le(b, 21, (w - 1) | (h - 1) << 14, 4);
  return b;
}
// Classic TIFF, little or big endian, with ImageWidth as SHORT or LONG and ImageLength LONG.
Bytes tiff_header(bool little_endian, std::uint32_t w, std::uint32_t h, bool width_short) {
  Bytes b(64, 0);
  auto put = [&](std::size_t at, std::uint32_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) {
      const int shift = little_endian ? 8 * i : 8 * (bytes - 1 - i);
      b[at + i] = static_cast<std::uint8_t>(v >> shift);
    }
  };
  b[0] = b[1] = little_endian ? 'I' : 'M';
  put(2, 42, 2);
  put(4, 8, 4);
  put(8, 3, 2);  // three entries, the size tags after a NewSubfileType
  put(10, 254, 2);
  put(12, 4, 2);
  put(14, 1, 4);
  put(22, 256, 2);
  put(24, width_short ? 3 : 4, 2);
  put(26, 1, 4);
  put(30, w, width_short ? 2 : 4);
  put(34, 257, 2);
  put(36, 4, 2);
  put(38, 1, 4);
  put(42, h, 4);
  return b;
}
Bytes bigtiff_header(std::uint64_t w, std::uint64_t h) {
  Bytes b(96, 0);
  b[0] = b[1] = 'I';
  put_le(b, 2, 43, 2);
  put_le(b, 4, 8, 2);
  put_le(b, 8, 16, 8);  // IFD0 offset
  put_le(b, 16, 2, 8);  // two entries of 20 bytes
  put_le(b, 24, 256, 2);
  put_le(b, 26, 16, 2);  // LONG8
  put_le(b, 28, 1, 8);
  put_le(b, 36, w, 8);
  put_le(b, 44, 257, 2);
  put_le(b, 46, 4, 2);  // LONG
  put_le(b, 48, 1, 8);
  put_le(b, 56, h, 4);
  return b;
}

TEST(MaxPixels, BombJpegThrowsFromTheHeaderWithoutAllocating) {
  const Bytes bomb = read_corpus("bomb.jpg");
  ASSERT_LT(bomb.size(), 4096u);
  const Info info = peek(bomb.data(), bomb.size());
  EXPECT_EQ(info.width, 60000);
  EXPECT_EQ(info.height, 60000);

  Bytes out;
  const auto start = std::chrono::steady_clock::now();
  try {
    decode(bomb.data(), bomb.size(), Options{}, out);
    ADD_FAILURE() << "the bomb decoded";
  } catch (const DecodeError& e) {
    EXPECT_EQ(std::string(e.what()), kBombMessage);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(out.capacity(), 0u);
  // Allocating and filling 10.8 GB would take seconds; refusing from the header takes microseconds.
  EXPECT_LT(seconds, 1.0);
}

TEST(MaxPixels, EveryFormatIsCheckedFromItsHeader) {
  const std::vector<std::pair<const char*, Bytes>> bombs = {
      {"png", png_header(60000, 60000)},
      {"bmp", bmp_header(60000, 60000)},
      {"bmp top-down", bmp_header(60000, -60000)},
      {"bmp core", bmp_core_header(60000, 60000)},
      {"webp VP8X", webp_vp8x(60000, 60000)},
      {"tiff II", tiff_header(true, 60000, 60000, true)},
      {"tiff MM", tiff_header(false, 60000, 60000, false)},
      {"bigtiff", bigtiff_header(60000, 60000)},
  };
  for (const auto& [name, bytes] : bombs) {
    SCOPED_TRACE(name);
    Bytes out;
    try {
      decode(bytes.data(), bytes.size(), Options{}, out);
      ADD_FAILURE() << "decoded";
    } catch (const DecodeError& e) {
      EXPECT_EQ(std::string(e.what()), kBombMessage);
    }
    EXPECT_EQ(out.capacity(), 0u);
    const Info info = peek(bytes.data(), bytes.size());
    EXPECT_EQ(info.width, 60000);
    EXPECT_EQ(info.height, 60000);
  }
}

// A file whose header our reader accepts but OpenCV's refuses (here: a PNG whose IHDR checksum is
// wrong, which libpng checks) is an error, whatever the output buffer held before; it once came
// out as the previous image's pixels, left in a buffer lent to OpenCV.
TEST(OpenCvFormats, AHeaderOpenCvRefusesIsAnErrorNotTheBuffersOldPixels) {
  const Bytes good = encode_cv(textured_rgb(40, 30, 3), ".png");
  Bytes bad = good;
  bad[29] ^= 0xFF;  // the IHDR chunk's CRC: bytes 29..32
  Bytes out;
  decode(good.data(), good.size(), Options{}, out);
  ASSERT_EQ(out.size(), 40u * 30u * 3u);
  try {
    decode(bad.data(), bad.size(), Options{}, out);
    ADD_FAILURE() << "decoded a PNG whose header OpenCV refuses";
  } catch (const DecodeError& e) {
    EXPECT_EQ(std::string(e.what()), "corrupt PNG: IHDR: CRC error");
  }
}

TEST(MaxPixels, LimitIsInclusive) {
  const Bytes jpeg = encode_jpeg_cv(textured_rgb(333, 500, 1), 80);
  const Bytes png = encode_cv(textured_rgb(33, 50, 1), ".png");
  Options options;
  options.max_pixels = std::int64_t{333} * 500;
  EXPECT_EQ(decode_bytes(jpeg, options).info.width, 333);
  options.max_pixels = std::int64_t{333} * 500 - 1;
  EXPECT_EQ(error_of(jpeg, options),
            "image is 333x500 = 166500 pixels, above max_pixels 166499 (raise decode's max_pixels "
            "to decode it)");
  options.max_pixels = std::int64_t{33} * 50;
  EXPECT_EQ(decode_bytes(png, options).info.height, 50);
  options.max_pixels = std::int64_t{33} * 50 - 1;
  EXPECT_EQ(error_of(png, options),
            "image is 33x50 = 1650 pixels, above max_pixels 1649 (raise decode's max_pixels to "
            "decode it)");
}

TEST(Peek, ParsesEveryHeaderVariant) {
  struct Case {
    const char* name;
    Bytes bytes;
    const char* format;
    int w;
    int h;
  };
  const std::vector<Case> cases = {
      {"png", png_header(640, 480), "png", 640, 480},
      {"bmp", bmp_header(17, 9), "bmp", 17, 9},
      {"bmp top-down", bmp_header(17, -9), "bmp", 17, 9},
      {"bmp core", bmp_core_header(300, 200), "bmp", 300, 200},
      {"webp VP8", webp_vp8(1000, 16383), "webp", 1000, 16383},
      {"webp VP8L", webp_vp8l(16384, 3), "webp", 16384, 3},
      {"webp VP8X", webp_vp8x(16777216, 5), "webp", 16777216, 5},
      {"tiff II short", tiff_header(true, 1234, 567, true), "tiff", 1234, 567},
      {"tiff MM long", tiff_header(false, 70000, 2, false), "tiff", 70000, 2},
      {"tiff MM short", tiff_header(false, 513, 2, true), "tiff", 513, 2},
      {"bigtiff", bigtiff_header(4000, 3000), "tiff", 4000, 3000},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Info info = peek(c.bytes.data(), c.bytes.size());
    EXPECT_EQ(info.format, c.format);
    EXPECT_EQ(info.width, c.w);
    EXPECT_EQ(info.height, c.h);
  }
}

TEST(Peek, MalformedHeadersAreErrors) {
  Bytes png = png_header(0, 10);
  EXPECT_THROW(peek(png.data(), png.size()), DecodeError);
  png = png_header(10, 10);
  png[12] = 'X';  // first chunk not IHDR
  EXPECT_THROW(peek(png.data(), png.size()), DecodeError);
  Bytes bmp = bmp_header(0, 5);
  EXPECT_THROW(peek(bmp.data(), bmp.size()), DecodeError);
  Bytes webp = webp_header("ABCD");
  EXPECT_THROW(peek(webp.data(), webp.size()), DecodeError);
  Bytes tiff = tiff_header(true, 10, 10, true);
  tiff[4] = 200;  // IFD0 beyond the end
  EXPECT_THROW(peek(tiff.data(), tiff.size()), DecodeError);
  tiff = tiff_header(true, 10, 10, true);
  tiff[24] = 2;  // ImageWidth typed ASCII
  EXPECT_THROW(peek(tiff.data(), tiff.size()), DecodeError);
}

// ---------------------------------------------------------------------------------------------
// Buffer reuse and threads

TEST(DecodeBuffer, CapacityIsReusedAndSizeIsExact) {
  const Bytes large = encode_jpeg_cv(textured_rgb(300, 200, 1), 90);
  const Bytes small = encode_jpeg_cv(textured_rgb(40, 30, 2), 90);
  const Bytes small_png = encode_cv(textured_rgb(41, 29, 3), ".png");
  const Bytes rotated = insert_after_soi(small, exif_segment(6, true));
  Bytes out;
  decode(large.data(), large.size(), Options{}, out);
  ASSERT_EQ(out.size(), std::size_t{300} * 200 * 3);
  const std::uint8_t* data = out.data();
  const std::size_t capacity = out.capacity();
  for (const Bytes* input : {&small, &small_png, &rotated, &large, &small}) {
    const Info info = decode(input->data(), input->size(), Options{}, out);
    EXPECT_EQ(out.size(), static_cast<std::size_t>(info.width) * info.height * 3);
    EXPECT_EQ(out.data(), data);
    EXPECT_EQ(out.capacity(), capacity);
  }
  // What was decoded into a reused buffer equals a decode into a fresh one.
  decode(small.data(), small.size(), Options{}, out);
  EXPECT_TRUE(same_bytes(out, decode_bytes(small).pixels));
}

TEST(DecodeThreads, ConcurrentDecodesMatchSerialResults) {
  Options lenient;
  lenient.strict = false;
  struct Job {
    Bytes data;
    Options options;
    Decoded expected;
  };
  std::vector<Job> jobs;
  auto add = [&](Bytes data, const Options& options) {
    Decoded expected = decode_bytes(data, options);
    jobs.push_back({std::move(data), options, std::move(expected)});
  };
  add(read_corpus("good_1.jpg"), Options{});
  add(read_corpus("good_2.jpg"), Options{});
  add(read_corpus("truncated.jpg"), lenient);
  add(read_corpus("cmyk_adobe.jpg"), Options{});
  add(read_corpus("png_named.jpg"), Options{});
  add(insert_after_soi(encode_jpeg_tj(orientation_source(), 90, TJSAMP_444, TJPF_RGB),
                       exif_segment(7, false)),
      Options{});
  add(encode_cv(textured_rgb(50, 40, 6), ".webp", {cv::IMWRITE_WEBP_QUALITY, 75}), Options{});
  const Bytes strict_failure = read_corpus("truncated.jpg");

  constexpr int kThreads = 4;
  constexpr int kRounds = 3;  // threads end and start again: each new thread makes its own handle
  for (int round = 0; round < kRounds; ++round) {
    std::vector<int> failures(kThreads, 0);
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Bytes out;
        for (int i = 0; i < 12; ++i) {
          const Job& job = jobs[static_cast<std::size_t>(i + t) % jobs.size()];
          const Info info = decode(job.data.data(), job.data.size(), job.options, out);
          if (out != job.expected.pixels || info.width != job.expected.info.width ||
              info.warnings != job.expected.info.warnings) {
            ++failures[static_cast<std::size_t>(t)];
          }
          try {
            decode(strict_failure.data(), strict_failure.size(), Options{}, out);
            ++failures[static_cast<std::size_t>(t)];
          } catch (const DecodeError& e) {
            if (std::string(e.what()) !=
                "truncated or corrupt JPEG (decoder warning: Premature end of JPEG file)") {
              ++failures[static_cast<std::size_t>(t)];
            }
          }
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[static_cast<std::size_t>(t)], 0) << t;
  }
}

// ---------------------------------------------------------------------------------------------
// Reduced decoding: a window, at a DCT scale

// Asks for a fixed window and counts the questions.
class FixedWindow final : public WindowChooser {
 public:
  explicit FixedWindow(std::optional<WindowRequest> request) : request_(request) {}
  std::optional<WindowRequest> choose(int width, int height) const noexcept override {
    ++calls;
    seen_width = width;
    seen_height = height;
    return request_;
  }
  mutable int calls = 0;
  mutable int seen_width = 0;
  mutable int seen_height = 0;

 private:
  std::optional<WindowRequest> request_;
};

WindowRequest crop_request(int x, int y, int w, int h) {
  return WindowRequest{static_cast<double>(x),
                       static_cast<double>(y),
                       static_cast<double>(w),
                       static_cast<double>(h),
                       w,
                       h,
                       true};
}

Decoded decode_window(const Bytes& data, const WindowChooser& chooser,
                      const Options& options = {}) {
  Decoded result;
  result.info = decode(data.data(), data.size(), options, result.pixels, &chooser);
  return result;
}

// The (x, y, w, h) window of an interleaved RGB image `width` pixels wide.
Bytes window_of(const Bytes& pixels, int width, int x, int y, int w, int h) {
  Bytes out;
  for (int r = y; r < y + h; ++r) {
    const auto* row = pixels.data() + (static_cast<std::size_t>(r) * width + x) * 3;
    out.insert(out.end(), row, row + static_cast<std::size_t>(w) * 3);
  }
  return out;
}

// The part of a reduced decode's pixels that holds the full-scale window (x, y, w, h) / scale.
Bytes delivered_window(const Decoded& d, int x, int y, int w, int h) {
  const Reduction& r = d.info.reduction;
  return window_of(d.pixels, d.info.width, x / r.scale - r.x, y / r.scale - r.y, w / r.scale,
                   h / r.scale);
}

double psnr(const Bytes& a, const Bytes& b) {
  EXPECT_EQ(a.size(), b.size());
  double sum = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    sum += d * d;
  }
  const double mse = sum / static_cast<double>(std::max<std::size_t>(a.size(), 1));
  return mse == 0 ? 99.0 : 10.0 * std::log10(255.0 * 255.0 / mse);
}

struct ReducedCase {
  const char* name;
  int kind;  // 0: OpenCV 4:2:0, 1: TurboJPEG at `subsampling`, 2: libjpeg arithmetic, 3: gray
  int subsampling;
  bool progressive;
};

Bytes encode_case(const ReducedCase& c, const cv::Mat& rgb) {
  switch (c.kind) {
    case 0:
      return encode_jpeg_cv(rgb, 90, c.progressive);
    case 1:
      return encode_jpeg_tj(rgb, 90, c.subsampling, TJPF_RGB);
    case 2:
      // libjpeg's compressor: arithmetic coding is not reachable through TurboJPEG 2.1.
      return testing::encode_pixels(rgb.data, rgb.cols, rgb.rows, rgb.step, testing::k420,
                                    {0, c.progressive, true, 90});
    default: {
      cv::Mat gray;
      cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
      return encode_jpeg_tj(gray, 90, TJSAMP_GRAY, TJPF_GRAY);
    }
  }
}

class ReducedDecode : public ::testing::TestWithParam<ReducedCase> {};

// (x, y, w, h) windows of a 419x311 image: inside, at the corners and edges, one row tall, one
// column wide, none of them aligned to an iMCU.
constexpr std::array<std::array<int, 4>, 5> kWindowsOf419x311 = {{{37, 53, 150, 120},
                                                                  {0, 0, 64, 48},
                                                                  {300, 200, 119, 111},
                                                                  {16, 150, 224, 9},
                                                                  {101, 1, 17, 309}}};

// libjpeg documents a cropped decode as identical to the same region of a full decode, except
// for the chroma upsampling at the cut edges, which the kernel keeps out of the window by its
// margin: so the window itself must match bit for bit, whatever the position, also at the image
// edges and at positions that are not iMCU-aligned.
TEST_P(ReducedDecode, WindowAtFullScaleIsBitIdenticalToTheFullDecode) {
  const cv::Mat rgb = textured_rgb(419, 311, 3);
  const Bytes jpeg = encode_case(GetParam(), rgb);
  const Decoded full = decode_bytes(jpeg);
  ASSERT_EQ(full.info.width, 419);
  for (const auto& [x, y, w, h] : kWindowsOf419x311) {
    SCOPED_TRACE(::testing::Message() << "window " << x << "," << y << " " << w << "x" << h);
    const FixedWindow chooser(crop_request(x, y, w, h));
    const Decoded got = decode_window(jpeg, chooser);
    EXPECT_EQ(chooser.calls, 1);
    EXPECT_EQ(chooser.seen_width, 419);
    EXPECT_EQ(chooser.seen_height, 311);
    ASSERT_EQ(got.info.reduction.scale, 1);
    EXPECT_EQ(got.info.reduction.full_width, 419);
    EXPECT_EQ(got.info.reduction.full_height, 311);
    EXPECT_TRUE(got.info.warnings.empty());
    ASSERT_LE(got.info.reduction.x, x);
    ASSERT_LE(got.info.reduction.y, y);
    ASSERT_GE(got.info.reduction.x + got.info.width, x + w);
    ASSERT_GE(got.info.reduction.y + got.info.height, y + h);
    // Less than the whole image was decoded.
    EXPECT_LT(got.pixels.size(), full.pixels.size());
    EXPECT_TRUE(
        same_bytes(delivered_window(got, x, y, w, h), window_of(full.pixels, 419, x, y, w, h)));
  }
}

// dct: fast decodes the whole image (TurboJPEG with TJFLAG_FASTDCT | TJFLAG_FASTUPSAMPLE) and the
// window (libjpeg with JDCT_IFAST and plain upsampling) by the same arithmetic: the window is
// still the same region of the whole image, bit for bit. The fast image is not the accurate one,
// but close to it.
TEST_P(ReducedDecode, FastWindowAtFullScaleIsBitIdenticalToTheFastFullDecode) {
  const cv::Mat rgb = textured_rgb(419, 311, 5);
  const Bytes jpeg = encode_case(GetParam(), rgb);
  Options fast;
  fast.fast_dct = true;
  const Decoded accurate = decode_bytes(jpeg);
  const Decoded full = decode_bytes(jpeg, fast);
  ASSERT_EQ(full.pixels.size(), accurate.pixels.size());
  // This image is fine coloured texture, the worst case for replicated chroma (on photos the
  // two decodes are about 43 dB apart).
  const double p = psnr(full.pixels, accurate.pixels);
  EXPECT_GE(p, 25.0) << "PSNR " << p << " dB";
  EXPECT_LT(p, 99.0) << "the fast decode gave the accurate pixels";
  for (const auto& [x, y, w, h] : kWindowsOf419x311) {
    SCOPED_TRACE(::testing::Message() << "window " << x << "," << y << " " << w << "x" << h);
    const FixedWindow chooser(crop_request(x, y, w, h));
    const Decoded got = decode_window(jpeg, chooser, fast);
    // Arithmetic-coded files take the whole-image path when fast (see decode_jpeg_reduced).
    if (GetParam().kind == 2) {
      EXPECT_EQ(got.info.reduction.scale, 0);
      EXPECT_TRUE(same_bytes(got.pixels, full.pixels));
      continue;
    }
    ASSERT_EQ(got.info.reduction.scale, 1);
    EXPECT_LT(got.pixels.size(), full.pixels.size());
    EXPECT_TRUE(
        same_bytes(delivered_window(got, x, y, w, h), window_of(full.pixels, 419, x, y, w, h)));
  }
}

// At 1/s the window, cropped and with the rows above skipped, is the same window of the whole
// image decoded at 1/s, bit for bit; and each of its pixels stands for an s x s block of the full
// decode (compared with cv::INTER_AREA at that integer factor, loosely: the reduced inverse DCT
// is not a box filter, and this image is full of fine detail).
TEST_P(ReducedDecode, ScaledWindowIsTheWindowOfTheScaledImage) {
  const cv::Mat rgb = textured_rgb(512, 384, 4);
  const Bytes jpeg = encode_case(GetParam(), rgb);
  const Decoded full = decode_bytes(jpeg);
  const cv::Mat full_mat(384, 512, CV_8UC3, const_cast<std::uint8_t*>(full.pixels.data()));
  for (const int scale : {2, 4, 8}) {
    SCOPED_TRACE(::testing::Message() << "scale 1/" << scale);
    // A 256x192 window at (128, 96) resized to 128/scale x 96/scale allows exactly 1/scale.
    const WindowRequest request{128, 96, 256, 192, 128 / scale, 96 / scale, true};
    ASSERT_EQ(reduced_scale(request), scale);
    const FixedWindow chooser(request);
    const Decoded got = decode_window(jpeg, chooser);
    // 4:2:2 and 4:4:0 chroma stop at 1/2 (libjpeg blurs their colour below that).
    const int expected =
        GetParam().subsampling == TJSAMP_422 || GetParam().subsampling == TJSAMP_440
            ? std::min(scale, 2)
            : scale;
    ASSERT_EQ(got.info.reduction.scale, expected);
    const int s = expected;
    const Bytes window = delivered_window(got, 128, 96, 256, 192);
    // The whole image decoded by libjpeg at 1/s, without cropping or skipping.
    const testing::Image scaled = testing::whole(jpeg, s, false);
    EXPECT_TRUE(
        same_bytes(window, window_of(scaled.rgb, scaled.width, 128 / s, 96 / s, 256 / s, 192 / s)));
    cv::Mat averaged;
    cv::resize(full_mat(cv::Rect(128, 96, 256, 192)), averaged, cv::Size(256 / s, 192 / s), 0, 0,
               cv::INTER_AREA);
    const double p = psnr(window, mat_bytes(averaged));
    EXPECT_GE(p, 24.0) << "PSNR " << p << " dB";
  }
}

INSTANTIATE_TEST_SUITE_P(Encodings, ReducedDecode,
                         ::testing::Values(ReducedCase{"opencv_420", 0, 0, false},
                                           ReducedCase{"opencv_420_progressive", 0, 0, true},
                                           ReducedCase{"turbojpeg_444", 1, TJSAMP_444, false},
                                           ReducedCase{"turbojpeg_422", 1, TJSAMP_422, false},
                                           ReducedCase{"turbojpeg_440", 1, TJSAMP_440, false},
                                           ReducedCase{"arithmetic", 2, 0, false},
                                           ReducedCase{"arithmetic_progressive", 2, 0, true},
                                           ReducedCase{"grayscale", 3, 0, false}),
                         [](const ::testing::TestParamInfo<ReducedCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(ReducedScale, LargestScaleThatStillCoversTheOutput) {
  // The scaled window covers at least twice the output size.
  EXPECT_EQ(reduced_scale({0, 0, 224, 224, 224, 224, true}), 1);
  EXPECT_EQ(reduced_scale({0, 0, 895.9, 1000, 224, 224, true}), 1);
  EXPECT_EQ(reduced_scale({0, 0, 896, 896, 224, 224, true}), 2);
  EXPECT_EQ(reduced_scale({0, 0, 2000, 900, 224, 224, true}), 2);
  EXPECT_EQ(reduced_scale({0, 0, 2000, 1800, 224, 224, true}), 4);
  EXPECT_EQ(reduced_scale({0, 0, 4000, 3600, 224, 224, true}), 8);
  EXPECT_EQ(reduced_scale({0, 0, 4000, 3600, 224, 224, false}), 1);
}

TEST(ReducedDecodeFallback, OtherFormatsAndEmptyChoicesDecodeWholeImages) {
  const cv::Mat rgb = textured_rgb(96, 64, 1);
  const FixedWindow chooser(crop_request(8, 8, 32, 32));
  const Bytes png = encode_cv(rgb, ".png");
  const Decoded got_png = decode_window(png, chooser);
  EXPECT_EQ(chooser.calls, 0);
  EXPECT_EQ(got_png.info.reduction.scale, 0);
  EXPECT_TRUE(same_bytes(got_png.pixels, mat_bytes(rgb)));

  const Bytes jpeg = encode_jpeg_cv(rgb, 90);
  const FixedWindow none(std::nullopt);
  const Decoded whole = decode_window(jpeg, none);
  EXPECT_EQ(none.calls, 1);
  EXPECT_EQ(whole.info.reduction.scale, 0);
  EXPECT_TRUE(same_bytes(whole.pixels, decode_bytes(jpeg).pixels));
  // The whole image at full scale gains nothing from the window path.
  const FixedWindow everything(crop_request(0, 0, 96, 64));
  EXPECT_EQ(decode_window(jpeg, everything).info.reduction.scale, 0);
  // A request outside the image is not trusted.
  const FixedWindow outside(crop_request(90, 8, 32, 32));
  EXPECT_EQ(decode_window(jpeg, outside).info.reduction.scale, 0);
}

TEST(ReducedDecodeFallback, ExifRotatedJpegsDecodeWholeAndRotated) {
  const Bytes plain = encode_jpeg_tj(textured_rgb(120, 80, 2), 95, TJSAMP_420, TJPF_RGB);
  for (const int orientation : {2, 3, 6, 8}) {
    SCOPED_TRACE(orientation);
    const Bytes jpeg = insert_after_soi(plain, exif_segment(orientation, true));
    const FixedWindow chooser(crop_request(4, 4, 40, 40));
    const Decoded got = decode_window(jpeg, chooser);
    EXPECT_EQ(got.info.reduction.scale, 0);
    EXPECT_TRUE(same_bytes(got.pixels, decode_bytes(jpeg).pixels));
    // With `exif: false` the stored frame is what the caller sees, and the window applies.
    Options ignore;
    ignore.exif = false;
    EXPECT_EQ(decode_window(jpeg, chooser, ignore).info.reduction.scale, 1);
  }
}

TEST(ReducedDecodeFallback, CmykJpegsDecodeWhole) {
  cv::Mat cmyk(64, 64, CV_8UC4, cv::Scalar(200, 30, 90, 10));
  const Bytes jpeg = encode_jpeg_tj(cmyk, 95, TJSAMP_444, TJPF_CMYK);
  const FixedWindow chooser(crop_request(8, 8, 16, 16));
  const Decoded got = decode_window(jpeg, chooser);
  EXPECT_EQ(got.info.reduction.scale, 0);
  EXPECT_TRUE(same_bytes(got.pixels, decode_bytes(jpeg).pixels));
}

TEST(ReducedDecodeFallback, StreamsWithoutTablesDecodeWhole) {
  const Bytes plain = encode_jpeg_cv(textured_rgb(64, 48, 8), 90);
  const Bytes no_dht = without_segments(plain, 0xC4);
  const FixedWindow chooser(crop_request(8, 8, 16, 16));
  const Decoded got = decode_window(no_dht, chooser);
  EXPECT_EQ(got.info.reduction.scale, 0);
  EXPECT_TRUE(same_bytes(got.pixels, decode_bytes(plain).pixels));
}

TEST(ReducedDecodeFallback, TruncatedAndCorruptStreamsGiveTheSameErrors) {
  const Bytes jpeg = encode_jpeg_cv(textured_rgb(200, 160, 6), 90);
  const FixedWindow chooser(crop_request(100, 100, 64, 48));
  // Cut inside the scan data, inside the headers, and damaged headers: the errors of the full path.
  for (const std::size_t keep : {jpeg.size() / 2, std::size_t{40}}) {
    const Bytes cut(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(keep));
    Bytes out;
    std::string with;
    try {
      decode(cut.data(), cut.size(), Options{}, out, &chooser);
      with = "(no error)";
    } catch (const DecodeError& e) {
      with = e.what();
    }
    EXPECT_EQ(with, error_of(cut));
    Options lenient;
    lenient.strict = false;
    if (keep > 100) {
      const Decoded got = decode_window(cut, chooser, lenient);
      EXPECT_EQ(got.info.reduction.scale, 0);
      EXPECT_EQ(got.info.warnings, decode_bytes(cut, lenient).info.warnings);
    }
  }
  // A corrupt progressive scan inside the window: the decoder's own message, as without a window.
  for (const bool stray : {false, true}) {
    const Bytes bad = damaged_progressive(stray, !stray);
    const FixedWindow whole_rows(crop_request(8, 8, 64, 80));
    Bytes out;
    std::string with;
    try {
      decode(bad.data(), bad.size(), Options{}, out, &whole_rows);
      with = "(no error)";
    } catch (const DecodeError& e) {
      with = e.what();
    }
    EXPECT_EQ(with, error_of(bad));
  }
}

TEST(ReducedDecode, LenientWarningsAreReportedAndTheImageDelivered) {
  // Stray bytes between progressive scans: a warning only.
  const Bytes bad = damaged_progressive(true, false);
  Options lenient;
  lenient.strict = false;
  const FixedWindow chooser(crop_request(8, 8, 64, 80));
  const Decoded got = decode_window(bad, chooser, lenient);
  EXPECT_EQ(got.info.reduction.scale, 1);
  EXPECT_EQ(got.info.warnings, decode_bytes(bad, lenient).info.warnings);
  ASSERT_EQ(got.info.warnings.size(), 1u);
}

TEST(ReducedDecode, ThreadsKeepTheirOwnDecompressor) {
  const Bytes jpeg = encode_jpeg_cv(textured_rgb(300, 200, 12), 90);
  const FixedWindow chooser(WindowRequest{20, 30, 240, 160, 60, 40, true});
  const Decoded expected = decode_window(jpeg, chooser);
  ASSERT_EQ(expected.info.reduction.scale, 2);
  std::vector<std::thread> threads;
  std::array<bool, 4> same{};
  for (std::size_t t = 0; t < same.size(); ++t) {
    threads.emplace_back([&, t] {
      // A chooser per thread: FixedWindow counts its calls in plain members.
      const FixedWindow own(WindowRequest{20, 30, 240, 160, 60, 40, true});
      bool ok = true;
      for (int i = 0; i < 20; ++i) ok = ok && decode_window(jpeg, own).pixels == expected.pixels;
      same[t] = ok;
    });
  }
  for (auto& t : threads) t.join();
  for (const bool ok : same) EXPECT_TRUE(ok);
}

// The largest sizes a JPEG frame header can declare, 65000x65000 and 65535x65535, refused from the
// header by the whole-image and the reduced (windowed) decode alike, with no pixel memory taken.
TEST(MaxPixels, LargestJpegHeadersAreRefusedBeforeAllocating) {
  const Bytes small = encode_jpeg_cv(textured_rgb(16, 16, 2), 75);
  std::size_t sof = 2;
  while (sof + 9 < small.size() && !(small[sof] == 0xFF && small[sof + 1] == 0xC0)) {
    sof += 2 + (std::size_t{small[sof + 2]} << 8 | small[sof + 3]);
  }
  ASSERT_LT(sof + 9, small.size()) << "no SOF0 marker";
  // libjpeg refuses sides above 65500 (JPEG_MAX_DIMENSION) itself, as a corrupt header.
  for (const std::uint32_t side : {65000U, 65535U}) {
    Bytes bomb = small;
    bomb[sof + 5] = bomb[sof + 7] = static_cast<std::uint8_t>(side >> 8);
    bomb[sof + 6] = bomb[sof + 8] = static_cast<std::uint8_t>(side & 0xFF);
    const std::string expected =
        side > 65500 ? "corrupt JPEG: Maximum supported image dimension is 65500 pixels"
                     : "image is " + std::to_string(side) + "x" + std::to_string(side) + " = " +
                           std::to_string(std::uint64_t{side} * side) +
                           " pixels, above max_pixels 178956970 (raise decode's max_pixels to "
                           "decode it)";
    if (side <= 65500) {
      const Info info = peek(bomb.data(), bomb.size());
      EXPECT_EQ(info.width, static_cast<int>(side));
      EXPECT_EQ(info.height, static_cast<int>(side));
    }
    const FixedWindow window(WindowRequest{0, 0, 224, 224, 112, 112, true});
    for (const WindowChooser* chooser :
         {static_cast<const WindowChooser*>(nullptr), static_cast<const WindowChooser*>(&window)}) {
      Bytes out;
      try {
        decode(bomb.data(), bomb.size(), Options{}, out, chooser);
        ADD_FAILURE() << side << ": decoded";
      } catch (const DecodeError& e) {
        EXPECT_EQ(std::string(e.what()), expected);
      }
      EXPECT_EQ(out.capacity(), 0u);
    }
  }
}

}  // namespace
}  // namespace millrace::decode
