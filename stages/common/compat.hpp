// Which reference loader a stage reproduces where millrace's own behaviour differs from it.
//
// `none` is millrace's own behaviour. `mxnet` is MXNet 1.9.1's ImageRecordIter (its default
// augmenter, OpenCV 3.4's cv::imdecode), exactly, for everything it does deterministically: each
// stage that takes the setting documents what it changes, and docs/int8-contract.md lists what is
// identical and what is not. A plain value, shared by the stages that take `compat`.
#pragma once

namespace millrace {

enum class Compat { kNone, kMxnet };

}  // namespace millrace
