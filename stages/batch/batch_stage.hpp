// `batch`: assembles samples into batches, with MXNet's round_batch padding at each epoch's end.
//
// Contract: serial (the engine never overlaps its calls). It copies each sample's tensor into a
// pooled batch buffer (one memcpy per sample) and keeps, per open epoch, the partial batch and,
// for `last: pad`, a copy of the epoch's first batch to pad from: memory bounded by the number of
// epochs open at once, which the engine's in-flight window bounds. In a run resumed mid-epoch the
// epoch's first samples arrive again marked pad_only: they fill that padding copy and nothing else.
// A sample with a crop or flip still pending (TensorGeometry::pending, engine/item.hpp) is a
// pipeline error: no stage made the tensor it describes.
#pragma once

#include <map>

#include "engine/registry.hpp"

namespace millrace {

class BatchAssembler final : public BatchStage {
 public:
  enum class Last { kPad, kDrop, kPartial };
  struct Params {
    int size = 32;
    Last last = Last::kPad;
  };
  static StageInfo info();
  static const Schema<Params>& schema();

  BatchAssembler(StageContext context, Params params);

  // Describes batches of `size` rows of what arrives.
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;
  void push(const Sample& sample, BatchEmitter& out) override;
  void finish_epoch(std::uint32_t epoch, BatchEmitter& out) override;
  bool pads_from_epoch_start() const override { return params_.last == Last::kPad; }
  int batch_size() const override { return params_.size; }
  std::optional<std::uint64_t> batches_for(std::uint64_t samples) const override;
  std::uint64_t samples_for_another_batch() const override {
    return params_.last == Last::kDrop ? static_cast<std::uint64_t>(params_.size) : 1;
  }
  const Params& params() const { return params_; }

 private:
  struct Open {
    BatchData* partial = nullptr;
    BatchData* first = nullptr;  // the epoch's first rows, kept for padding
  };
  void start_batch(BatchData& b, const Sample& s) const;
  void check_shape(const Sample& s);
  static void append_row(BatchData& b, const Sample& s);
  static void copy_row(BatchData& to, std::size_t to_row, const BatchData& from,
                       std::size_t from_row);

  Params params_;
  std::map<std::uint32_t, Open> open_;
  // The shape every sample of the run must have: the first sample's. Checking against it (not
  // only against the batch being filled) keeps padding rows the same size as the batch's rows.
  Tensor expected_;
  int expected_labels_ = -1;
};

}  // namespace millrace
