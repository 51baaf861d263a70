// One lowering per ONNX operator (onnx_importer.hpp): each checks its node's attributes and
// inputs, then emits a pending op, fuses into its producer, or aliases its input.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "stages/infer/onnx_importer.hpp"

namespace millrace::infer::onnx_front {

void Importer::lower_constant(const onnx::NodeProto& node) {
  Attributes attrs =
      attributes(node, {"value", "value_float", "value_floats", "value_int", "value_ints"});
  if (node.attribute_size() != 1) fail(node, "needs exactly one value attribute");
  define(node, node.output(0));
  ConstTensor value;
  if (const auto* a = attrs.find("value", onnx::AttributeProto_AttributeType_TENSOR)) {
    value = to_const(a->t(), "node '" + node_name(node) + "' (Constant)");
  } else if (const auto* f1 = attrs.find("value_float", onnx::AttributeProto_AttributeType_FLOAT)) {
    value.floats = {f1->f()};
  } else if (const auto* fs =
                 attrs.find("value_floats", onnx::AttributeProto_AttributeType_FLOATS)) {
    value.floats.assign(fs->floats().begin(), fs->floats().end());
    value.shape = {static_cast<std::int64_t>(value.floats.size())};
  } else if (const auto* i1 = attrs.find("value_int", onnx::AttributeProto_AttributeType_INT)) {
    value.integer = true;
    value.ints = {i1->i()};
  } else if (const auto* is = attrs.find("value_ints", onnx::AttributeProto_AttributeType_INTS)) {
    value.integer = true;
    value.ints.assign(is->ints().begin(), is->ints().end());
    value.shape = {static_cast<std::int64_t>(value.ints.size())};
  }
  constants_.emplace(node.output(0), std::move(value));
}

void Importer::lower_passthrough(const onnx::NodeProto& node) {
  if (node.op_type() == "Dropout") {
    Attributes attrs = attributes(node, {"seed", "ratio"});
    if (has_input(node, 2)) {
      const ConstTensor& training = const_input(node, 2);
      if (training.size() != 1 || training.at(0) != 0) {
        fail(node, "training_mode must be a constant false; millrace runs inference");
      }
    }
    only_first_output(node, "the dropout mask exists only in training");
  } else {
    Attributes attrs = attributes(node, {});
  }
  if (!has_input(node, 0)) fail(node, "input 0 is missing");
  const std::string source = canonical(node.input(0));
  if (!is_value(source) && !constants_.count(source)) {
    fail(node, "input '" + node.input(0) + "' is not produced by any earlier node");
  }
  if (is_value(node.output(0)) || constants_.count(node.output(0))) {
    fail(node, "output '" + node.output(0) + "' is already defined by an earlier node");
  }
  // count_uses() made the output an alias of the input already.
}

void Importer::window(const onnx::NodeProto& node, const Attributes& attrs, const Shape& in,
                      std::array<int, 2> kernel, bool ceil_mode, Op& op, Shape& out) const {
  auto pair = [&](const char* name, std::int64_t fallback, std::int64_t min) {
    Shape v = attrs.get_ints(name, {fallback, fallback});
    if (v.size() != 2) fail(node, std::string(name) + " must have 2 values (2-D spatial)");
    for (std::int64_t x : v) {
      if (x < min || x > std::numeric_limits<int>::max()) {
        fail(node, std::string(name) + " " + shape_text(v) + " is out of range");
      }
    }
    return std::array<int, 2>{static_cast<int>(v[0]), static_cast<int>(v[1])};
  };
  op.kernel = kernel;
  op.stride = pair("strides", 1, 1);
  op.dilation = pair("dilations", 1, 1);
  if (kernel[0] < 1 || kernel[1] < 1) fail(node, "kernel size must be positive");

  const std::string auto_pad = attrs.get_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && attrs.has("pads")) {
    fail(node, "has both auto_pad " + auto_pad + " and pads");
  }
  if (auto_pad == "NOTSET") {
    Shape pads = attrs.get_ints("pads", {0, 0, 0, 0});
    if (pads.size() != 4) fail(node, "pads must have 4 values (2-D spatial)");
    for (std::int64_t p : pads) {
      if (p < 0 || p > std::numeric_limits<int>::max()) {
        fail(node, "pads " + shape_text(pads) + " are out of range");
      }
    }
    // ONNX order x1_begin, x2_begin, x1_end, x2_end is already top, left, bottom, right.
    op.pads = {static_cast<int>(pads[0]), static_cast<int>(pads[1]), static_cast<int>(pads[2]),
               static_cast<int>(pads[3])};
  } else if (auto_pad == "VALID") {
    op.pads = {0, 0, 0, 0};
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (int i = 0; i < 2; ++i) {
      const std::int64_t size = in[2 + i];
      const std::int64_t reach = static_cast<std::int64_t>(kernel[i] - 1) * op.dilation[i] + 1;
      const std::int64_t wanted = (size + op.stride[i] - 1) / op.stride[i];
      const std::int64_t total =
          std::max<std::int64_t>(0, (wanted - 1) * op.stride[i] + reach - size);
      const auto small = static_cast<int>(total / 2);
      const auto large = static_cast<int>(total - total / 2);
      // SAME_UPPER puts the odd extra pixel at the end, SAME_LOWER at the beginning.
      op.pads[i] = auto_pad == "SAME_UPPER" ? small : large;
      op.pads[2 + i] = auto_pad == "SAME_UPPER" ? large : small;
    }
  } else {
    fail(node, "auto_pad '" + auto_pad + "' is not supported");
  }

  out = {1, 0, 0, 0};
  for (int i = 0; i < 2; ++i) {
    const std::int64_t size = in[2 + i];
    const std::int64_t begin = op.pads[i];
    const std::int64_t padded = size + begin + op.pads[2 + i];
    const std::int64_t reach = static_cast<std::int64_t>(kernel[i] - 1) * op.dilation[i] + 1;
    if (padded < reach) {
      fail(node, "the window (" + std::to_string(reach) + ") is larger than the padded input (" +
                     std::to_string(padded) + ")");
    }
    const std::int64_t span = padded - reach;
    std::int64_t positions = span / op.stride[i];
    if (ceil_mode && span % op.stride[i] != 0) {
      ++positions;
      // As PyTorch: the last window must start inside the input or its begin padding.
      if (positions * op.stride[i] >= size + begin) --positions;
    }
    out[2 + i] = positions + 1;
  }
}

void Importer::lower_conv(const onnx::NodeProto& node) {
  Attributes attrs =
      attributes(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) {
    fail(node, "input of shape " + shape_text(in) + "; millrace runs 2-D convolutions (NCHW)");
  }
  const ConstTensor& w = const_input(node, 1);
  if (w.integer || w.shape.size() != 4) {
    fail(node, "weight must be a float tensor [O, I, kH, kW], got " + shape_text(w.shape));
  }
  const std::int64_t group = attrs.get_int("group", 1);
  const std::int64_t out_channels = w.shape[0];
  if (group < 1 || out_channels % group != 0 || w.shape[1] * group != in[1]) {
    fail(node, "weight " + shape_text(w.shape) + " with group " + std::to_string(group) +
                   " does not fit an input with " + std::to_string(in[1]) + " channels");
  }
  if (attrs.has("kernel_shape")) {
    Shape k = attrs.get_ints("kernel_shape", {});
    if (k != Shape{w.shape[2], w.shape[3]}) {
      fail(node, "kernel_shape " + shape_text(k) + " does not match weight " + shape_text(w.shape));
    }
  }
  Shape out;
  Op op;
  window(node, attrs, in, {static_cast<int>(w.shape[2]), static_cast<int>(w.shape[3])}, false, op,
         out);
  out[1] = out_channels;
  Pending& p = emit(node, OpKind::kConv, {x}, out);
  p.op.kernel = op.kernel;
  p.op.stride = op.stride;
  p.op.dilation = op.dilation;
  p.op.pads = op.pads;
  p.op.groups = static_cast<int>(group);
  p.op.weight = {w.shape, w.floats};
  if (has_input(node, 2)) {
    const ConstTensor& b = const_input(node, 2);
    if (b.integer || b.size() != static_cast<std::size_t>(out_channels)) {
      fail(node, "bias " + shape_text(b.shape) + " does not match " + std::to_string(out_channels) +
                     " output channels");
    }
    p.op.bias = {{out_channels}, b.floats};
  }
}

void Importer::lower_pool(const onnx::NodeProto& node) {
  const bool max = node.op_type() == "MaxPool";
  Attributes attrs = max ? attributes(node, {"auto_pad", "ceil_mode", "dilations", "kernel_shape",
                                             "pads", "storage_order", "strides"})
                         : attributes(node, {"auto_pad", "ceil_mode", "count_include_pad",
                                             "kernel_shape", "pads", "strides"});
  if (max) {
    if (attrs.get_int("storage_order", 0) != 0) fail(node, "storage_order 1 is not supported");
    only_first_output(node, "millrace does not compute max-pooling indices");
  }
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) fail(node, "input of shape " + shape_text(in) + "; millrace pools NCHW");
  if (!attrs.has("kernel_shape")) fail(node, "kernel_shape is missing");
  Shape k = attrs.get_ints("kernel_shape", {});
  if (k.size() != 2 || k[0] < 1 || k[1] < 1 || k[0] > std::numeric_limits<int>::max() ||
      k[1] > std::numeric_limits<int>::max()) {
    fail(node, "kernel_shape " + shape_text(k) + " is not a 2-D window");
  }
  const std::int64_t ceil_mode = attrs.get_int("ceil_mode", 0);
  if (ceil_mode != 0 && ceil_mode != 1) fail(node, "ceil_mode must be 0 or 1");
  Shape out;
  Op op;
  window(node, attrs, in, {static_cast<int>(k[0]), static_cast<int>(k[1])}, ceil_mode == 1, op,
         out);
  out[1] = in[1];
  Pending& p = emit(node, max ? OpKind::kMaxPool : OpKind::kAvgPool, {x}, out);
  p.op.kernel = op.kernel;
  p.op.stride = op.stride;
  p.op.dilation = op.dilation;
  p.op.pads = op.pads;
  p.op.ceil_mode = ceil_mode == 1;
  p.op.count_include_pad = !max && attrs.get_int("count_include_pad", 0) != 0;
}

void Importer::lower_global_pool(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) fail(node, "input of shape " + shape_text(in) + "; millrace pools NCHW");
  emit(node, OpKind::kGlobalAvgPool, {x}, {1, in[1], 1, 1});
}

void Importer::lower_batch_norm(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"epsilon", "momentum", "training_mode"});
  if (attrs.get_int("training_mode", 0) != 0) {
    fail(node, "training_mode is set; millrace runs inference");
  }
  only_first_output(node, "running statistics are outputs only in training");
  const std::string x = value_input(node, 0);
  Pending* conv = sole_producer(x, {OpKind::kConv});
  if (conv == nullptr || conv->op.activation != Activation::kNone) {
    fail(node,
         "BatchNormalization is supported only directly after a Conv whose output it alone "
         "reads (millrace folds it into the convolution)");
  }
  const auto channels = static_cast<std::size_t>(conv->op.weight.shape[0]);
  const ConstTensor* params[4];
  const char* names[4] = {"scale", "B", "mean", "var"};
  for (int i = 0; i < 4; ++i) {
    params[i] = &const_input(node, i + 1);
    if (params[i]->size() != channels) {
      fail(node, std::string(names[i]) + " has shape " + shape_text(params[i]->shape) + ", not [" +
                     std::to_string(channels) + "]");
    }
  }
  const double epsilon = attrs.get_float("epsilon", 1e-5F);
  Op& op = conv->op;
  if (op.bias.shape.empty()) {
    op.bias = {{static_cast<std::int64_t>(channels)}, std::vector<float>(channels, 0.0F)};
  }
  const std::size_t per_channel = op.weight.data.size() / channels;
  for (std::size_t o = 0; o < channels; ++o) {
    const double variance = params[3]->at(o);
    if (variance + epsilon <= 0) fail(node, "variance + epsilon is not positive");
    const double factor = params[0]->at(o) / std::sqrt(variance + epsilon);
    float* w = op.weight.data.data() + o * per_channel;
    for (std::size_t i = 0; i < per_channel; ++i) {
      w[i] = static_cast<float>(w[i] * factor);
    }
    op.bias.data[o] =
        static_cast<float>((op.bias.data[o] - params[2]->at(o)) * factor + params[1]->at(o));
  }
  rename_output(*conv, node);
}

void Importer::lower_activation(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  float lo = 0.0F;
  float hi = kInf;
  if (node.op_type() == "Clip") {
    auto bound = [&](int index, float fallback) {
      if (!has_input(node, index)) return fallback;
      const ConstTensor& t = const_input(node, index);
      if (t.size() != 1) fail(node, "bound " + shape_text(t.shape) + " is not a scalar");
      return static_cast<float>(t.at(0));
    };
    lo = bound(1, -kInf);
    hi = bound(2, kInf);
    if (lo > hi) fail(node, "min is greater than max");
    if (lo == -kInf && hi == kInf) return alias_output(node, x);
  }
  Pending* producer = sole_producer(x, {OpKind::kConv, OpKind::kGemm, OpKind::kAdd});
  if (producer != nullptr) {
    Op& op = producer->op;
    float new_lo = lo;
    float new_hi = hi;
    if (op.activation != Activation::kNone) {
      // Clamping to [a, b] then to [lo, hi] is clamping to their intersection when they overlap.
      const float a = op.activation == Activation::kRelu ? 0.0F : op.clip_min;
      const float b = op.activation == Activation::kRelu ? kInf : op.clip_max;
      new_lo = std::max(a, lo);
      new_hi = std::min(b, hi);
      if (new_lo > new_hi) producer = nullptr;
    }
    if (producer != nullptr) {
      const bool relu = new_lo == 0.0F && new_hi == kInf;
      op.activation = relu ? Activation::kRelu : Activation::kClip;
      op.clip_min = relu ? 0.0F : new_lo;
      op.clip_max = relu ? 0.0F : new_hi;
      rename_output(*producer, node);
      return;
    }
  }
  const bool relu = lo == 0.0F && hi == kInf;
  Pending& p = emit(node, relu ? OpKind::kRelu : OpKind::kClip, {x}, shape_of(x));
  if (!relu) {
    p.op.clip_min = lo;
    p.op.clip_max = hi;
  }
}

void Importer::lower_add(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  if (!has_input(node, 0) || !has_input(node, 1)) fail(node, "needs two inputs");
  const std::string a = canonical(node.input(0));
  const std::string b = canonical(node.input(1));
  if (is_value(a) && is_value(b)) {
    if (shape_of(a) != shape_of(b)) {
      fail(node, "adds shapes " + shape_text(shape_of(a)) + " and " + shape_text(shape_of(b)) +
                     "; millrace adds only values of the same shape (no broadcasting)");
    }
    emit(node, OpKind::kAdd, {a, b}, shape_of(a));
    return;
  }
  // A constant added to a fully connected layer's output is its bias (MatMul + Add).
  const int value_index = is_value(a) ? 0 : 1;
  const std::string x = value_input(node, value_index);
  const ConstTensor& c = const_input(node, 1 - value_index);
  Pending* gemm = sole_producer(x, {OpKind::kGemm});
  if (gemm == nullptr || gemm->op.activation != Activation::kNone) {
    fail(node,
         "adding a constant is supported only as the bias of a Gemm or MatMul whose output it "
         "alone reads");
  }
  const auto outputs = static_cast<std::size_t>(gemm->op.weight.shape[0]);
  if (!is_bias_for(c, outputs)) {
    fail(node, "constant " + shape_text(c.shape) + " is not a bias for " + std::to_string(outputs) +
                   " outputs");
  }
  Op& op = gemm->op;
  if (op.bias.shape.empty()) {
    op.bias = {{static_cast<std::int64_t>(outputs)}, std::vector<float>(outputs, 0.0F)};
  }
  for (std::size_t o = 0; o < outputs; ++o) op.bias.data[o] += c.floats[c.size() == 1 ? 0 : o];
  rename_output(*gemm, node);
}

void Importer::lower_flatten(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  std::int64_t axis = attrs.get_int("axis", 1);
  if (axis < 0) axis += static_cast<std::int64_t>(in.size());
  if (axis != 1) {
    fail(node, "axis " + std::to_string(attrs.get_int("axis", 1)) +
                   "; millrace flattens only to [N, K] (axis 1)");
  }
  if (in.size() == 2) return alias_output(node, x);
  emit(node, OpKind::kFlatten, {x}, {1, element_count(in) / in[0]});
}

void Importer::lower_reshape(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"allowzero"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  const ConstTensor& target = const_input(node, 1);
  if (!target.integer) fail(node, "the shape input must be int64");
  const bool zero_copies = attrs.get_int("allowzero", 0) == 0;
  const std::int64_t features = element_count(in) / in[0];
  const std::string wanted = shape_text(target.ints);
  auto refuse = [&]() {
    fail(node, "reshapes to " + wanted +
                   "; millrace reshapes only to [N, -1] or [N, K] (a flatten, K = " +
                   std::to_string(features) + ")");
  };
  if (target.ints.size() != 2) refuse();
  std::int64_t n = target.ints[0];
  std::int64_t k = target.ints[1];
  if (k == 0 && zero_copies) k = in.size() > 1 ? in[1] : 0;
  const bool batch_kept =
      (n == 0 && zero_copies) || (n == -1 && k != -1) || (n > 0 && n == input_batch_);
  if (!batch_kept || (k != -1 && k != features)) refuse();
  if (in.size() == 2) return alias_output(node, x);
  emit(node, OpKind::kFlatten, {x}, {1, features});
}

void Importer::lower_gemm(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"alpha", "beta", "transA", "transB"});
  if (attrs.get_int("transA", 0) != 0) fail(node, "transA is not supported");
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 2) {
    fail(node, "input of shape " + shape_text(in) + "; Gemm needs a 2-D input (flatten first)");
  }
  const ConstTensor& b = const_input(node, 1);
  if (b.integer || b.shape.size() != 2) fail(node, "B must be a 2-D float constant");
  const bool trans_b = attrs.get_int("transB", 0) != 0;
  const std::int64_t k = trans_b ? b.shape[1] : b.shape[0];
  const std::int64_t o = trans_b ? b.shape[0] : b.shape[1];
  if (k != in[1]) {
    fail(node, "B " + shape_text(b.shape) + (trans_b ? " (transposed)" : "") +
                   " does not fit an input of shape " + shape_text(in));
  }
  const float alpha = attrs.get_float("alpha", 1.0F);
  const float beta = attrs.get_float("beta", 1.0F);
  Pending& p = emit(node, OpKind::kGemm, {x}, {1, o});
  p.op.weight.shape = {o, k};
  p.op.weight.data.resize(static_cast<std::size_t>(o * k));
  for (std::int64_t r = 0; r < o; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      const float v = trans_b ? b.floats[r * k + c] : b.floats[c * o + r];
      p.op.weight.data[r * k + c] = alpha * v;
    }
  }
  if (has_input(node, 2)) {
    const ConstTensor& c = const_input(node, 2);
    if (!is_bias_for(c, static_cast<std::size_t>(o))) {
      fail(node,
           "C " + shape_text(c.shape) + " is not a bias for " + std::to_string(o) + " outputs");
    }
    p.op.bias.shape = {o};
    for (std::int64_t r = 0; r < o; ++r) {
      p.op.bias.data.push_back(beta * c.floats[c.size() == 1 ? 0 : r]);
    }
  }
}

void Importer::lower_matmul(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 2) {
    fail(node, "input of shape " + shape_text(in) + "; MatMul needs a 2-D input (flatten first)");
  }
  const ConstTensor& b = const_input(node, 1);
  if (b.integer || b.shape.size() != 2 || b.shape[0] != in[1]) {
    fail(node, "the second input must be a constant [" + std::to_string(in[1]) + ", O], got " +
                   shape_text(b.shape));
  }
  const std::int64_t k = b.shape[0];
  const std::int64_t o = b.shape[1];
  Pending& p = emit(node, OpKind::kGemm, {x}, {1, o});
  p.op.weight.shape = {o, k};
  p.op.weight.data.resize(static_cast<std::size_t>(o * k));
  for (std::int64_t r = 0; r < o; ++r) {
    for (std::int64_t c = 0; c < k; ++c) p.op.weight.data[r * k + c] = b.floats[c * o + r];
  }
}

void Importer::lower_softmax(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  define(node, node.output(0));
  if (canonical(node.output(0)) != output_name_ || uses(node.output(0)) != 1) {
    fail(node,
         "Softmax is supported only as the graph's last operation (millrace reports the logits "
         "before it)");
  }
  std::int64_t axis = attrs.get_int("axis", opset_ >= 13 ? -1 : 1);
  if (axis < 0) axis += static_cast<std::int64_t>(in.size());
  if (in.size() != 2 || axis != 1) {
    fail(node, "Softmax over axis " + std::to_string(attrs.get_int("axis", opset_ >= 13 ? -1 : 1)) +
                   " of shape " + shape_text(in) +
                   "; millrace supports it over the classes of [N, K]");
  }
  logits_name_ = x;
  ends_with_softmax_ = true;
  shapes_[node.output(0)] = in;
}

void Importer::lower_concat(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  if (!attrs.has("axis")) fail(node, "axis is missing");
  std::vector<std::string> inputs;
  inputs.reserve(node.input_size());
  for (int i = 0; i < node.input_size(); ++i) inputs.push_back(value_input(node, i));
  if (inputs.empty()) fail(node, "has no inputs");
  Shape out = shape_of(inputs[0]);
  std::int64_t axis = attrs.get_int("axis", 1);
  if (axis < 0) axis += static_cast<std::int64_t>(out.size());
  if (axis != 1) {
    fail(node, "axis " + std::to_string(attrs.get_int("axis", 1)) +
                   "; millrace concatenates along channels (axis 1) only");
  }
  const Shape& first = shape_of(inputs[0]);
  for (std::size_t i = 1; i < inputs.size(); ++i) {
    const Shape& s = shape_of(inputs[i]);
    bool fits = s.size() == first.size();
    for (std::size_t d = 0; fits && d < s.size(); ++d) fits = d == 1 || s[d] == first[d];
    if (!fits) {
      fail(node, "input shapes " + shape_text(first) + " and " + shape_text(s) +
                     " differ outside axis 1");
    }
    out[1] += s[1];
  }
  if (inputs.size() == 1) return alias_output(node, inputs[0]);
  Pending& p = emit(node, OpKind::kConcat, std::move(inputs), out);
  p.op.axis = 1;
}

}  // namespace millrace::infer::onnx_front
