// Activation ranges for post-training static quantization: how they are collected from fp32
// calibration batches (min/max, or a histogram searched for the KL-optimal threshold), and the
// JSON table they are saved to so that a later run quantizes identically without calibrating.
//
// Contract: plain values and functions with no oneDNN dependency. A RangeObserver belongs to one
// thread (the inference thread that runs calibration); CalibrationTable is a value that may be
// copied and read anywhere. The JSON form is
//   {"mode": "minmax", "fingerprint": "...", "values": [{"id": 3, "min": -1.25, "max": 4.5}, ...]}
// where a value a convolution writes for convolutions alone also carries "channels": [...], the
// limit of each channel (its max for u8, its max |x| for s8), which the int8 network uses as that
// value's range channel by channel (network.hpp).
// with every number written with enough digits (%.9g) to read back the identical float, so a
// loaded table reproduces the calibrated network bit for bit. Reading rejects anything else with
// CalibrationError naming the file and what is wrong.
// The fingerprint names what the ranges are valid for, as `key value` fields joined by "; ":
//   model resnet18.onnx; graph 9f0c...; input s8; layout nhwc; mean [...]; unit [...];
//   zero_point 0; model_std [...]
// the model (a hash of its imported graph and weights; the file name only informs) and the
// preprocessing that feeds it (loader type, layout, mean, units, zero point, the model's std). A
// table must not serve another model or recipe: a network refuses a table whose fingerprint
// differs from its own in any field but the file name, naming both and what differs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "stages/infer/network.hpp"

namespace millrace::infer {

class CalibrationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The real-valued range a value is quantized over: s8 values use max(|min|, |max|), u8 values
// use max (their min is 0 by construction).
struct ValueRange {
  int id = -1;  // the Model's value id
  float min = 0.0F;
  float max = 0.0F;
  std::vector<float> channels;  // per-channel limits (see above); empty: the value's range only
  bool operator==(const ValueRange&) const = default;
};

struct CalibrationTable {
  CalibrationMode mode = CalibrationMode::kMinMax;
  std::string fingerprint;         // calibration_fingerprint() of the network it was made for
  std::vector<ValueRange> values;  // sorted by id, ids unique

  const ValueRange* find(int id) const;
  bool operator==(const CalibrationTable&) const = default;
};

const char* calibration_mode_name(CalibrationMode mode);

// A 64-bit hash of the imported graph (ops, wiring, folded weights): reads every weight, so it
// is computed once per model and kept in Model::digest.
std::uint64_t model_digest(const Model& model);

// What a calibration table is valid for (see above): the model's digest (Model::digest, computed
// here when it is 0) and the input format.
std::string calibration_fingerprint(const Model& model, const InputFormat& input);

// "" when a table made for `table` may serve `ours` (every field equal but the model's file
// name); otherwise what differs, field by field: "graph 0123... in the table, 4567... here".
std::string fingerprint_mismatch(const std::string& table, const std::string& ours);

std::string calibration_to_json(const CalibrationTable& table);
// `origin` names the text's source in error messages (a file path, or "<string>").
CalibrationTable calibration_from_json(std::string_view text, const std::string& origin);
// Saved through a temporary file renamed into place. Loaded only from a regular file of at most
// kMaxCalibrationTableBytes (a table holds a few numbers per layer: kilobytes); a folder, a FIFO,
// a device or a larger file is a CalibrationError naming what it is.
inline constexpr std::uint64_t kMaxCalibrationTableBytes = 64U << 20U;
void save_calibration_table(const CalibrationTable& table, const std::string& path);
CalibrationTable load_calibration_table(const std::string& path);

// Histogram resolution and the KL search of the entropy mode, as TensorRT describes it: 2048
// bins over [0, max|x|] (exact zeros left out: every scale represents them exactly), candidate
// thresholds from `levels` bins up to all 2048.
inline constexpr int kHistogramBins = 2048;
inline constexpr int kChannelHistogramBins = 512;
// Quantized levels on one side of zero: an s8 value has 128 (0..127 in magnitude); a u8 value,
// non-negative by construction, has its whole 0..255 range on that side, so its search merges
// into 255 levels (searching it with 128 would clip more than the u8 grid needs).
inline constexpr int kS8Levels = 128;
inline constexpr int kU8Levels = 255;

// Collects one value's statistics over any number of calibration batches.
class RangeObserver {
 public:
  // `bins`: the histogram's resolution (a channel's observer uses fewer than a whole value's,
  // since a network has thousands of channels).
  explicit RangeObserver(CalibrationMode mode = CalibrationMode::kMinMax, int bins = kHistogramBins)
      : mode_(mode), bins_(bins) {}

  // Adds `count` real values (NaNs are ignored).
  void add(const float* data, std::size_t count);
  bool empty() const { return count_ == 0; }
  float min() const { return min_; }
  float max() const { return max_; }
  // The histogram of |x| over [0, histogram_limit()] (entropy and mse modes).
  const std::vector<double>& histogram() const { return histogram_; }
  float histogram_limit() const { return limit_; }

  // The range to quantize over: what was seen (minmax), or [-T, T] clipped to what was seen,
  // T the KL-optimal threshold for `levels` quantized levels (entropy) or the one of least
  // squared error (mse).
  ValueRange finish(int id, int levels) const;

 private:
  void grow_histogram(float new_limit);

  CalibrationMode mode_;
  int bins_;
  std::size_t count_ = 0;
  float min_ = 0.0F;
  float max_ = 0.0F;
  float limit_ = 0.0F;  // upper edge of the histogram's last bin
  std::vector<double> histogram_;
};

// The threshold (in the histogram's units, bin width `bin_width`) that minimises the KL
// divergence between the histogram clipped at it and its quantization to `levels` levels (of
// i / levels bins each, a bin straddling two levels split between them). An empty histogram, or
// one with no more bins than levels, keeps its full range.
float entropy_threshold(const std::vector<double>& histogram, float bin_width, int levels);

// The threshold (a bin edge, in the histogram's units) that minimises the mean squared error of
// quantizing the histogram's values to `levels` levels over [0, T]: rounding inside the range,
// clipping beyond it. Unlike the KL search it weighs a clipped outlier by how far it is clipped,
// which suits values whose tails carry signal (the linear bottlenecks of MobileNetV2).
float mse_threshold(const std::vector<double>& histogram, float bin_width, int levels);

}  // namespace millrace::infer
