#include "stages/infer/planner.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "stages/infer/calibration.hpp"

namespace millrace::infer {
namespace {

std::int64_t product(const std::vector<std::int64_t>& v) {
  std::int64_t p = 1;
  for (std::int64_t d : v) p *= d;
  return p;
}

std::vector<float> per_channel_scales(const std::vector<float>& w, int channels) {
  const std::size_t per = w.size() / channels;
  std::vector<float> scales(channels);
  for (int oc = 0; oc < channels; ++oc) {
    float m = 0.0F;
    for (std::size_t i = 0; i < per; ++i) m = std::max(m, std::fabs(w[oc * per + i]));
    scales[oc] = m > 0.0F ? 127.0F / m : 1.0F;
  }
  return scales;
}

const std::vector<float> kNoChannels;

}  // namespace

std::vector<float> fold_factors(const Model& model, const InputFormat& input) {
  const auto channels = static_cast<int>(model.value_shapes[model.input][1]);
  std::vector<float> f(channels);
  const bool uniform = input.unit[0] == input.unit[1] && input.unit[1] == input.unit[2] &&
                       input.model_std[0] == input.model_std[1] &&
                       input.model_std[1] == input.model_std[2];
  if (channels != 3 && channels != 1 && !uniform) {
    throw ModelError(model.path + ": the network input has " + std::to_string(channels) +
                     " channels; per-channel unit/std need 1 or 3");
  }
  for (int c = 0; c < channels; ++c) {
    const int i = channels == 3 ? c : 0;
    if (!(input.model_std[i] > 0.0F) || !(input.unit[i] > 0.0F)) {
      throw std::invalid_argument("infer: unit and model std must be positive");
    }
    f[c] = input.unit[i] / input.model_std[i];
  }
  return f;
}

DType input_source_type(const InputFormat& input, Precision precision) {
  if (precision != Precision::kInt8) return DType::kFloat32;
  return input.type == DType::kUInt8 ? DType::kUInt8 : DType::kInt8;
}

int input_zero_point(const InputFormat& input) {
  const float z = input.zero_point;
  if (input.type == DType::kFloat32) {
    if (z != 0.0F) throw std::invalid_argument("infer: float32 input cannot carry a zero point");
    return 0;
  }
  const float low = input.type == DType::kUInt8 ? 0.0F : -128.0F;
  const float high = input.type == DType::kUInt8 ? 255.0F : 127.0F;
  if (std::nearbyint(z) != z || z < low || z > high) {
    throw std::invalid_argument(
        "infer: the input zero point must be an integer in the input "
        "type's range");
  }
  return static_cast<int>(z);
}

ScalePlan::ScalePlan(const Model& model, const Graph& graph, const InputFormat& input,
                     Precision precision, bool channel_ranges, const CalibrationTable* table)
    : model_(model),
      graph_(graph),
      table_(table),
      int8_(precision == Precision::kInt8),
      channel_ranges_(channel_ranges),
      fold_(fold_factors(model, input)) {
  if (!int8_) return;
  plan_tensor_scales(input);
  plan_channel_scales();
}

float ScalePlan::range_scale(int value, bool is_unsigned) const {
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

// Values whose scale depends on a later choice (a convolution's output, which a fused Add
// replaces) are left NaN: scale() reads them from the table when the builder asks.
void ScalePlan::plan_tensor_scales(const InputFormat& input) {
  const int n = model_.value_count();
  unsigned_ = graph_.is_unsigned;
  scale_.assign(n, std::numeric_limits<float>::quiet_NaN());
  f32_out_.assign(n, false);
  if (input.type == DType::kFloat32) {
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

// levels / limit per channel, each limit kept within the producer's clip so that the type's
// saturation is the clip.
void ScalePlan::plan_channel_scales() {
  const int n = model_.value_count();
  channel_scale_.assign(n, {});
  if (!channel_ranges_ || table_ == nullptr) return;
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

DType ScalePlan::type(int value) const {
  if (!int8_ || f32_out_[value]) return DType::kFloat32;
  return unsigned_[value] ? DType::kUInt8 : DType::kInt8;
}

float ScalePlan::scale(int value) const {
  if (!int8_) return 1.0F;
  const float s = scale_[value];
  return std::isnan(s) ? range_scale(value, unsigned_[value]) : s;
}

const std::vector<float>& ScalePlan::channel_scales(int value) const {
  return channel_scale_.empty() ? kNoChannels : channel_scale_[value];
}

std::vector<float> ScalePlan::reader_fold(int value) const {
  if (value == model_.input) return fold_;
  const std::vector<float>& by_channel = channel_scales(value);
  std::vector<float> unscale(by_channel.size());
  for (std::size_t c = 0; c < unscale.size(); ++c) unscale[c] = 1.0F / by_channel[c];
  return unscale;
}

LayerWeights ScalePlan::conv_weights(const Op& op, int source, float src_scale) const {
  const int channels = static_cast<int>(op.weight.shape.at(0));
  LayerWeights out;
  out.weights = op.weight.data;
  std::vector<float>& w = out.weights;
  if (op.weight.shape.size() != 4 ||
      static_cast<std::int64_t>(w.size()) != product(op.weight.shape)) {
    throw ModelError(model_where(model_, op) + ": Conv weight data does not match its shape");
  }
  const std::vector<float> fold = reader_fold(source);
  if (!fold.empty()) {
    const auto icg = static_cast<int>(op.weight.shape[1]);
    const auto kernel = static_cast<std::size_t>(op.weight.shape[2] * op.weight.shape[3]);
    const int per_group = channels / op.groups;
    for (int oc = 0; oc < channels; ++oc) {
      for (int i = 0; i < icg; ++i) {
        const float f = fold.at((oc / per_group) * icg + i);
        float* row = &w[(static_cast<std::size_t>(oc) * icg + i) * kernel];
        for (std::size_t j = 0; j < kernel; ++j) row[j] *= f;
      }
    }
  }
  out.bias = op.bias.data;
  if (!out.bias.empty() && static_cast<int>(out.bias.size()) != channels) {
    throw ModelError(model_where(model_, op) + ": Conv bias does not match its output channels");
  }
  if (int8_) {
    out.scales = per_channel_scales(w, channels);
    // stored_out = out_scale * (acc + bias_q), acc in units of 1 / (src_scale * w_scale).
    if (!out.bias.empty()) {
      for (int oc = 0; oc < channels; ++oc) out.bias[oc] *= src_scale * out.scales[oc];
    }
  }
  return out;
}

LayerWeights ScalePlan::gemm_weights(const Op& op, float src_scale) const {
  const int channels = static_cast<int>(op.weight.shape.at(0));
  LayerWeights out;
  out.weights = op.weight.data;
  out.bias = op.bias.data;
  if (int8_) {
    out.scales = per_channel_scales(out.weights, channels);
    if (!out.bias.empty()) {
      for (int oc = 0; oc < channels; ++oc) out.bias[oc] *= src_scale * out.scales[oc];
    }
  }
  return out;
}

std::vector<float> ScalePlan::output_scales(const LayerWeights& weights, float src_scale,
                                            float out_scale, const std::vector<float>& by_channel) {
  std::vector<float> out(weights.scales.size());
  for (std::size_t oc = 0; oc < out.size(); ++oc) {
    out[oc] =
        (by_channel.empty() ? out_scale : by_channel.at(oc)) / (src_scale * weights.scales[oc]);
  }
  return out;
}

}  // namespace millrace::infer
