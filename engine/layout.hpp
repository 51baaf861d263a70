// The element types and layouts every stage and kernel shares: one definition, used by the stream
// description (engine/stream.hpp), the stages and their kernels.
//
// Contract: header-only values with no dependency beyond the public batch header, so that a
// kernel may use them without depending on the engine.
#pragma once

#include "millrace/batch.hpp"

namespace millrace {

// millrace::DType (millrace/batch.hpp) is the one element type: uint8, int8, float32.

// How a tensor's dimensions are ordered: channels first (NCHW) or last (NHWC). A sample's
// layout is its batch's without the leading N (CHW, HWC). kAny: not fixed yet, or no preference;
// never a layout to write data in.
enum class Layout { kAny, kNCHW, kNHWC };

}  // namespace millrace
