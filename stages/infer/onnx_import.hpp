// Reads an fp32 ONNX model file into millrace's network IR (model.hpp), folding and fusing as it
// goes, and rejects everything millrace cannot run before any data flows.
//
// Contract: import_onnx() is a pure function of the file's contents: it keeps no state, so calls
// may run concurrently (each parses its own copy). It reads the whole file (and any external
// tensor data files the model names, relative to the model's folder) and returns a Model that owns
// all its weights. It throws ModelError for a file that is missing, not an ONNX model, or uses an
// operator, attribute or graph shape millrace does not support; the message starts with the path
// and names the node and its op type when one is at fault.
//
// What is accepted: one graph input (besides initializers), float32, 4-D NCHW with fixed C, H, W
// (the batch dimension may be symbolic); one graph output; the default ONNX domain at opsets 11 to
// 17; the operators Conv, Relu, Clip, BatchNormalization, MaxPool, AveragePool,
// GlobalAveragePool, Add, Flatten, Reshape, Gemm, MatMul, Softmax, Identity, Constant, Dropout and
// Concat, with the restrictions below.
//
// Lowering:
// - Initializers and Constant nodes are weights. Identity and Dropout are aliases and vanish.
// - A BatchNormalization whose input is a Conv's output with no other consumer is folded into that
//   conv: w' = w * gamma / sqrt(var + eps) per output channel, b' = (b - mean) * gamma /
//   sqrt(var + eps) + beta. A BatchNormalization anywhere else is an error.
// - A Relu or Clip (bounds constant) that reads the single-consumer output of a Conv, Gemm or Add
//   becomes that op's `activation`; on an output that already has an activation, the two clamps
//   are composed when their ranges overlap. Otherwise it stays a kRelu / kClip op (a kClip op
//   keeps its bounds in clip_min / clip_max too). Clip(0, +inf) is a ReLU; Clip without bounds is
//   an identity; a Clip with one bound keeps -inf or +inf as the other.
// - Flatten(axis 1) and Reshape to [N, K] are kFlatten (on a value that is already 2-D they
//   vanish). Reshape's shape must be a constant [n, k] with k = -1 or K (the product of the
//   non-batch dimensions) and n = 0 (keep), -1 (when k = K), or the input's batch size when that
//   is a fixed number.
// - Concat joins values along the channels (axis 1) only.
// - Gemm (transA = 0, transB = 0 or 1; alpha and beta are folded into weight and bias) and MatMul
//   with a constant [K, O] second input are kGemm with weight [O, K]. An Add of a constant [O]
//   vector to the single-consumer output of a Gemm or MatMul becomes (part of) its bias.
// - Softmax over the classes of a 2-D value that is the graph output is dropped: Model::output is
//   the value before it and Model::ends_with_softmax is true. A Softmax anywhere else is an error.
// - Conv pads come from `pads` (ONNX order x1_begin, x2_begin, x1_end, x2_end, i.e. top, left,
//   bottom, right) or from auto_pad (VALID, SAME_UPPER, SAME_LOWER are turned into explicit pads).
// - Ops whose outputs do not reach the graph output are dropped.
// - Model::value_shapes holds every value's shape at batch 1. Pooling with ceil_mode follows
//   PyTorch: a last window that would start in the end padding is not counted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "stages/infer/model.hpp"

namespace millrace::infer {

// The most bytes a model may take, its file and external data together, unless the caller allows
// more: a model is read whole into memory (and parsed into a second copy), so its size is its
// memory. 1 GiB holds every fp32 ImageNet classifier from AlexNet to ResNet-152 several times and
// stays below protobuf's 2 GiB message limit.
inline constexpr std::uint64_t kDefaultMaxModelBytes = std::uint64_t{1} << 30;

// Parses and lowers the ONNX model at `path`. Throws ModelError (see above); a model file, or a
// file and its external data together, larger than `max_bytes` is refused before it is read, with
// a message naming the limit's key, infer's `max_model_bytes`.
Model import_onnx(const std::string& path, std::uint64_t max_bytes = kDefaultMaxModelBytes);

// The same for a model file's contents already in memory. `path` names the model in errors and
// locates external data (relative to its folder); `bytes` counts against `max_bytes`.
Model import_onnx_bytes(std::string_view bytes, const std::string& path,
                        std::uint64_t max_bytes = kDefaultMaxModelBytes);

}  // namespace millrace::infer
