#include "stages/infer/network.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stages/infer/calibration.hpp"
#include "stages/infer/graph_analysis.hpp"

namespace millrace::infer {
namespace {

using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;
using Dims = memory::dims;

constexpr int kNever = std::numeric_limits<int>::max();
constexpr int kInputTensor = 0;

std::int64_t product(const std::vector<std::int64_t>& v, std::size_t from = 0) {
  std::int64_t p = 1;
  for (std::size_t i = from; i < v.size(); ++i) p *= v[i];
  return p;
}

bool is_reference(std::string_view impl) { return impl.find("ref") != std::string_view::npos; }

// The same memory descriptor with another element type of the same size (u8 <-> s8): how the
// in-place sum reads an addend of the other signedness, and how a value keeps its layout when
// its type changes.
memory::desc with_type(const memory::desc& md, Dt type) {
  memory::desc out = md;
  out.data.data_type = memory::convert_to_c(type);
  return out;
}

memory::desc plain_f32(const Dims& dims) {
  Dims strides(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i)
    strides[i] = strides[i + 1] * dims[i + 1];
  return memory::desc(dims, Dt::f32, strides);
}

// ---------------------------------------------------------------------------------------------
// A compiled network: primitives in execution order, bound to arena buffers.

struct TensorView {
  int tensor = -1;
  memory::desc md;
};

struct Step {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  std::vector<std::pair<int, TensorView>> views;  // activations, bound to arenas at the end
  std::unordered_map<int, memory> args;           // complete argument list once bound
  std::string line;
  int observed_value = -1;  // value whose range calibration records after this step
};

struct Tensor {
  std::size_t bytes = 0;
  int first = kNever;
  int last = -1;
  int buffer = -1;
};

struct Observation {
  int step = -1;
  int value = -1;
  memory source;  // the step's output
  memory plain;   // the same values as plain f32 (the source itself when already plain)
  dnnl::reorder to_plain;
  bool needs_reorder = false;
  std::size_t sample_elements = 0;
};

struct Program {
  std::vector<Step> steps;
  std::vector<Tensor> tensors;
  std::vector<memory> buffers;
  memory scratchpad;
  memory input;         // bound to the caller's batch (or padded_input) in each run
  memory padded_input;  // a whole batch, for a smaller last batch
  std::size_t input_sample_bytes = 0;
  int first_conv_step = -1;
  memory output;  // plain f32 logits of the whole batch
  int classes = 0;
  NetworkStats stats;
  std::vector<Observation> observations;
};

// The state of one value while compiling.
struct ValueState {
  int tensor = -1;
  memory::desc md;
  float scale = 1.0F;  // stored = real * scale (int8 values; 1 for f32)
  // When not empty, stored = real * channel_scale[c] channel by channel (and scale is 1): the
  // convolutions reading it fold 1 / channel_scale[c] into their weights per input channel.
  std::vector<float> channel_scale;
  int zero_point = 0;   // the network input only
  int flatten_of = -1;  // a 2-D view of this 4-D value: read through Gemm or as the output
  bool ready = false;
};

class Builder {
 public:
  Builder(const Model& model, const Graph& graph, const NetworkOptions& options,
          const dnnl::engine& engine, dnnl::stream& stream, Precision precision,
          const CalibrationTable* table, bool observe)
      : model_(model),
        graph_(graph),
        options_(options),
        engine_(engine),
        stream_(stream),
        int8_(precision == Precision::kInt8),
        table_(table),
        observe_(observe),
        fold_(fold_factors(model, options.input)) {}

  std::unique_ptr<Program> build() {
    program_ = std::make_unique<Program>();
    states_.assign(model_.value_count(), ValueState{});
    unfused_adds_.assign(model_.ops.size(), false);
    if (int8_) {
      plan_scales();
      plan_channel_scales();
    }
    add_input();
    for (int k = 0; k < static_cast<int>(model_.ops.size()); ++k) build_op(k);
    add_output();
    allocate();
    if (observe_) prepare_observations();
    program_->stats.primitives = program_->steps.size();
    return std::move(program_);
  }

  // The layout the first convolution picks for the network input when left free.
  InputLayout probe_input_layout() {
    const int k = graph_.consumers[model_.input].front();
    const Op& op = model_.ops[k];
    const Dt src_type = source_type_for_input();
    const int out = graph_.sum_into[k] >= 0 ? model_.ops[graph_.sum_into[k]].output : op.output;
    const Dt dst_type = int8_ ? (graph_.is_unsigned[out] ? Dt::u8 : Dt::s8) : Dt::f32;
    dnnl::primitive_attr attr;
    if (int8_) {
      attr.set_output_scales(1 << 1, std::vector<float>(op.weight.shape.at(0), 1.0F));
      if (input_zero_point() != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {input_zero_point()});
    }
    const Dims src_dims = dims_of(model_.input);
    auto pd = conv_pd(op, memory::desc(src_dims, src_type, Tag::any),
                      memory::desc(dims_of(out), dst_type, Tag::any), attr);
    return pd.src_desc() == memory::desc(src_dims, src_type, Tag::nchw) ? InputLayout::kNCHW
                                                                        : InputLayout::kNHWC;
  }

 private:
  // ---- planning ------------------------------------------------------------------------------

  Dims dims_of(int value) const {
    const auto& shape = model_.value_shapes.at(value);
    Dims d(shape.begin(), shape.end());
    if (d.empty())
      throw ModelError(model_.path + ": value " + std::to_string(value) + " has no shape");
    d[0] = options_.batch;
    return d;
  }

  Dt source_type_for_input() const {
    if (!int8_) return Dt::f32;
    switch (options_.input.type) {
      case InputType::kU8:
        return Dt::u8;
      case InputType::kS8:
      case InputType::kF32:
        return Dt::s8;
    }
    return Dt::s8;
  }

  int input_zero_point() const {
    const float z = options_.input.zero_point;
    if (options_.input.type == InputType::kF32) {
      if (z != 0.0F) {
        throw std::invalid_argument("infer: float32 input cannot carry a zero point");
      }
      return 0;
    }
    const float low = options_.input.type == InputType::kU8 ? 0.0F : -128.0F;
    const float high = options_.input.type == InputType::kU8 ? 255.0F : 127.0F;
    if (std::nearbyint(z) != z || z < low || z > high) {
      throw std::invalid_argument(
          "infer: the input zero point must be an integer in the input "
          "type's range");
    }
    return static_cast<int>(z);
  }

  float range_scale(int value, bool is_unsigned) const {
    const ValueRange* r = table_ != nullptr ? table_->find(value) : nullptr;
    if (r == nullptr) {
      const int k = graph_.producer[value];
      throw CalibrationError("infer: the calibration table has no range for value " +
                             std::to_string(value) +
                             (k >= 0 ? " (output of '" + model_.ops[k].name + "')" : " (input)"));
    }
    const float limit = is_unsigned ? r->max : std::max(std::fabs(r->min), std::fabs(r->max));
    const float scale = (is_unsigned ? 255.0F : 127.0F) / limit;
    return limit > 0.0F && std::isfinite(scale) ? scale : 1.0F;
  }

  // Per-value type and scale of the int8 network. Values whose scale depends on a later choice
  // (a convolution's output, which a fused Add replaces) get theirs when they are built.
  void plan_scales() {
    const int n = model_.value_count();
    unsigned_ = graph_.is_unsigned;
    scale_.assign(n, std::numeric_limits<float>::quiet_NaN());
    f32_out_.assign(n, false);
    if (options_.input.type == InputType::kF32) {
      scale_[model_.input] = range_scale(model_.input, false);
    } else {
      scale_[model_.input] = 1.0F;
    }
    for (int k = 0; k < static_cast<int>(model_.ops.size()); ++k) {
      const Op& op = model_.ops[k];
      switch (op.kind) {
        case OpKind::kConv:
        case OpKind::kGemm:
          // The logits leave the last layer as f32.
          if (op.output == model_.output) f32_out_[op.output] = true;
          break;
        case OpKind::kAdd:
        case OpKind::kConcat:
          scale_[op.output] = range_scale(op.output, unsigned_[op.output]);
          break;
        default:  // scale-preserving ops take theirs from the value they read, when it is built
          break;
      }
    }
    // oneDNN's concat copies bytes: every input must already have the concat's type and scale.
    // A convolution or Gemm read only by the concat writes them directly; others get a reorder.
    for (int k = 0; k < static_cast<int>(model_.ops.size()); ++k) {
      const Op& op = model_.ops[k];
      if (op.kind != OpKind::kConcat) continue;
      for (int v : op.inputs) {
        const int p = graph_.producer[v];
        if (p < 0 || graph_.consumers[v].size() != 1 || graph_.sum_into[p] >= 0) continue;
        const OpKind kind = model_.ops[p].kind;
        if (kind != OpKind::kConv && kind != OpKind::kGemm) continue;
        unsigned_[v] = unsigned_[op.output];
        scale_[v] = scale_[op.output];
      }
    }
  }

  // The per-channel scales of the values calibration gave channel limits for (when the option
  // is on): levels / limit per channel, each limit kept within the producer's clip so that the
  // type's saturation is the clip.
  void plan_channel_scales() {
    const int n = model_.value_count();
    channel_scale_.assign(n, {});
    if (!options_.channel_ranges || table_ == nullptr) return;
    std::vector<std::vector<int>> groups(n);
    for (int v = 0; v < n; ++v) {
      if (graph_.channel_group[v] >= 0) groups[graph_.channel_group[v]].push_back(v);
    }
    for (const std::vector<int>& group : groups) {
      if (group.empty()) continue;
      const auto channels = static_cast<std::size_t>(model_.value_shapes[group[0]][1]);
      // Every member's limit per channel, the largest of them where a group shares its scales.
      std::vector<float> limits(channels, 0.0F);
      bool complete = true;
      for (int v : group) {
        const ValueRange* r = table_->find(v);
        complete = complete && r != nullptr && r->channels.size() == channels;
        if (!complete) break;
        for (std::size_t c = 0; c < channels; ++c) limits[c] = std::max(limits[c], r->channels[c]);
      }
      if (!complete) continue;
      const Op& op = model_.ops[graph_.producer[group[0]]];
      const float levels = unsigned_[group[0]] ? 255.0F : 127.0F;
      // A channel whose limit is a millionth of the largest carries less than the others'
      // rounding: its scale is bounded there, so that neither its scale nor the reader's weight
      // divided by it leaves the float range.
      float largest = 0.0F;
      for (float l : limits) largest = std::max(largest, l);
      std::vector<float> scales(channels);
      for (std::size_t c = 0; c < channels; ++c) {
        float limit = std::max(limits[c], largest * 1e-6F);
        if (op.activation == Activation::kClip) limit = std::min(limit, op.clip_max);
        const float scale = levels / limit;
        scales[c] = limit > 0.0F && std::isfinite(scale) ? scale : 1.0F;
      }
      for (int v : group) {
        channel_scale_[v] = scales;
        scale_[v] = 1.0F;
      }
    }
  }

  float planned_scale(int value) {
    if (std::isnan(scale_[value])) scale_[value] = range_scale(value, unsigned_[value]);
    return scale_[value];
  }

  Dt type_of(int value) const {
    if (!int8_ || f32_out_[value]) return Dt::f32;
    return unsigned_[value] ? Dt::u8 : Dt::s8;
  }

  // ---- tensors and steps ---------------------------------------------------------------------

  int step_index() const { return static_cast<int>(program_->steps.size()); }

  int new_tensor(const memory::desc& md) {
    Tensor t;
    t.bytes = md.get_size();
    program_->tensors.push_back(t);
    return static_cast<int>(program_->tensors.size()) - 1;
  }

  void use(int tensor, int step) {
    Tensor& t = program_->tensors[tensor];
    t.first = std::min(t.first, step);
    t.last = std::max(t.last, step);
  }

  Step& push_step(dnnl::primitive primitive, const dnnl::primitive_desc_base& pd,
                  std::string what) {
    Step s;
    s.primitive = std::move(primitive);
    s.scratchpad = pd.scratchpad_desc();
    s.line = std::move(what) + " [" + pd.impl_info_str() + "]";
    program_->steps.push_back(std::move(s));
    return program_->steps.back();
  }

  void bind_view(Step& step, int arg, const ValueState& v) {
    step.views.emplace_back(arg, TensorView{v.tensor, v.md});
    use(v.tensor, static_cast<int>(&step - program_->steps.data()));
  }

  // The common tail of a builder: `op`'s output gets a tensor of its own in the primitive's
  // destination layout at `scale`, the new step writes it, and calibration observes it. Returns
  // the step, for the caller to bind the sources.
  Step& push_output_step(const Op& op, dnnl::primitive primitive,
                         const dnnl::primitive_desc_base& pd, std::string what, float scale) {
    ValueState dst;
    dst.md = pd.dst_desc();
    dst.tensor = new_tensor(dst.md);
    dst.scale = scale;
    dst.ready = true;
    Step& step = push_step(std::move(primitive), pd, std::move(what));
    bind_view(step, DNNL_ARG_DST, dst);
    step.observed_value = op.output;
    states_[op.output] = dst;
    return step;
  }

  static dnnl::primitive_attr base_attr() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
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
    out.tensor = new_tensor(target);
    out.md = target;
    out.scale = target_scale;
    out.zero_point = type_change ? 0 : s.zero_point;
    out.ready = true;
    Step& step = push_step(dnnl::reorder(pd), pd,
                           "reorder " + std::string(value == model_.input ? "input" : "value ") +
                               (value == model_.input ? "" : std::to_string(value)));
    bind_view(step, DNNL_ARG_FROM, s);
    bind_view(step, DNNL_ARG_TO, out);
    ++program_->stats.reorders_per_batch;
    if (value == model_.input) ++program_->stats.input_reorders_per_batch;
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

  void append_activation(dnnl::post_ops& ops, const Op& op, float out_scale) const {
    if (op.activation == Activation::kRelu) {
      ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_relu, 0.0F, 0.0F);
    } else if (op.activation == Activation::kClip) {
      // Post-ops run on the output's stored scale.
      ops.append_eltwise(1.0F, dnnl::algorithm::eltwise_clip, op.clip_min * out_scale,
                         op.clip_max * out_scale);
    }
  }

  static std::vector<float> per_channel_scales(const std::vector<float>& w, int channels) {
    const std::size_t per = w.size() / channels;
    std::vector<float> scales(channels);
    for (int oc = 0; oc < channels; ++oc) {
      float m = 0.0F;
      for (std::size_t i = 0; i < per; ++i) m = std::max(m, std::fabs(w[oc * per + i]));
      scales[oc] = m > 0.0F ? 127.0F / m : 1.0F;
    }
    return scales;
  }

  // ---- the input -----------------------------------------------------------------------------

  void add_input() {
    const Dims dims = dims_of(model_.input);
    Dt type = Dt::f32;
    if (options_.input.type == InputType::kS8) type = Dt::s8;
    if (options_.input.type == InputType::kU8) type = Dt::u8;
    const Tag tag = options_.input.layout == InputLayout::kNCHW ? Tag::nchw : Tag::nhwc;
    const memory::desc md(dims, type, tag);
    program_->tensors.push_back(Tensor{});  // kInputTensor: the caller's buffer, never an arena
    program_->input = memory(md, engine_, DNNL_MEMORY_NONE);
    program_->padded_input = memory(md, engine_);
    std::memset(program_->padded_input.get_data_handle(), 0, md.get_size());
    program_->input_sample_bytes = md.get_size() / static_cast<std::size_t>(options_.batch);
    ValueState& s = states_[model_.input];
    s.tensor = kInputTensor;
    s.md = md;
    s.zero_point = input_zero_point();
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

  // The convolution's primitive descriptor; `*winograd` (when given) says whether it is the
  // Winograd algorithm (asked for on the shapes where it pays, kept when oneDNN has a kernel).
  dnnl::convolution_forward::primitive_desc conv_pd(const Op& op, const memory::desc& src,
                                                    const memory::desc& dst,
                                                    const dnnl::primitive_attr& attr,
                                                    bool* winograd = nullptr) const {
    const auto& ws = op.weight.shape;
    if (ws.size() != 4 || op.groups < 1 || ws[0] % op.groups != 0) {
      throw ModelError(model_where(model_, op) +
                       ": Conv weights must be OIHW with O % groups == 0");
    }
    const Dims src_dims = src.dims();
    if (src_dims.size() != 4 || ws[1] * op.groups != src_dims[1]) {
      throw ModelError(model_where(model_, op) + ": Conv weights do not match the input channels");
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
        dnnl::convolution_forward::desc d(prop, alg, src, w, b, dst, strides, dilation, pad_l,
                                          pad_r);
        return {d, attr, engine_};
      }
      dnnl::convolution_forward::desc d(prop, alg, src, w, dst, strides, dilation, pad_l, pad_r);
      return {d, attr, engine_};
    };
    if (winograd != nullptr) *winograd = false;
    if (options_.winograd && wtype == Dt::s8 && op.groups == 1 && ws[2] == 3 && ws[3] == 3 &&
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

    const Dt src_type = reads_input ? source_type_for_input() : (int8_ ? type_of(in) : Dt::f32);
    const float src_scale = int8_ ? (reads_input ? scale_[in] : src_state.scale) : 1.0F;
    const int channels = static_cast<int>(op.weight.shape.at(0));
    const std::vector<float>* in_channel_fold = reads_input ? &fold_ : nullptr;
    std::vector<float> unscale;
    if (int8_ && !reads_input && !src_state.channel_scale.empty()) {
      unscale.resize(src_state.channel_scale.size());
      for (std::size_t c = 0; c < unscale.size(); ++c)
        unscale[c] = 1.0F / src_state.channel_scale[c];
      in_channel_fold = &unscale;
    }

    // The loader's unit and the model's std, folded into the weights per input channel.
    std::vector<float> w = op.weight.data;
    if (op.weight.shape.size() != 4 ||
        static_cast<std::int64_t>(w.size()) != product(op.weight.shape)) {
      throw ModelError(model_where(model_, op) + ": Conv weight data does not match its shape");
    }
    if (in_channel_fold != nullptr) {
      const auto icg = static_cast<int>(op.weight.shape[1]);
      const auto kernel = static_cast<std::size_t>(op.weight.shape[2] * op.weight.shape[3]);
      const int per_group = channels / op.groups;
      for (int oc = 0; oc < channels; ++oc) {
        for (int i = 0; i < icg; ++i) {
          const float f = in_channel_fold->at((oc / per_group) * icg + i);
          float* row = &w[(static_cast<std::size_t>(oc) * icg + i) * kernel];
          for (std::size_t j = 0; j < kernel; ++j) row[j] *= f;
        }
      }
    }
    std::vector<float> bias = op.bias.data;
    if (!bias.empty() && static_cast<int>(bias.size()) != channels) {
      throw ModelError(model_where(model_, op) + ": Conv bias does not match its output channels");
    }
    std::vector<float> w_scales;
    if (int8_) {
      w_scales = per_channel_scales(w, channels);
      // stored_out = out_scale * (acc + bias_q), acc in units of 1 / (src_scale * w_scale).
      if (!bias.empty()) {
        for (int oc = 0; oc < channels; ++oc) bias[oc] *= src_scale * w_scales[oc];
      }
    }

    auto choose = [&](bool fused) {
      ConvChoice c;
      c.fused = fused;
      const Op* add = fused ? &model_.ops[add_k] : nullptr;
      c.out = fused ? add->output : op.output;
      const std::vector<float>& by_channel =
          channel_scale_.empty() ? no_channels_ : channel_scale_[c.out];
      if (int8_ && !f32_out_[c.out] && by_channel.empty()) {
        c.out_scale = planned_scale(c.out);
      }
      const Dt dst_type = type_of(c.out);
      dnnl::primitive_attr attr = base_attr();
      if (int8_) {
        std::vector<float> out_scales(channels);
        for (int oc = 0; oc < channels; ++oc)
          out_scales[oc] =
              (by_channel.empty() ? c.out_scale : by_channel.at(oc)) / (src_scale * w_scales[oc]);
        attr.set_output_scales(1 << 1, out_scales);
        if (src_state.zero_point != 0) {
          attr.set_zero_points(DNNL_ARG_SRC, 0, {src_state.zero_point});
        }
      }
      dnnl::post_ops post;
      // A channel-ranged value's clip is the u8 or s8 saturation at its channels' limits, which
      // calibration never places beyond the clip (see plan_scales).
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
      c.pd = conv_pd(op, memory::desc(dims_of(in), src_type, Tag::any), dst_md, attr, &c.winograd);
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
    memory w_mem =
        weights(plain_w, w, pd.weights_desc(), int8_ ? &w_scales : nullptr, op.groups == 1 ? 1 : 3);

    ValueState dst;
    dst.md = pd.dst_desc();
    dst.tensor = choice.fused ? states_.at(graph_.sum_addend[add_k]).tensor : new_tensor(dst.md);
    dst.scale = choice.out_scale;
    if (int8_ && !channel_scale_.empty()) dst.channel_scale = channel_scale_[choice.out];
    dst.ready = true;

    std::string what = "conv '" + op.name + "'";
    if (choice.fused) what += " + add '" + model_.ops[add_k].name + "'";
    Step& step = push_step(dnnl::convolution_forward(pd), pd, what);
    bind_view(step, DNNL_ARG_SRC, src);
    bind_view(step, DNNL_ARG_DST, dst);
    step.args[DNNL_ARG_WEIGHTS] = w_mem;
    if (!bias.empty()) step.args[DNNL_ARG_BIAS] = constant(pd.bias_desc(), bias);
    step.observed_value = choice.out;
    if (reads_input && program_->first_conv_step < 0) program_->first_conv_step = step_index() - 1;
    if (choice.fused) ++program_->stats.fused_adds;
    if (choice.winograd) ++program_->stats.winograd_convolutions;
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
    bind_view(step, DNNL_ARG_SRC, src);
  }

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
    const float out_scale = int8_ ? scale_[op.output] : 1.0F;
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
    bind_view(step, DNNL_ARG_SRC_0, a);
    bind_view(step, DNNL_ARG_SRC_1, b);
    // A fused Add that runs on its own: its inputs and result share their group's scales (all
    // three stored at scale 1 here), so the binary adds the stored values as they are.
    if (int8_ && !channel_scale_.empty())
      states_[op.output].channel_scale = channel_scale_[op.output];
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
      bind_view(step, DNNL_ARG_SRC_0, src);
      step.args[DNNL_ARG_SRC_1] = zero;
      return;
    }
    dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, alg, src.md, alpha, beta);
    dnnl::eltwise_forward::primitive_desc pd(d, base_attr(), engine_);
    Step& step =
        push_output_step(op, dnnl::eltwise_forward(pd), pd, "eltwise '" + op.name + "'", src.scale);
    bind_view(step, DNNL_ARG_SRC, src);
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
    const float out_scale = int8_ && !f32_out_[op.output] ? planned_scale(op.output) : 1.0F;
    std::vector<float> w_scales;
    std::vector<float> bias = op.bias.data;
    dnnl::primitive_attr attr = base_attr();
    if (int8_) {
      w_scales = per_channel_scales(op.weight.data, channels);
      std::vector<float> out_scales(channels);
      for (int oc = 0; oc < channels; ++oc) {
        out_scales[oc] = out_scale / (src_scale * w_scales[oc]);
        if (!bias.empty()) bias[oc] *= src_scale * w_scales[oc];
      }
      attr.set_output_scales(1 << 1, out_scales);
    }
    dnnl::post_ops post;
    append_activation(post, op, out_scale);
    attr.set_post_ops(post);

    const memory::desc w_any(wdims, int8_ ? Dt::s8 : Dt::f32, Tag::any);
    const memory::desc dst_any({options_.batch, ws[0]}, dst_type, Tag::any);
    const memory::desc b_md({ws[0]}, Dt::f32, Tag::x);
    auto make = [&](const memory::desc& src) {
      const auto prop = dnnl::prop_kind::forward_inference;
      if (bias.empty()) {
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
    memory w_mem = weights(memory::desc(wdims, Dt::f32, wtag), op.weight.data, pd.weights_desc(),
                           int8_ ? &w_scales : nullptr, 1);
    Step& step = push_output_step(op, dnnl::inner_product_forward(pd), pd, "gemm '" + op.name + "'",
                                  out_scale);
    bind_view(step, DNNL_ARG_SRC, src);
    step.args[DNNL_ARG_WEIGHTS] = w_mem;
    if (!bias.empty()) step.args[DNNL_ARG_BIAS] = constant(b_md, bias);
  }

  void build_concat(const Op& op) {
    if (op.inputs.empty()) throw ModelError(model_where(model_, op) + ": Concat has no inputs");
    const Dt dst_type = type_of(op.output);
    const float out_scale = int8_ ? scale_[op.output] : 1.0F;
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
      bind_view(step, DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i), srcs[i]);
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
    program_->tensors[out.tensor].last = kNever;
    output_view_ = TensorView{out.tensor, out.md};
    const Dims dims = out.md.dims();
    std::int64_t classes = 1;
    for (std::size_t i = 1; i < dims.size(); ++i) classes *= dims[i];
    program_->classes = static_cast<int>(classes);
  }

  // ---- memory --------------------------------------------------------------------------------

  // Tensors whose lifetimes do not overlap share an arena buffer: a step's output never shares
  // with its inputs, and the logits live to the end.
  void allocate() {
    Program& p = *program_;
    std::vector<int> order;
    for (int t = 1; t < static_cast<int>(p.tensors.size()); ++t) {
      if (p.tensors[t].last >= 0) order.push_back(t);
    }
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return p.tensors[a].first < p.tensors[b].first; });
    std::vector<std::size_t> sizes;
    std::vector<int> busy_until;
    for (int t : order) {
      Tensor& tensor = p.tensors[t];
      // The smallest free buffer that fits, else the largest free one (which then grows).
      auto better = [&](int b, int than) {
        const bool fits = sizes[b] >= tensor.bytes;
        const bool than_fits = sizes[than] >= tensor.bytes;
        if (fits != than_fits) return fits;
        return fits ? sizes[b] < sizes[than] : sizes[b] > sizes[than];
      };
      int best = -1;
      for (int b = 0; b < static_cast<int>(sizes.size()); ++b) {
        if (busy_until[b] < tensor.first && (best < 0 || better(b, best))) best = b;
      }
      if (best < 0) {
        sizes.push_back(0);
        busy_until.push_back(-1);
        best = static_cast<int>(sizes.size()) - 1;
      }
      sizes[best] = std::max(sizes[best], tensor.bytes);
      busy_until[best] = tensor.last;
      tensor.buffer = best;
    }
    for (std::size_t size : sizes) {
      p.buffers.emplace_back(
          memory::desc({static_cast<memory::dim>(std::max<std::size_t>(size, 1))}, Dt::u8, Tag::x),
          engine_);
    }
    std::size_t scratch = 0;
    for (const Step& s : p.steps) scratch = std::max(scratch, s.scratchpad.get_size());
    p.scratchpad = memory(
        memory::desc({static_cast<memory::dim>(std::max<std::size_t>(scratch, 1))}, Dt::u8, Tag::x),
        engine_);
    for (Step& s : p.steps) {
      for (const auto& [arg, v] : s.views) s.args[arg] = bind(v);
      if (s.scratchpad.get_size() > 0) {
        s.args[DNNL_ARG_SCRATCHPAD] = memory(s.scratchpad, engine_, p.scratchpad.get_data_handle());
      }
    }
    p.output = bind(output_view_);
  }

  memory bind(const TensorView& v) {
    if (v.tensor == kInputTensor) {
      if (v.md != program_->input.get_desc()) {
        throw std::logic_error("infer: the network input is read in a second form");
      }
      return program_->input;
    }
    const Tensor& t = program_->tensors[v.tensor];
    return memory(v.md, engine_, program_->buffers[t.buffer].get_data_handle());
  }

  // Ranges do not depend on the order of the elements: a layout without padding whose batch
  // dimension is outermost (nhwc, or nChw16c with C a multiple of 16) is scanned as it is.
  static bool samples_first_and_dense(const memory::desc& md) {
    const dnnl_memory_desc_t& d = md.data;
    if (d.format_kind != dnnl_blocked || d.offset0 != 0) return false;
    std::int64_t elements = 1;
    for (int i = 0; i < d.ndims; ++i) {
      if (d.padded_dims[i] != d.dims[i]) return false;
      elements *= d.dims[i];
    }
    return md.get_size() == static_cast<std::size_t>(elements) * sizeof(float) &&
           d.format_desc.blocking.strides[0] == elements / d.dims[0];
  }

  void prepare_observations() {
    Program& p = *program_;
    std::size_t largest = 0;
    for (int i = 0; i < static_cast<int>(p.steps.size()); ++i) {
      const Step& s = p.steps[i];
      if (s.observed_value < 0) continue;
      largest = std::max(largest, plain_f32(s.args.at(DNNL_ARG_DST).get_desc().dims()).get_size());
    }
    memory scratch(
        memory::desc({static_cast<memory::dim>(std::max<std::size_t>(largest, 1))}, Dt::u8, Tag::x),
        engine_);
    for (int i = 0; i < static_cast<int>(p.steps.size()); ++i) {
      const Step& s = p.steps[i];
      if (s.observed_value < 0) continue;
      Observation o;
      o.step = i;
      o.value = s.observed_value;
      o.source = s.args.at(DNNL_ARG_DST);
      const memory::desc plain = plain_f32(o.source.get_desc().dims());
      o.sample_elements =
          plain.get_size() / sizeof(float) / static_cast<std::size_t>(options_.batch);
      // Channel-ranged values are observed channel by channel: always in plain NCHW.
      if (o.source.get_desc() == plain ||
          (!graph_.channel_ranged[o.value] && samples_first_and_dense(o.source.get_desc()))) {
        o.plain = o.source;
      } else {
        o.plain = memory(plain, engine_, scratch.get_data_handle());
        o.to_plain = dnnl::reorder(o.source, o.plain);
        o.needs_reorder = true;
      }
      p.observations.push_back(o);
    }
    p.buffers.push_back(scratch);  // keeps the scratch alive with the program
  }

  const Model& model_;
  const Graph& graph_;
  const NetworkOptions& options_;
  const dnnl::engine& engine_;
  dnnl::stream& stream_;
  const bool int8_;
  const CalibrationTable* table_;
  const bool observe_;
  const std::vector<float> fold_;
  std::unique_ptr<Program> program_;
  std::vector<ValueState> states_;
  std::vector<std::pair<int, ValueState>> adapted_;
  std::vector<bool> unfused_adds_;  // per op: an Add the analysis fused that runs on its own
  std::vector<bool> unsigned_;
  std::vector<float> scale_;  // NaN: not needed so far (computed from the table on demand)
  std::vector<std::vector<float>> channel_scale_;  // per value: empty, or its channels' scales
  const std::vector<float> no_channels_;
  std::vector<bool> f32_out_;
  TensorView output_view_;
};

// Runs every primitive of `p` on one batch; `observe` sees each recorded value as plain f32.
void execute(Program& p, dnnl::stream& stream, const void* input, int batch, int max_batch,
             const std::function<void(int, const float*, std::size_t)>& observe) {
  void* handle = const_cast<void*>(input);  // oneDNN only reads a source
  if (batch < max_batch) {
    std::memcpy(p.padded_input.get_data_handle(), input,
                p.input_sample_bytes * static_cast<std::size_t>(batch));
    handle = p.padded_input.get_data_handle();
  }
  p.input.set_data_handle(handle);
  std::size_t next_observation = 0;
  for (int i = 0; i < static_cast<int>(p.steps.size()); ++i) {
    Step& s = p.steps[i];
    s.primitive.execute(stream, s.args);
    if (!observe || next_observation >= p.observations.size() ||
        p.observations[next_observation].step != i) {
      continue;
    }
    Observation& o = p.observations[next_observation++];
    if (o.needs_reorder) o.to_plain.execute(stream, o.source, o.plain);
    stream.wait();
    observe(o.value, static_cast<const float*>(o.plain.get_data_handle()),
            o.sample_elements * static_cast<std::size_t>(batch));
  }
  stream.wait();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

// One part of the batch under Parallelism::kSamples (the whole batch under kLayers): its own
// stream and program, built for its size, so that parts never share a buffer.
struct Part {
  int first = 0;  // its first sample in the batch
  int batch = 0;  // its samples in a whole batch
  dnnl::stream stream;
  std::unique_ptr<Program> program;
};

struct Network::Impl {
  Impl(const Model& m, NetworkOptions o)
      : model(m),
        options(o),
        engine(dnnl::engine::kind::cpu, 0),
        stream(engine),
        graph(analyze(model, options.input.type)) {
    if (model.digest == 0) model.digest = model_digest(model);
  }

  void set_threads() const { omp_set_num_threads(options.threads); }

  Builder builder(Precision precision, const CalibrationTable* table, bool observe) {
    return Builder(model, graph, options, engine, stream, precision, table, observe);
  }

  int part_count() const {
    return options.parallel == Parallelism::kSamples ? std::min(options.threads, options.batch) : 1;
  }

  // Builds what run() executes. Parts' primitives are created while the team size is 1, so that
  // oneDNN plans each of them for the one thread that will run it.
  void build_parts(Precision precision, const CalibrationTable* t) {
    const int count = part_count();
    std::vector<Part> built(static_cast<std::size_t>(count));
    if (count > 1) omp_set_num_threads(1);
    int first = 0;
    for (int k = 0; k < count; ++k) {
      Part& part = built[static_cast<std::size_t>(k)];
      NetworkOptions own = options;
      own.batch = options.batch / count + (k < options.batch % count ? 1 : 0);
      own.threads = count > 1 ? 1 : options.threads;
      part.first = first;
      part.batch = own.batch;
      first += own.batch;
      part.stream = dnnl::stream(engine);
      part.program = Builder(model, graph, own, engine, part.stream, precision, t, false).build();
    }
    set_threads();
    parts = std::move(built);
    part_errors.assign(parts.size(), nullptr);
  }

  void build_int8(CalibrationTable t) {
    build_parts(Precision::kInt8, &t);
    table = std::move(t);
    calibration_program.reset();
    observers.clear();
    channel_observers.clear();
  }

  // Runs part k's share of a batch of `batch` samples (nothing when the batch ends before it).
  void run_part(std::size_t k, const void* input, int batch, float* logits) {
    Part& part = parts[k];
    Program& p = *part.program;
    const int count = std::min(batch - part.first, part.batch);
    if (count <= 0) return;
    execute(p, part.stream,
            static_cast<const std::uint8_t*>(input) +
                p.input_sample_bytes * static_cast<std::size_t>(part.first),
            count, part.batch, nullptr);
    std::memcpy(
        logits + static_cast<std::size_t>(p.classes) * static_cast<std::size_t>(part.first),
        p.output.get_data_handle(),
        sizeof(float) * static_cast<std::size_t>(p.classes) * static_cast<std::size_t>(count));
  }

  Model model;
  NetworkOptions options;
  dnnl::engine engine;
  dnnl::stream stream;
  Graph graph;
  InputLayout preferred = InputLayout::kNHWC;
  std::vector<Part> parts;                       // what run() executes; empty until built
  std::vector<std::exception_ptr> part_errors;   // one per part, for the parallel region
  std::unique_ptr<Program> calibration_program;  // int8 only: the fp32 graph that observe() runs
  std::vector<RangeObserver> observers;
  std::vector<std::vector<RangeObserver>> channel_observers;  // per channel-ranged value
  int observed_batches = 0;
  std::optional<CalibrationTable> table;
  const void* last_source = nullptr;
};

Network::Network(const Model& model, NetworkOptions options) {
  if (options.batch < 1) throw std::invalid_argument("infer: batch must be at least 1");
  if (options.threads < 1) throw std::invalid_argument("infer: threads must be at least 1");
  impl_ = std::make_unique<Impl>(model, options);
  impl_->set_threads();
  impl_->preferred = impl_->builder(options.precision, nullptr, false).probe_input_layout();
  if (options.precision == Precision::kFp32) impl_->build_parts(Precision::kFp32, nullptr);
}

Network::~Network() = default;

bool Network::needs_calibration() const { return impl_->parts.empty(); }

void Network::observe(const void* input, int batch) {
  Impl& m = *impl_;
  if (m.options.precision != Precision::kInt8) {
    throw std::logic_error("infer: observe() calibrates an int8 network; this one is fp32");
  }
  if (!m.parts.empty()) throw std::logic_error("infer: the network is already calibrated");
  if (batch < 1 || batch > m.options.batch) {
    throw std::invalid_argument("infer: batch " + std::to_string(batch) + " outside 1.." +
                                std::to_string(m.options.batch));
  }
  m.set_threads();
  if (!m.calibration_program) {
    m.calibration_program = m.builder(Precision::kFp32, nullptr, true).build();
  }
  if (m.observers.empty()) {
    m.observers.assign(m.model.value_count(), RangeObserver(m.options.calibration));
    m.channel_observers.assign(m.model.value_count(), {});
    for (int v = 0; v < m.model.value_count(); ++v) {
      if (!m.graph.channel_ranged[v]) continue;
      m.channel_observers[v].assign(static_cast<std::size_t>(m.model.value_shapes[v][1]),
                                    RangeObserver(m.options.calibration, kChannelHistogramBins));
    }
  }
  if (m.options.input.type == InputType::kF32) {
    m.observers[m.model.input].add(static_cast<const float*>(input),
                                   m.calibration_program->input_sample_bytes / sizeof(float) *
                                       static_cast<std::size_t>(batch));
  }
  execute(*m.calibration_program, m.stream, input, batch, m.options.batch,
          [&](int value, const float* data, std::size_t count) {
            m.observers[value].add(data, count);
            auto& by_channel = m.channel_observers[value];
            if (by_channel.empty()) return;
            // Plain NCHW (prepare_observations): each sample's channels one after another.
            const std::size_t channels = by_channel.size();
            const auto& shape = m.model.value_shapes[value];
            const auto plane = static_cast<std::size_t>(shape[2] * shape[3]);
            for (std::size_t i = 0; i + plane <= count; i += plane) {
              by_channel[(i / plane) % channels].add(data + i, plane);
            }
          });
  ++m.observed_batches;
}

void Network::finalize_calibration() {
  Impl& m = *impl_;
  if (m.options.precision != Precision::kInt8) {
    throw std::logic_error("infer: only an int8 network is calibrated");
  }
  if (!m.parts.empty()) throw std::logic_error("infer: the network is already calibrated");
  if (m.observed_batches == 0) {
    throw std::logic_error("infer: finalize_calibration() before any observe()");
  }
  m.set_threads();
  CalibrationTable t;
  t.mode = m.options.calibration;
  for (int v = 0; v < static_cast<int>(m.observers.size()); ++v) {
    if (m.observers[v].empty()) continue;
    const int levels = m.graph.is_unsigned[v] ? kU8Levels : kS8Levels;
    ValueRange r = m.observers[v].finish(v, levels);
    for (const RangeObserver& c : m.channel_observers[v]) {
      const ValueRange cr = c.finish(v, levels);
      r.channels.push_back(m.graph.is_unsigned[v] ? std::max(cr.max, 0.0F)
                                                  : std::max(std::fabs(cr.min), std::fabs(cr.max)));
    }
    t.values.push_back(std::move(r));
  }
  m.build_int8(std::move(t));
}

void Network::save_calibration(const std::string& path) const {
  if (!impl_->table) {
    throw std::logic_error(
        "infer: there is no calibration table to save (fp32, or not calibrated)");
  }
  CalibrationTable table = *impl_->table;
  table.fingerprint = calibration_fingerprint(impl_->model, impl_->options.input);
  save_calibration_table(table, path);
}

namespace {

void require_int8_for_table(const NetworkOptions& options) {
  if (options.precision != Precision::kInt8) {
    throw std::logic_error("infer: only an int8 network takes a calibration table");
  }
}

}  // namespace

void Network::load_calibration(const std::string& path) {
  require_int8_for_table(impl_->options);  // before reading: an fp32 network has no use for it
  load_calibration(load_calibration_table(path), path);
}

void Network::load_calibration(CalibrationTable t, const std::string& path) {
  Impl& m = *impl_;
  require_int8_for_table(m.options);
  m.set_threads();
  const std::string ours = calibration_fingerprint(m.model, m.options.input);
  if (const std::string differs = fingerprint_mismatch(t.fingerprint, ours); !differs.empty()) {
    throw CalibrationError(path + ": error: the calibration table was made for another model or " +
                           "preprocessing (" + differs + "): the table's fingerprint is '" +
                           t.fingerprint + "', this network's is '" + ours + "'");
  }
  for (const ValueRange& r : t.values) {
    if (r.id >= m.model.value_count()) {
      throw CalibrationError(path + ": error: value " + std::to_string(r.id) +
                             " does not exist in " + m.model.path);
    }
  }
  m.build_int8(std::move(t));
}

void Network::run(const void* input, int batch, float* logits) {
  Impl& m = *impl_;
  if (m.parts.empty()) throw std::logic_error("infer: run() before the int8 network is calibrated");
  if (batch < 1 || batch > m.options.batch) {
    throw std::invalid_argument("infer: batch " + std::to_string(batch) + " outside 1.." +
                                std::to_string(m.options.batch));
  }
  m.set_threads();
  const std::size_t count = m.parts.size();
  if (count == 1) {
    m.run_part(0, input, batch, logits);
  } else {
    // One fork and join per batch. The loop covers every part even if libgomp gives the region
    // fewer threads than asked for; exceptions must not leave the region, so each part keeps its
    // own and the first is rethrown after the join.
    const int team = static_cast<int>(count);
#pragma omp parallel num_threads(team)
    for (auto k = static_cast<std::size_t>(omp_get_thread_num()); k < count;
         k += static_cast<std::size_t>(omp_get_num_threads())) {
      try {
        m.run_part(k, input, batch, logits);
      } catch (...) {
        m.part_errors[k] = std::current_exception();
      }
    }
    std::exception_ptr first;
    for (std::exception_ptr& e : m.part_errors) {
      if (!first) first = e;
      e = nullptr;  // none may outlive this batch
    }
    if (first) std::rethrow_exception(first);
  }
  const Program& p = *m.parts.front().program;
  m.last_source = p.first_conv_step >= 0
                      ? p.steps[p.first_conv_step].args.at(DNNL_ARG_SRC).get_data_handle()
                      : nullptr;
}

int Network::parts() const { return impl_->part_count(); }

int Network::classes() const {
  return static_cast<int>(product(impl_->model.value_shapes.at(impl_->model.output), 1));
}

InputLayout Network::preferred_layout() const { return impl_->preferred; }

NetworkStats Network::stats() const {
  return impl_->parts.empty() ? NetworkStats{} : impl_->parts.front().program->stats;
}

const void* Network::last_source_handle() const { return impl_->last_source; }

std::string Network::describe() const {
  std::string out;
  if (impl_->parts.empty()) return out;
  for (const Step& s : impl_->parts.front().program->steps) out += s.line + "\n";
  return out;
}

}  // namespace millrace::infer
