// Sinks: stages that consume batches and pass them on unchanged.
//
// Contract: serial; consume() sees batches in stream order. `npy` creates its folder when the run
// opens (missing parents included) and writes one pair of .npy files per batch plus one line
// of batches.jsonl; finish() flushes. `discard` only counts.
//
// What a reader of an `npy` folder can rely on, whenever the run stopped (finished, failed,
// interrupted or killed): every .npy file is whole or absent (each is written to a hidden
// `.NAME.tmp` beside it and renamed into place), and every line of batches.jsonl is whole and names
// files that exist, because a batch's line is appended, in one write, only after its files are in
// place. A write error (a full disk, a read-only or vanished folder) removes the batch's partial
// files and fails the run with the file's name and the system's reason. `fsync` says when the
// data reaches the disk: `end` (the default) flushes the folder's file system when the run stops,
// so that a run that has returned is on the disk; `batch` flushes each file before its rename and
// the folder before the batch's line, so that the promise above also holds after a power loss
// mid-run (at a cost in throughput measured in docs/RELIABILITY.md); `none` leaves it to the
// system.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/registry.hpp"

namespace millrace {

// Writes `tensor`-like data as a NumPy .npy (format 1.0) file, atomically: through a temporary
// file in the same folder renamed into place, so `path` is never seen half-written. `sync` flushes
// the data to the disk before the rename. On I/O failure the temporary file is removed and
// std::runtime_error names `path` and the system's reason.
void write_npy(const std::string& path, DType dtype, const std::int64_t* shape, int rank,
               const void* data, std::size_t bytes, bool sync = false);

// The hidden temporary name write_npy() writes `path` under before renaming it.
std::string npy_temp_path(const std::string& path);

class NpySink final : public SinkStage {
 public:
  enum class Sync { kBatch, kEnd, kNone };
  struct Params {
    std::string dir;
    Sync fsync = Sync::kEnd;
  };
  static StageInfo info();
  static const Schema<Params>& schema();

  NpySink(StageContext context, Params params);
  ~NpySink() override;

  void open() override;
  void consume(const BatchData& batch) override;
  void finish() override;

 private:
  void append_index_line(const std::vector<std::string>& files);

  Params params_;
  std::string dir_;  // params_.dir, or its rank<k>/ sub-folder in a multi-process run
  int index_ = -1;   // batches.jsonl, opened for appending
  std::uint64_t index_bytes_ = 0;
  std::string line_;
  std::vector<std::string> files_;
};

// One JSON line per sample (pad rows excluded): id, path, label, and the top_k classes with their
// softmax scores, from the logits a batch transform (infer) attached. A batch's lines are appended
// in one write, cut back if it is cut short: the file never ends in a partial line.
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

  // Takes top_k from the stream when it is 0; an error without outputs on its input.
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;
  void open() override;
  void consume(const BatchData& batch) override;
  void finish() override;

 private:
  Params params_;
  std::string path_;
  int out_ = -1;  // opened for appending
  std::uint64_t out_bytes_ = 0;
  std::string lines_;  // the batch's lines, appended in one write
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
