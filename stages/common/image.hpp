// Plain 8-bit image views shared by the image kernels (decode, augment, normalize).
//
// Contract: a view never owns its pixels; whoever made the buffer keeps it alive while the view
// is used. Pixels are interleaved (HWC), rows `stride` bytes apart, channel order RGB unless a
// kernel says otherwise. Views are trivially copyable and carry no synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>

namespace millrace {

struct ImageView {
  const std::uint8_t* data = nullptr;
  int width = 0;
  int height = 0;
  int channels = 3;
  std::size_t stride = 0;  // bytes between the starts of two rows

  const std::uint8_t* row(int y) const { return data + static_cast<std::size_t>(y) * stride; }
};

// A window in pixel coordinates of the image it was computed for.
struct Rect {
  int x = 0;
  int y = 0;
  int width = 0;
  int height = 0;
  bool operator==(const Rect&) const = default;
};

}  // namespace millrace
