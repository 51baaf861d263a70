// What a sample's TensorGeometry (engine/item.hpp) means for an image, for the stages that set
// and read it. The current tensor of an image is HWC: dimension 0 is the rows, 1 the columns.
//
// - roi: the crop, rows y.. and columns x.. of the image (augment sets it; normalize reads the
//   image through it while it writes its output, and resets it).
// - flips: kMirror, a horizontal mirror (augment toggles it; normalize walks each row backwards
//   while it writes its output, and clears it).
// - source: what a reduced JPEG decode delivered (decode sets it when the stage after it named the
//   window it will read): the window from (origin[0], origin[1]) = (row, column) of the image
//   scaled by 1/scale, of an image of extent = {height, width} at full scale. augment maps its
//   crop through it and resets it.
// - batch refuses a sample whose crop or mirror is still pending: no stage made its pixels.
//
// Contract: constants only, no state.
#pragma once

#include <cstdint>

#include "engine/item.hpp"

namespace millrace {

// A horizontal mirror: the columns of an HWC image read reversed.
inline constexpr std::uint32_t kMirror = flip_of(1);

}  // namespace millrace
