// The numbers of a network, decided before any oneDNN object exists: the second half of the
// planner (graph_analysis.hpp, the model's structure, is the first). A ScalePlan says, for every
// value, the element type it is stored in and its scale (stored = real * scale), one per tensor or
// one per channel; the builder (builder.hpp) turns it into primitives and never reads the
// calibration table itself (it only carries a scale through ops that keep it, and takes ratios).
//
// What it owns:
// - Per-tensor scales: 127 / max(|min|, |max|) for an s8 value, 255 / max for a u8 one, from the
//   calibration table's range; 1 for s8 / u8 network input (the loader's bytes are used as they
//   are); the calibrated range for float32 input, which a reorder quantizes. A value that a
//   scale-preserving op writes (pooling, a standalone activation, Flatten) takes its source's
//   scale in the builder, which propagates it; everything else is asked of the plan.
// - Per-channel scales (NetworkOptions::channel_ranges): for a value the analysis marks channel
//   ranged, levels / limit per channel from the table's per-channel limits, the largest limit of
//   its group (values one fused residual Add joins share their scales), each limit kept within
//   the producer's Clip, so that the int8 type's saturation is the clip.
// - The folds: the input's unit / model std per input channel (fold_factors), and a channel-ranged
//   source's 1 / scale per input channel, multiplied into the reading convolution's weights; the
//   weights' own s8 scales (127 / max|w| per output channel); the bias in accumulator units; the
//   output scales that requantize the accumulator to the destination's scale.
// - The input's source type and zero point as the first convolution reads them.
//
// Contract: a ScalePlan is immutable once built and has no oneDNN dependency. An fp32 plan
// stores every value as float32 at scale 1 and folds only the input's preprocessing. Scales come
// from the table when asked for: a value the builder never asks about needs no range, and one it
// asks about that the table lacks is a CalibrationError naming the value and its producer. The
// table must outlive the plan. Bad input formats or weights throw std::invalid_argument or
// ModelError naming the model and the node.
#pragma once

#include <vector>

#include "engine/layout.hpp"
#include "stages/infer/graph_analysis.hpp"
#include "stages/infer/model.hpp"
#include "stages/infer/network.hpp"

namespace millrace::infer {

struct CalibrationTable;  // calibration.hpp

// unit_c / model_std_c per input channel of the network: the factor by which the loader's
// integers, read as they are, reach what the model was trained on (network.hpp, InputFormat).
std::vector<float> fold_factors(const Model& model, const InputFormat& input);

// The element type the first convolution reads the network input as: the loader's own s8 / u8,
// s8 for float32 input in an int8 network (a reorder quantizes it), float32 in fp32.
DType input_source_type(const InputFormat& input, Precision precision);

// The input's zero point as an integer of its type (0 for float32 input, which may carry none):
// std::invalid_argument otherwise.
int input_zero_point(const InputFormat& input);

// A convolution's or Gemm's weights as the primitive gets them, before oneDNN's reorder
// quantizes them with `scales`.
struct LayerWeights {
  std::vector<float> weights;  // float32, OIHW or [outputs, inputs], folds applied
  std::vector<float> scales;   // int8: 127 / max|w| per output channel; empty in fp32
  std::vector<float> bias;     // int8: in accumulator units (real * src_scale * scales[oc])
};

class ScalePlan {
 public:
  // `table` is read only for an int8 plan, which needs one (the builder plans int8 only once
  // calibrated); the per-tensor scales of Adds, Concats and float32 input are read here, the
  // others when asked for.
  ScalePlan(const Model& model, const Graph& graph, const InputFormat& input, Precision precision,
            bool channel_ranges, const CalibrationTable* table);

  bool int8() const { return int8_; }

  // The element type `value` is stored in: float32 in fp32 and for the logits layer's output,
  // else u8 where the analysis found it non-negative (and for a convolution read only by a u8
  // Concat), s8 otherwise.
  DType type(int value) const;
  // stored = real * scale(value) (1 where channel_scales() applies, and in fp32).
  float scale(int value) const;
  // Per channel: stored = real * channel_scales(value)[c]; empty for a value with one scale.
  const std::vector<float>& channel_scales(int value) const;
  // Whether `value` is the logits, written as float32 by the last layer.
  bool writes_f32(int value) const { return int8_ && f32_out_[value]; }

  // The factor per input channel a convolution reading `value` folds into its weights: the
  // input's fold factors for the network input, 1 / scale for a channel-scaled int8 value,
  // empty for none.
  std::vector<float> reader_fold(int value) const;

  // The weights of Conv `op` (OIHW, checked against its shape) with reader_fold(`source`)
  // applied; in int8 quantized per output channel, with the bias brought into the units of
  // an accumulator whose source is stored at `src_scale`.
  LayerWeights conv_weights(const Op& op, int source, float src_scale) const;
  // The same for Gemm `op`, whose weights are checked by the builder against its source.
  LayerWeights gemm_weights(const Op& op, float src_scale) const;
  // The output scales per output channel that take an accumulator (source at `src_scale`, weights
  // at `weights.scales`) to the destination stored at `out_scale`, or at `by_channel[oc]` when
  // that is not empty.
  static std::vector<float> output_scales(const LayerWeights& weights, float src_scale,
                                          float out_scale, const std::vector<float>& by_channel);

 private:
  float range_scale(int value, bool is_unsigned) const;
  void plan_tensor_scales(const InputFormat& input);
  void plan_channel_scales();

  const Model& model_;
  const Graph& graph_;
  const CalibrationTable* table_;
  bool int8_;
  bool channel_ranges_;
  std::vector<float> fold_;
  std::vector<bool> unsigned_;
  std::vector<float> scale_;                       // NaN: read from the table when asked for
  std::vector<std::vector<float>> channel_scale_;  // per value: empty, or its channels' scales
  std::vector<bool> f32_out_;
};

}  // namespace millrace::infer
