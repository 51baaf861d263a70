// Calibration of an int8 network, apart from the table's form and the statistics of one value
// (calibration.hpp) and from the program that runs the fp32 batches (builder.hpp, program.hpp):
// which values are observed, how a channel-ranged value's statistics are gathered channel by
// channel, how the observers become a CalibrationTable, and whether a table may serve a network.
//
// What it owns: one RangeObserver per value of the model (the mode's statistics over every
// batch seen), and one per channel (kChannelHistogramBins bins) for each value the analysis marks
// channel ranged. A value's range goes into the table when the value was observed; its channels'
// limits (max for u8, max |x| for s8) go with it.
//
// Contract: a Calibrator belongs to the network's thread; it allocates its observers when
// constructed and holds nothing of the network's. It has no oneDNN dependency.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "stages/infer/calibration.hpp"
#include "stages/infer/graph_analysis.hpp"
#include "stages/infer/model.hpp"
#include "stages/infer/network.hpp"

namespace millrace::infer {

class Calibrator {
 public:
  // `model` and `graph` must outlive the Calibrator.
  Calibrator(const Model& model, const Graph& graph, CalibrationMode mode);

  // `count` real values of `value`, as plain float32; a channel-ranged value in NCHW order (each
  // sample's channels one after another), as Program::execute() hands them.
  void add(int value, const float* data, std::size_t count);
  // One batch has been observed in full.
  void end_batch() { ++batches_; }
  int batches() const { return batches_; }

  // The table of every observed value's range (sorted by id), in the calibrator's mode; the
  // fingerprint is left to the network, which knows its input format.
  CalibrationTable finish() const;

 private:
  const Model& model_;
  const Graph& graph_;
  CalibrationMode mode_;
  std::vector<RangeObserver> observers_;
  std::vector<std::vector<RangeObserver>> channel_observers_;  // per channel-ranged value
  int batches_ = 0;
};

// Throws CalibrationError naming `source` when `table` may not serve a network of `model` fed
// with `input`: a fingerprint that differs in any field but the model's file name, or a value
// the model does not have.
void check_table(const CalibrationTable& table, const Model& model, const InputFormat& input,
                 const std::string& source);

}  // namespace millrace::infer
