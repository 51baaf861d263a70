#include "stages/infer/builder.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace millrace::infer {
namespace {

using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;
using Dims = memory::dims;

std::int64_t product(const std::vector<std::int64_t>& v, std::size_t from = 0) {
  std::int64_t p = 1;
  for (std::size_t i = from; i < v.size(); ++i) p *= v[i];
  return p;
}

bool is_reference(std::string_view impl) { return impl.find("ref") != std::string_view::npos; }

Dt dnnl_type(DType type) {
  switch (type) {
    case DType::kInt8:
      return Dt::s8;
    case DType::kUInt8:
      return Dt::u8;
    case DType::kFloat32:
      break;
  }
  return Dt::f32;
}

// The same memory descriptor with another element type of the same size (u8 <-> s8): how the
// in-place sum reads an addend of the other signedness, and how a value keeps its layout when
// its type changes.
memory::desc with_type(const memory::desc& md, Dt type) {
  memory::desc out = md;
  out.data.data_type = memory::convert_to_c(type);
  return out;
}

dnnl::primitive_attr base_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

void append_activation(dnnl::post_ops& ops, const Op& op, float out_scale) {
  if (op.activation == Activation::kRelu) {
    ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_relu, 0.0F, 0.0F);
  } else if (op.activation == Activation::kClip) {
    // Post-ops run on the output's stored scale.
    ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_clip, op.clip_min * out_scale,
                       op.clip_max * out_scale);
  }
}

Dims dims_of(const Model& model, int value, int batch) {
  const auto& shape = model.value_shapes.at(value);
  Dims d(shape.begin(), shape.end());
  if (d.empty())
    throw ModelError(model.path + ": value " + std::to_string(value) + " has no shape");
  d[0] = batch;
  return d;
}

// The convolution's primitive descriptor; `*winograd` (when given) says whether it is the
// Winograd algorithm (asked for on the shapes where it pays, kept when oneDNN has a kernel).
dnnl::convolution_forward::primitive_desc conv_pd(const Model& model, const Op& op,
                                                  const memory::desc& src, const memory::desc& dst,
                                                  const dnnl::primitive_attr& attr,
                                                  bool allow_winograd, const dnnl::engine& engine,
                                                  bool* winograd = nullptr) {
  const auto& ws = op.weight.shape;
  if (ws.size() != 4 || op.groups < 1 || ws[0] % op.groups != 0) {
    throw ModelError(model_where(model, op) + ": Conv weights must be OIHW with O % groups == 0");
  }
  const Dims src_dims = src.dims();
  if (src_dims.size() != 4 || ws[1] * op.groups != src_dims[1]) {
    throw ModelError(model_where(model, op) + ": Conv weights do not match the input channels");
  }
  const Dt wtype = src.data_type() == Dt::f32 ? Dt::f32 : Dt::s8;
  const Dims wdims = op.groups == 1 ? Dims{ws[0], ws[1], ws[2], ws[3]}
                                    : Dims{op.groups, ws[0] / op.groups, ws[1], ws[2], ws[3]};
  const memory::desc w(wdims, wtype, Tag::any);
  const Dims strides{op.stride[0], op.stride[1]};
  const Dims dilation{op.dilation[0] - 1, op.dilation[1] - 1};
  const Dims pad_l{op.pads[0], op.pads[1]};
  const Dims pad_r{op.pads[2], op.pads[3]};
  const auto prop = dnnl::prop_kind::forward_inference;
  const auto make = [&](dnnl::algorithm alg) -> dnnl::convolution_forward::primitive_desc {
    if (!op.bias.data.empty()) {
      const memory::desc b({ws[0]}, Dt::f32, Tag::x);
      dnnl::convolution_forward::desc d(prop, alg, src, w, b, dst, strides, dilation, pad_l, pad_r);
      return {d, attr, engine};
    }
    dnnl::convolution_forward::desc d(prop, alg, src, w, dst, strides, dilation, pad_l, pad_r);
    return {d, attr, engine};
  };
  if (winograd != nullptr) *winograd = false;
  if (allow_winograd && wtype == Dt::s8 && op.groups == 1 && ws[2] == 3 && ws[3] == 3 &&
      strides == Dims{1, 1} && dilation == Dims{0, 0} && ws[1] >= kWinogradMinChannels) {
    try {
      auto pd = make(dnnl::algorithm::convolution_winograd);
      if (!is_reference(pd.impl_info_str())) {
        if (winograd != nullptr) *winograd = true;
        return pd;
      }
    } catch (const dnnl::error&) {
      // No Winograd kernel for this shape, type or post-op chain on this CPU: direct it is.
    }
  }
  return make(dnnl::algorithm::convolution_direct);
}

// The state of one value while compiling.
struct ValueState {
  int tensor = -1;
  memory::desc md;
  float scale = 1.0F;   // stored = real * scale (int8 values; 1 for f32 and channel-scaled ones)
  int zero_point = 0;   // the network input only
  int flatten_of = -1;  // a 2-D view of this 4-D value: read through Gemm or as the output
  bool ready = false;

  TensorView view() const { return TensorView{tensor, md}; }
};

class Builder {
 public:
  Builder(const Model& model, const Graph& graph, const ScalePlan& plan,
          const NetworkOptions& options, const dnnl::engine& engine, dnnl::stream& stream,
          bool observe)
      : model_(model),
        graph_(graph),
        plan_(plan),
        options_(options),
        engine_(engine),
        stream_(stream),
        int8_(plan.int8()),
        observe_(observe) {}

  std::unique_ptr<Program> build() {
    program_ = std::make_unique<Program>();
    states_.assign(model_.value_count(), ValueState{});
    unfused_adds_.assign(model_.ops.size(), false);
    add_input();
    for (int k = 0; k < static_cast<int>(model_.ops.size()); ++k) build_op(k);
    add_output();
    program_->finish(engine_, observe_, graph_.channel_ranged);
    return std::move(program_);
  }

 private:
  Dims dims_of(int value) const { return infer::dims_of(model_, value, options_.batch); }

  Dt type_of(int value) const { return dnnl_type(plan_.type(value)); }

  // The common tail of a builder: `op`'s output gets a tensor of its own in the primitive's
  // destination layout at `scale`, the new step writes it, and calibration observes it. Returns
  // the step, for the caller to bind the sources.
  Step& push_output_step(const Op& op, dnnl::primitive primitive,
                         const dnnl::primitive_desc_base& pd, std::string what, float scale) {
    ValueState dst;
    dst.md = pd.dst_desc();
    dst.tensor = program_->new_tensor(dst.md);
    dst.scale = scale;
    dst.ready = true;
    Step& step = program_->push_step(std::move(primitive), pd, std::move(what));
    program_->bind_view(step, DNNL_ARG_DST, dst.view());
    step.observed_value = op.output;
    states_[op.output] = dst;
    return step;
  }

  ValueState& state(int value, const Op& reader) {
    ValueState& s = states_.at(value);
    if (!s.ready) throw ModelError(model_where(model_, reader) + " reads an unknown value");
    if (s.flatten_of >= 0) {
      throw ModelError(model_where(model_, reader) + ": only Gemm may read a flattened 4-D tensor");
    }
    return s;
  }

  // `value` as `target` at `target_scale`: the value itself when it already is, else one reorder
  // (shared by every reader that asks for the same form).
  ValueState adapt(int value, const memory::desc& target, float target_scale) {
    ValueState s = states_.at(value);  // not const: returned, so moved
    if (s.md == target && s.scale == target_scale) return s;
    for (const auto& [key, cached] : adapted_) {
      if (key == value && cached.md == target && cached.scale == target_scale) return cached;
    }
    dnnl::primitive_attr attr = base_attr();
    const bool type_change = target.data_type() != s.md.data_type();
    if (target_scale != s.scale) attr.set_output_scales(0, {target_scale / s.scale});
    if (s.zero_point != 0 && type_change) attr.set_zero_points(DNNL_ARG_FROM, 0, {s.zero_point});
    dnnl::reorder::primitive_desc pd(engine_, s.md, engine_, target, attr);
    ValueState out;
    out.tensor = program_->new_tensor(target);
    out.md = target;
    out.scale = target_scale;
    out.zero_point = type_change ? 0 : s.zero_point;
    out.ready = true;
    Step& step =
        program_->push_step(dnnl::reorder(pd), pd,
                            "reorder " + std::string(value == model_.input ? "input" : "value ") +
                                (value == model_.input ? "" : std::to_string(value)));
    program_->bind_view(step, DNNL_ARG_FROM, s.view());
    program_->bind_view(step, DNNL_ARG_TO, out.view());
    ++program_->stats().reorders_per_batch;
    if (value == model_.input) ++program_->stats().input_reorders_per_batch;
    adapted_.emplace_back(value, out);
    return out;
  }

  memory constant(const memory::desc& md, const std::vector<float>& data) {
    memory m(md, engine_);
    std::memcpy(m.get_data_handle(), data.data(), data.size() * sizeof(float));
    return m;
  }

  // Plain f32 weights reordered once into the layout the primitive chose, quantized per output
  // channel on the way when `scales` is given (mask selects the output-channel dimensions).
  memory weights(const memory::desc& plain, const std::vector<float>& data,
                 const memory::desc& chosen, const std::vector<float>* scales, int mask) {
    memory source = constant(plain, data);
    memory target(chosen, engine_);
    dnnl::primitive_attr attr;
    if (scales != nullptr) attr.set_output_scales(mask, *scales);
    dnnl::reorder::primitive_desc pd(engine_, plain, engine_, chosen, attr);
    dnnl::reorder(pd).execute(stream_, source, target);
    stream_.wait();
    return target;
  }

  // ---- the input -----------------------------------------------------------------------------

  void add_input() {
    const Dims dims = dims_of(model_.input);
    const Tag tag = options_.input.layout == Layout::kNCHW ? Tag::nchw : Tag::nhwc;
    const memory::desc md(dims, dnnl_type(options_.input.type), tag);
    program_->set_input(md, options_.batch, engine_);
    ValueState& s = states_[model_.input];
    s.tensor = Program::kInputTensor;
    s.md = md;
    s.zero_point = input_zero_point(options_.input);
    s.ready = true;
  }

  // ---- ops -----------------------------------------------------------------------------------

  void build_op(int k) {
    const Op& op = model_.ops[k];
    switch (op.kind) {
      case OpKind::kConv:
        build_conv(k);
        break;
      case OpKind::kMaxPool:
      case OpKind::kAvgPool:
      case OpKind::kGlobalAvgPool:
        build_pool(op);
        break;
      case OpKind::kAdd:
        if (graph_.fused_conv[k] < 0 || unfused_adds_[k]) build_add(op);
        break;
      case OpKind::kRelu:
      case OpKind::kClip:
        build_eltwise(op);
        break;
      case OpKind::kGemm:
        build_gemm(op);
        break;
      case OpKind::kConcat:
        build_concat(op);
        break;
      case OpKind::kFlatten:
        build_flatten(op);
        break;
    }
  }

  struct ConvChoice {
    bool fused = false;
    bool winograd = false;
    int out = -1;
    float out_scale = 1.0F;
    dnnl::convolution_forward::primitive_desc pd;
  };

  void build_conv(int k) {
    const Op& op = model_.ops[k];
    const int add_k = graph_.sum_into[k];
    const int in = op.inputs.at(0);
    const ValueState src_state = state(in, op);
    const bool reads_input = in == model_.input;

    const Precision precision = int8_ ? Precision::kInt8 : Precision::kFp32;
    const Dt src_type =
        reads_input ? dnnl_type(input_source_type(options_.input, precision)) : type_of(in);
    const float src_scale = int8_ ? (reads_input ? plan_.scale(in) : src_state.scale) : 1.0F;
    // The loader's unit and the model's std (or a channel-scaled source's scales) are folded in.
    const LayerWeights lw = plan_.conv_weights(op, in, src_scale);

    auto choose = [&](bool fused) {
      ConvChoice c;
      c.fused = fused;
      const Op* add = fused ? &model_.ops[add_k] : nullptr;
      c.out = fused ? add->output : op.output;
      const std::vector<float>& by_channel = plan_.channel_scales(c.out);
      if (int8_ && !plan_.writes_f32(c.out) && by_channel.empty()) {
        c.out_scale = plan_.scale(c.out);
      }
      const Dt dst_type = type_of(c.out);
      dnnl::primitive_attr attr = base_attr();
      if (int8_) {
        attr.set_output_scales(1 << 1,
                               ScalePlan::output_scales(lw, src_scale, c.out_scale, by_channel));
        if (src_state.zero_point != 0) {
          attr.set_zero_points(DNNL_ARG_SRC, 0, {src_state.zero_point});
        }
      }
      dnnl::post_ops post;
      // A channel-ranged value's clip is the u8 or s8 saturation at its channels' limits, which
      // the plan never places beyond the clip (planner.hpp).
      if (by_channel.empty() || op.activation == Activation::kRelu) {
        append_activation(post, op, c.out_scale);
      }
      memory::desc dst_md(dims_of(c.out), dst_type, Tag::any);
      if (fused) {
        const ValueState& addend = state(graph_.sum_addend[add_k], *add);
        const Dt addend_type = addend.md.data_type();
        if (int8_) {
          // A channel-ranged addend shares the result's scales (its group's): a sum at 1.
          post.append_sum(by_channel.empty() ? c.out_scale / addend.scale : 1.0F,
                          addend_type != dst_type ? addend_type : Dt::undef);
        } else {
          post.append_sum(1.0F);
        }
        append_activation(post, *add, c.out_scale);
        dst_md = with_type(addend.md, dst_type);
      }
      attr.set_post_ops(post);
      c.pd = conv_pd(model_, op, memory::desc(dims_of(in), src_type, Tag::any), dst_md, attr,
                     options_.winograd, engine_, &c.winograd);
      return c;
    };
    // The residual add rides on the convolution unless that forces oneDNN onto its reference
    // kernel (the addend's layout fixes the output's, which some shapes cannot take) where the
    // plain convolution would not. Calibration never fuses: it records both addends' ranges, so
    // that either choice finds its scales in the table.
    ConvChoice choice = choose(add_k >= 0 && !observe_);
    if (choice.fused && is_reference(choice.pd.impl_info_str())) {
      ConvChoice plain = choose(false);
      if (!is_reference(plain.pd.impl_info_str())) choice = std::move(plain);
    }
    if (add_k >= 0 && !choice.fused) unfused_adds_[add_k] = true;
    const auto& pd = choice.pd;
    const ValueState src = adapt(in, pd.src_desc(), src_scale);

    const auto& ws = op.weight.shape;
    const memory::desc plain_w =
        op.groups == 1 ? memory::desc({ws[0], ws[1], ws[2], ws[3]}, Dt::f32, Tag::oihw)
                       : memory::desc({op.groups, ws[0] / op.groups, ws[1], ws[2], ws[3]}, Dt::f32,
                                      Tag::goihw);
    memory w_mem = weights(plain_w, lw.weights, pd.weights_desc(), int8_ ? &lw.scales : nullptr,
                           op.groups == 1 ? 1 : 3);

    ValueState dst;
    dst.md = pd.dst_desc();
    dst.tensor =
        choice.fused ? states_.at(graph_.sum_addend[add_k]).tensor : program_->new_tensor(dst.md);
    dst.scale = choice.out_scale;
    dst.ready = true;

    std::string what = "conv '" + op.name + "'";
    if (choice.fused) what += " + add '" + model_.ops[add_k].name + "'";
    Step& step = program_->push_step(dnnl::convolution_forward(pd), pd, what);
    program_->bind_view(step, DNNL_ARG_SRC, src.view());
    program_->bind_view(step, DNNL_ARG_DST, dst.view());
    step.args[DNNL_ARG_WEIGHTS] = w_mem;
    if (!lw.bias.empty()) step.args[DNNL_ARG_BIAS] = constant(pd.bias_desc(), lw.bias);
    step.observed_value = choice.out;
    if (reads_input) program_->mark_first_convolution();
    if (choice.fused) ++program_->stats().fused_adds;
    if (choice.winograd) ++program_->stats().winograd_convolutions;
    states_[choice.out] = dst;
  }

  void build_pool(const Op& op) {
    const int in = op.inputs.at(0);
    const ValueState src = state(in, op);
    const Dims in_dims = src.md.dims();
    const Dims out_dims = dims_of(op.output);
    if (in_dims.size() != 4 || out_dims.size() != 4) {
      throw ModelError(model_where(model_, op) + ": pooling needs 4-D tensors");
    }
    Dims kernel{op.kernel[0], op.kernel[1]};
    Dims strides{op.stride[0], op.stride[1]};
    Dims dilation{op.dilation[0] - 1, op.dilation[1] - 1};
    Dims pad_l{op.pads[0], op.pads[1]};
    Dims pad_r{op.pads[2], op.pads[3]};
    auto alg = dnnl::algorithm::pooling_max;
    if (op.kind == OpKind::kGlobalAvgPool) {
      alg = dnnl::algorithm::pooling_avg_exclude_padding;
      kernel = {in_dims[2], in_dims[3]};
      strides = {1, 1};
      dilation = {0, 0};
      pad_l = {0, 0};
      pad_r = {0, 0};
    } else if (op.kind == OpKind::kAvgPool) {
      alg = op.count_include_pad ? dnnl::algorithm::pooling_avg_include_padding
                                 : dnnl::algorithm::pooling_avg_exclude_padding;
    }
    // ceil_mode: oneDNN derives nothing from a rounding mode, only from the padding, so the
    // right/bottom padding grows until the importer's output size comes out.
    for (int d = 0; d < 2; ++d) {
      const auto extent = (kernel[d] - 1) * (dilation[d] + 1) + 1;
      if ((in_dims[2 + d] + pad_l[d] + pad_r[d] - extent) / strides[d] + 1 != out_dims[2 + d]) {
        pad_r[d] = (out_dims[2 + d] - 1) * strides[d] + extent - in_dims[2 + d] - pad_l[d];
        // Counting padding, oneDNN would divide the last window by the whole kernel where
        // PyTorch divides by the part inside the declared padding: refuse rather than differ.
        if (alg == dnnl::algorithm::pooling_avg_include_padding) {
          throw ModelError(model_where(model_, op) +
                           ": AveragePool with ceil_mode and count_include_pad whose last window "
                           "passes the padding is not supported");
        }
      }
    }
    const memory::desc dst_md(out_dims, src.md.data_type(), Tag::any);
    dnnl::pooling_v2_forward::desc d(dnnl::prop_kind::forward_inference, alg, src.md, dst_md,
                                     strides, kernel, dilation, pad_l, pad_r);
    dnnl::pooling_v2_forward::primitive_desc pd(d, base_attr(), engine_);
    Step& step =
        push_output_step(op, dnnl::pooling_v2_forward(pd), pd, "pool '" + op.name + "'", src.scale);
    program_->bind_view(step, DNNL_ARG_SRC, src.view());
  }

  // A fused Add that runs on its own reads and writes its group's scales (all three values stored
  // at scale 1): the binary adds the stored values as they are.
  void build_add(const Op& op) {
    if (op.inputs.size() != 2) throw ModelError(model_where(model_, op) + ": Add needs 2 inputs");
    const ValueState a = state(op.inputs[0], op);
    const ValueState b_state = state(op.inputs[1], op);
    if (a.md.dims() != b_state.md.dims()) {
      throw ModelError(model_where(model_, op) + ": Add inputs differ in shape");
    }
    const ValueState b =
        adapt(op.inputs[1], with_type(a.md, b_state.md.data_type()), b_state.scale);
    const Dt dst_type = type_of(op.output);
    const float out_scale = plan_.scale(op.output);
    dnnl::primitive_attr attr = base_attr();
    if (int8_) {
      attr.set_scales(DNNL_ARG_SRC_0, 0, {out_scale / a.scale});
      attr.set_scales(DNNL_ARG_SRC_1, 0, {out_scale / b.scale});
    }
    dnnl::post_ops post;
    append_activation(post, op, out_scale);
    attr.set_post_ops(post);
    dnnl::binary::desc d(dnnl::algorithm::binary_add, a.md, b.md,
                         memory::desc(a.md.dims(), dst_type, Tag::any));
    dnnl::binary::primitive_desc pd(d, attr, engine_);
    Step& step = push_output_step(op, dnnl::binary(pd), pd, "add '" + op.name + "'", out_scale);
    program_->bind_view(step, DNNL_ARG_SRC_0, a.view());
    program_->bind_view(step, DNNL_ARG_SRC_1, b.view());
  }

  void build_eltwise(const Op& op) {
    const ValueState src = state(op.inputs.at(0), op);
    dnnl::algorithm alg = dnnl::algorithm::eltwise_relu;
    float alpha = 0.0F;
    float beta = 0.0F;
    if (op.kind == OpKind::kClip) {
      alg = dnnl::algorithm::eltwise_clip;
      alpha = op.clip_min * src.scale;
      beta = op.clip_max * src.scale;
    }
    if (int8_ && op.kind == OpKind::kClip) {
      // oneDNN 2.6 has no int8 clip primitive; a binary add of a zero scalar computes in f32 and
      // takes the clip as a post-op.
      const Dims ones(src.md.data.ndims, 1);
      const memory::desc zero_md(ones, Dt::s8, ones);  // a scalar: all strides 1
      dnnl::primitive_attr attr = base_attr();
      dnnl::post_ops post;
      post.append_eltwise(1.0F, alg, alpha, beta);
      attr.set_post_ops(post);
      dnnl::binary::desc d(dnnl::algorithm::binary_add, src.md, zero_md,
                           memory::desc(src.md.dims(), src.md.data_type(), Tag::any));
      dnnl::binary::primitive_desc pd(d, attr, engine_);
      memory zero(zero_md, engine_);
      std::memset(zero.get_data_handle(), 0, zero_md.get_size());
      Step& step = push_output_step(op, dnnl::binary(pd), pd, "clip '" + op.name + "'", src.scale);
      program_->bind_view(step, DNNL_ARG_SRC_0, src.view());
      step.args[DNNL_ARG_SRC_1] = zero;
      return;
    }
    dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, alg, src.md, alpha, beta);
    dnnl::eltwise_forward::primitive_desc pd(d, base_attr(), engine_);
    Step& step =
        push_output_step(op, dnnl::eltwise_forward(pd), pd, "eltwise '" + op.name + "'", src.scale);
    program_->bind_view(step, DNNL_ARG_SRC, src.view());
  }

  void build_gemm(const Op& op) {
    const int in = op.inputs.at(0);
    const ValueState& view = states_.at(in);
    if (!view.ready) throw ModelError(model_where(model_, op) + " reads an unknown value");
    const int source = view.flatten_of >= 0 ? view.flatten_of : in;
    const ValueState src_state = states_.at(source);
    const Dims src_dims = src_state.md.dims();
    const auto& ws = op.weight.shape;
    if (ws.size() != 2 || static_cast<std::int64_t>(op.weight.data.size()) != product(ws) ||
        ws[1] != product(std::vector<std::int64_t>(src_dims.begin(), src_dims.end()), 1)) {
      throw ModelError(model_where(model_, op) + ": Gemm weights must be [outputs, inputs]");
    }
    const int channels = static_cast<int>(ws[0]);
    if (!op.bias.data.empty() && static_cast<int>(op.bias.data.size()) != channels) {
      throw ModelError(model_where(model_, op) + ": Gemm bias does not match its outputs");
    }
    // A Gemm after a flattened NCHW map reads the map as it is, with the weights seen as OIHW.
    Dims wdims{ws[0], ws[1]};
    Tag wtag = Tag::oi;
    if (src_dims.size() == 4) {
      wdims = {ws[0], src_dims[1], src_dims[2], src_dims[3]};
      wtag = Tag::oihw;
    } else if (src_dims.size() != 2) {
      throw ModelError(model_where(model_, op) + ": Gemm needs a 2-D or flattened 4-D input");
    }
    const Dt src_type = int8_ ? src_state.md.data_type() : Dt::f32;
    const Dt dst_type = type_of(op.output);
    const float src_scale = src_state.scale;
    const float out_scale = int8_ && !plan_.writes_f32(op.output) ? plan_.scale(op.output) : 1.0F;
    const LayerWeights lw = plan_.gemm_weights(op, src_scale);
    dnnl::primitive_attr attr = base_attr();
    if (int8_) {
      attr.set_output_scales(1 << 1, ScalePlan::output_scales(lw, src_scale, out_scale, {}));
    }
    dnnl::post_ops post;
    append_activation(post, op, out_scale);
    attr.set_post_ops(post);

    const memory::desc w_any(wdims, int8_ ? Dt::s8 : Dt::f32, Tag::any);
    const memory::desc dst_any({options_.batch, ws[0]}, dst_type, Tag::any);
    const memory::desc b_md({ws[0]}, Dt::f32, Tag::x);
    auto make = [&](const memory::desc& src) {
      const auto prop = dnnl::prop_kind::forward_inference;
      if (lw.bias.empty()) {
        return dnnl::inner_product_forward::primitive_desc(
            dnnl::inner_product_forward::desc(prop, src, w_any, dst_any), attr, engine_);
      }
      return dnnl::inner_product_forward::primitive_desc(
          dnnl::inner_product_forward::desc(prop, src, w_any, b_md, dst_any), attr, engine_);
    };
    // Reading the producer's layout as it is avoids a reorder; a free layout is the fallback.
    dnnl::inner_product_forward::primitive_desc pd;
    bool have = false;
    if (src_state.md.data_type() == src_type) {
      try {
        pd = make(src_state.md);
        have = !is_reference(pd.impl_info_str());
      } catch (const dnnl::error&) {
        have = false;
      }
    }
    if (!have) pd = make(memory::desc(src_dims, src_type, Tag::any));
    const ValueState src = adapt(source, pd.src_desc(), int8_ ? src_scale : 1.0F);
    memory w_mem = weights(memory::desc(wdims, Dt::f32, wtag), lw.weights, pd.weights_desc(),
                           int8_ ? &lw.scales : nullptr, 1);
    Step& step = push_output_step(op, dnnl::inner_product_forward(pd), pd, "gemm '" + op.name + "'",
                                  out_scale);
    program_->bind_view(step, DNNL_ARG_SRC, src.view());
    step.args[DNNL_ARG_WEIGHTS] = w_mem;
    if (!lw.bias.empty()) step.args[DNNL_ARG_BIAS] = constant(b_md, lw.bias);
  }

  void build_concat(const Op& op) {
    if (op.inputs.empty()) throw ModelError(model_where(model_, op) + ": Concat has no inputs");
    const Dt dst_type = type_of(op.output);
    const float out_scale = plan_.scale(op.output);
    std::vector<ValueState> srcs;
    std::vector<memory::desc> mds;
    for (int v : op.inputs) {
      const ValueState s = state(v, op);
      srcs.push_back(adapt(v, with_type(s.md, dst_type), out_scale));
      mds.push_back(srcs.back().md);
    }
    const int ndims = mds.front().data.ndims;
    const int axis = op.axis < 0 ? op.axis + ndims : op.axis;
    if (axis < 0 || axis >= ndims) throw ModelError(model_where(model_, op) + ": bad Concat axis");
    dnnl::concat::primitive_desc pd(axis, mds, engine_, base_attr());
    Step& step = push_output_step(op, dnnl::concat(pd), pd, "concat '" + op.name + "'", out_scale);
    for (std::size_t i = 0; i < srcs.size(); ++i) {
      program_->bind_view(step, DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i), srcs[i].view());
    }
  }

  void build_flatten(const Op& op) {
    const int in = op.inputs.at(0);
    ValueState s = states_.at(in);
    if (!s.ready) throw ModelError(model_where(model_, op) + " reads an unknown value");
    if (s.flatten_of < 0 && s.md.data.ndims != 2) s.flatten_of = in;
    states_[op.output] = s;
  }

  // The logits as plain f32 rows, dequantized by the reorder when int8 ends in another layer.
  void add_output() {
    const ValueState& view = states_.at(model_.output);
    if (!view.ready) throw ModelError(model_.path + ": the output value is never computed");
    const int source = view.flatten_of >= 0 ? view.flatten_of : model_.output;
    const ValueState& s = states_.at(source);
    const ValueState out = adapt(source, plain_f32(s.md.dims()), 1.0F);
    const Dims dims = out.md.dims();
    std::int64_t classes = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) classes *= dims[i];
    program_->set_output(out.view(), static_cast<int>(classes));
  }

  const Model& model_;
  const Graph& graph_;
  const ScalePlan& plan_;
  const NetworkOptions& options_;
  const dnnl::engine& engine_;
  dnnl::stream& stream_;
  const bool int8_;
  const bool observe_;
  std::unique_ptr<Program> program_;
  std::vector<ValueState> states_;
  std::vector<std::pair<int, ValueState>> adapted_;
  std::vector<bool> unfused_adds_;  // per op: an Add the analysis fused that runs on its own
};

}  // namespace

std::unique_ptr<Program> build_program(const Model& model, const Graph& graph,
                                       const ScalePlan& plan, const NetworkOptions& options,
                                       const dnnl::engine& engine, dnnl::stream& stream,
                                       bool observe) {
  return Builder(model, graph, plan, options, engine, stream, observe).build();
}

Layout probe_input_layout(const Model& model, const Graph& graph, const NetworkOptions& options,
                          const dnnl::engine& engine) {
  const bool int8 = options.precision == Precision::kInt8;
  const int k = graph.consumers[model.input].front();
  const Op& op = model.ops[k];
  const Dt src_type = dnnl_type(input_source_type(options.input, options.precision));
  const int out = graph.sum_into[k] >= 0 ? model.ops[graph.sum_into[k]].output : op.output;
  const Dt dst_type = int8 ? (graph.is_unsigned[out] ? Dt::u8 : Dt::s8) : Dt::f32;
  dnnl::primitive_attr attr;
  if (int8) {
    attr.set_output_scales(1 << 1, std::vector<float>(op.weight.shape.at(0), 1.0F));
    const int zero_point = input_zero_point(options.input);
    if (zero_point != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {zero_point});
  }
  const Dims src_dims = dims_of(model, model.input, options.batch);
  auto pd = conv_pd(model, op, memory::desc(src_dims, src_type, Tag::any),
                    memory::desc(dims_of(model, out, options.batch), dst_type, Tag::any), attr,
                    options.winograd, engine);
  return pd.src_desc() == memory::desc(src_dims, src_type, Tag::nchw) ? Layout::kNCHW
                                                                      : Layout::kNHWC;
}

}  // namespace millrace::infer
