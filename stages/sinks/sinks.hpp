// Sinks: stages that consume batches and pass them on unchanged.
//
// Contract: serial; consume() sees batches in stream order. `npy` creates its folder when the run
// opens (missing parents included) and writes one pair of .npy files per batch plus one line
// of batches.jsonl; finish() flushes. `discard` only counts.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "engine/registry.hpp"

namespace millrace {

// Writes `tensor`-like data as a NumPy .npy (format 1.0) file. Throws std::runtime_error naming
// the path on I/O failure.
void write_npy(const std::string& path, DType dtype, const std::int64_t* shape, int rank,
               const void* data, std::size_t bytes);

class NpySink final : public SinkStage {
 public:
  struct Params {
    std::string dir;
  };
  static StageInfo info();
  static const Schema<Params>& schema();

  NpySink(StageContext context, Params params);
  ~NpySink() override;

  void open() override;
  void consume(const BatchData& batch) override;
  void finish() override;

 private:
  Params params_;
  std::string dir_;  // params_.dir, or its rank<k>/ sub-folder in a multi-process run
  std::FILE* index_ = nullptr;
  std::string line_;
};

// One JSON line per sample (pad rows excluded): id, path, label, and the top_k classes with their
// softmax scores, from the logits a batch transform (infer) attached.
class PredictionsSink final : public SinkStage {
 public:
  struct Params {
    std::string path;
    int top_k = 0;  // 0: the infer stage's top_k
  };
  static StageInfo info();
  static const Schema<Params>& schema();

  PredictionsSink(StageContext context, Params params);
  ~PredictionsSink() override;

  void link(const std::vector<Stage*>& upstream, Diagnostics& diagnostics) override;
  void open() override;
  void consume(const BatchData& batch) override;
  void finish() override;

 private:
  Params params_;
  std::string path_;
  std::FILE* out_ = nullptr;
  std::string line_;
  std::vector<int> order_;
  std::vector<double> scores_;
};

class DiscardSink final : public SinkStage {
 public:
  struct Params {};
  static StageInfo info();
  static const Schema<Params>& schema();

  DiscardSink(StageContext context, Params params);
  void consume(const BatchData& batch) override;

  std::uint64_t batches() const { return batches_; }

 private:
  std::uint64_t batches_ = 0;
};

}  // namespace millrace
