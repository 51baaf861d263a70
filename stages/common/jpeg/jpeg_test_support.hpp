// Test support: JPEGs of every layout and coding written through libjpeg itself, and whole
// decodes at a DCT scale through libjpeg alone, the reference that windowed decoding is held to.
#pragma once

// jpeglib.h needs FILE and size_t declared before it.
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

namespace millrace::decode::testing {

using Bytes = std::vector<std::uint8_t>;

struct Layout {
  const char* name;
  int components;  // 1 or 3
  int h;           // luma sampling factors; chroma is 1x1
  int v;
};

constexpr Layout k444{"4:4:4", 3, 1, 1};
constexpr Layout k420{"4:2:0", 3, 2, 2};
constexpr Layout k422{"4:2:2", 3, 2, 1};
constexpr Layout k440{"4:4:0", 3, 1, 2};
constexpr Layout kGray{"grayscale", 1, 1, 1};

struct Encoding {
  int restart = 0;  // MCUs per interval; 0: none
  bool progressive = false;
  bool arithmetic = false;
  int quality = 90;
};

// A photo-like image: gradients, edges and noise, so that every block has real coefficients and
// chroma varies from pixel to pixel (which is what upsampling differences show up on).
inline Bytes photo(int width, int height, int components, int seed) {
  Bytes px(static_cast<std::size_t>(width) * height * components);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_int_distribution<int> noise(-20, 20);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < components; ++c) {
        const double base = 128 +
                            80 * std::sin(x / (7.0 + 3 * c) + seed) * std::cos(y / (11.0 + 2 * c)) +
                            (((x / 5) + (y / 9) + c) % 3 == 0 ? 30 : -30);
        px[(static_cast<std::size_t>(y) * width + x) * components + c] =
            static_cast<std::uint8_t>(std::clamp(base + noise(rng), 0.0, 255.0));
      }
    }
  }
  return px;
}

// `pixels` (interleaved RGB, or gray for one component; rows `stride` bytes apart) through
// libjpeg's own compressor, which reaches what TurboJPEG's API does not (arithmetic coding).
inline Bytes encode_pixels(const std::uint8_t* pixels, int width, int height, std::size_t stride,
                           const Layout& layout, const Encoding& e) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr err{};
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = layout.components;
  cinfo.in_color_space = layout.components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, e.quality, TRUE);
  cinfo.comp_info[0].h_samp_factor = layout.h;
  cinfo.comp_info[0].v_samp_factor = layout.v;
  for (int c = 1; c < layout.components; ++c) {
    cinfo.comp_info[c].h_samp_factor = 1;
    cinfo.comp_info[c].v_samp_factor = 1;
  }
  cinfo.restart_interval = static_cast<unsigned>(e.restart);
  cinfo.arith_code = e.arithmetic ? TRUE : FALSE;
  if (e.progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    auto* row = const_cast<JSAMPROW>(pixels + cinfo.next_scanline * stride);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  Bytes out(buffer, buffer + size);
  std::free(buffer);
  return out;
}

// A photo() of `width` x `height` in `layout`, encoded as `e` asks.
inline Bytes encode(int width, int height, const Layout& layout, const Encoding& e, int seed = 1) {
  const Bytes pixels = photo(width, height, layout.components, seed);
  return encode_pixels(pixels.data(), width, height,
                       static_cast<std::size_t>(width) * layout.components, layout, e);
}

// A whole decode at 1/scale, through libjpeg alone: the reference every window is held to.
struct Image {
  int width = 0;
  int height = 0;
  Bytes rgb;
};

inline Image whole(const Bytes& jpeg, int scale, bool fast) {
  jpeg_decompress_struct cinfo{};
  jpeg_error_mgr err{};
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, jpeg.data(), jpeg.size());
  jpeg_read_header(&cinfo, TRUE);
  cinfo.scale_num = 1;
  cinfo.scale_denom = static_cast<unsigned>(scale);
  cinfo.out_color_space = JCS_EXT_RGB;
  if (fast) {
    cinfo.dct_method = JDCT_IFAST;
    cinfo.do_fancy_upsampling = FALSE;
  }
  jpeg_start_decompress(&cinfo);
  Image image;
  image.width = static_cast<int>(cinfo.output_width);
  image.height = static_cast<int>(cinfo.output_height);
  image.rgb.resize(static_cast<std::size_t>(image.width) * image.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row =
        image.rgb.data() + static_cast<std::size_t>(cinfo.output_scanline) * image.width * 3;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return image;
}

}  // namespace millrace::decode::testing
