#include "stages/infer/calibrator.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

namespace millrace::infer {

Calibrator::Calibrator(const Model& model, const Graph& graph, CalibrationMode mode)
    : model_(model), graph_(graph), mode_(mode) {
  observers_.assign(model.value_count(), RangeObserver(mode));
  channel_observers_.assign(model.value_count(), {});
  for (int v = 0; v < model.value_count(); ++v) {
    if (!graph.channel_ranged[v]) continue;
    channel_observers_[v].assign(static_cast<std::size_t>(model.value_shapes[v][1]),
                                 RangeObserver(mode, kChannelHistogramBins));
  }
}

void Calibrator::add(int value, const float* data, std::size_t count) {
  observers_[value].add(data, count);
  auto& by_channel = channel_observers_[value];
  if (by_channel.empty()) return;
  const std::size_t channels = by_channel.size();
  const auto& shape = model_.value_shapes[value];
  const auto plane = static_cast<std::size_t>(shape[2] * shape[3]);
  for (std::size_t i = 0; i + plane <= count; i += plane) {
    by_channel[(i / plane) % channels].add(data + i, plane);
  }
}

CalibrationTable Calibrator::finish() const {
  CalibrationTable t;
  t.mode = mode_;
  for (int v = 0; v < static_cast<int>(observers_.size()); ++v) {
    if (observers_[v].empty()) continue;
    const int levels = graph_.is_unsigned[v] ? kU8Levels : kS8Levels;
    ValueRange r = observers_[v].finish(v, levels);
    for (const RangeObserver& c : channel_observers_[v]) {
      const ValueRange cr = c.finish(v, levels);
      r.channels.push_back(graph_.is_unsigned[v] ? std::max(cr.max, 0.0F)
                                                 : std::max(std::fabs(cr.min), std::fabs(cr.max)));
    }
    t.values.push_back(std::move(r));
  }
  return t;
}

void check_table(const CalibrationTable& table, const Model& model, const InputFormat& input,
                 const std::string& source) {
  const std::string ours = calibration_fingerprint(model, input);
  if (const std::string differs = fingerprint_mismatch(table.fingerprint, ours); !differs.empty()) {
    throw CalibrationError(source + ": error: the calibration table was made for another model " +
                           "or preprocessing (" + differs + "): the table's fingerprint is '" +
                           table.fingerprint + "', this network's is '" + ours + "'");
  }
  for (const ValueRange& r : table.values) {
    if (r.id >= model.value_count()) {
      throw CalibrationError(source + ": error: value " + std::to_string(r.id) +
                             " does not exist in " + model.path);
    }
  }
}

}  // namespace millrace::infer
