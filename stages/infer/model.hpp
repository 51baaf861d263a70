// A neural network as millrace executes it: the ONNX graph after import, folding and fusion.
//
// Contract: a Model is a plain value built once by import_onnx() (onnx_import.hpp) and then only
// read, so it may be shared between threads. Weights are fp32. Values (tensors flowing between
// ops) are numbered; every op reads values produced earlier in `ops` (topological order), so a
// single forward walk executes it. Shapes are given for batch size 1 (dimension 0 is the batch).
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace millrace::infer {

// A model that cannot be imported: names the file, and the node and op type when one is at fault.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct FloatTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> data;  // row-major
};

enum class OpKind {
  kConv,  // weight OIHW (I = input channels / groups), optional bias [O]
  kMaxPool,
  kAvgPool,
  kGlobalAvgPool,  // NCHW -> NC11
  kAdd,            // elementwise, two inputs of the same shape (the residual add)
  kRelu,           // a ReLU or Clip that could not be fused into its producer
  kClip,
  kGemm,     // inner product: input flattened to [N, K]; weight [O, K]; bias [O]
  kConcat,   // along `axis` (channels)
  kFlatten,  // NCHW -> [N, C*H*W]; a no-op on the data when it follows a 1x1 spatial map
};

enum class Activation { kNone, kRelu, kClip };

struct Op {
  OpKind kind = OpKind::kConv;
  std::string name;         // the ONNX node's name (or "<op_type>_<index>" when it had none)
  std::vector<int> inputs;  // value ids
  int output = -1;          // value id
  // Conv and pooling.
  std::array<int, 2> kernel{1, 1};
  std::array<int, 2> stride{1, 1};
  std::array<int, 2> dilation{1, 1};
  std::array<int, 4> pads{0, 0, 0, 0};  // top, left, bottom, right
  int groups = 1;
  bool count_include_pad = false;  // AvgPool
  bool ceil_mode = false;          // pooling
  // Conv and Gemm: weights with any BatchNormalization folded in.
  FloatTensor weight;
  FloatTensor bias;  // empty shape when the op has none
  // An activation fused after the op (Conv, Gemm, Add): ReLU, or Clip to [clip_min, clip_max]
  // (Clip(0, 6) is ReLU6).
  Activation activation = Activation::kNone;
  float clip_min = 0.0F;
  float clip_max = 0.0F;
  int axis = 1;  // Concat
};

struct Model {
  std::string path;
  int input = 0;  // value id of the network input
  std::string input_name;
  std::array<std::int64_t, 4> input_shape{1, 3, 224, 224};  // NCHW, batch 1
  std::vector<Op> ops;
  int output = -1;                 // value id of the logits: the outputs before a softmax
  bool ends_with_softmax = false;  // the ONNX graph applied a softmax to the logits
  std::vector<std::vector<std::int64_t>> value_shapes;  // per value id, batch 1
  // model_digest() of this graph (calibration.hpp), or 0 when not computed yet. Hashing reads
  // every weight, so whoever prepares a model for a run computes it once and every Network built
  // from the model reuses it; a Network given a model with 0 computes it once itself.
  std::uint64_t digest = 0;
  int value_count() const { return static_cast<int>(value_shapes.size()); }
};

}  // namespace millrace::infer
