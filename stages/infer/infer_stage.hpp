// `infer`: runs an ONNX model on every batch, in int8 (fed the loader's int8 bytes as they are) or
// fp32, on a thread of its own with its own oneDNN (OpenMP) thread budget.
//
// Contract: a batch-transform stage; every call after construction happens on the stage's thread
// (see engine/stage.hpp). The model is imported and checked when the pipeline is built, so a
// missing, corrupt or unsupported model, or one whose input does not match the batches, is a
// config error before any data flows, and so is a calibration table on disk made for another
// model, preprocessing or mode. With int8 precision and no calibration table on disk, the
// first `calibration.batches` batches calibrate the network and are then inferred and delivered
// like the rest: no sample is lost to calibration. The model is hashed once, at construction. The
// logits (outputs before any softmax) are attached to each batch for the sinks after it.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/registry.hpp"
#include "stages/infer/calibration.hpp"
#include "stages/infer/model.hpp"
#include "stages/infer/network.hpp"
#include "stages/infer/onnx_import.hpp"

namespace millrace {

class InferStage final : public BatchTransformStage {
 public:
  struct Params {
    std::string model;
    std::int64_t max_model_bytes = static_cast<std::int64_t>(infer::kDefaultMaxModelBytes);
    infer::Precision precision = infer::Precision::kInt8;
    int calibration_batches = 8;
    infer::CalibrationMode calibration_mode = infer::CalibrationMode::kMinMax;
    std::string calibration_table;
    int threads = 1;
    infer::Parallelism parallel = infer::Parallelism::kSamples;
    bool winograd = false;  // int8: Winograd kernel for wide 3x3 convolutions
    // int8: per-channel scales where convolutions chain. Off by default: on a trained network
    // the weights need the precision it takes from them (docs/PERFORMANCE.md, "int8 on a trained
    // network").
    bool channel_ranges = false;
    std::vector<double> input_mean;  // the model's expectations, pixel units (empty: none given)
    std::vector<double> input_std;
    int top_k = 5;
    int alone = 0;  // runs timed after the stream, with the data stages idle (0: none)
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  InferStage(StageContext context, Params params);
  ~InferStage() override;

  // Wants the layout its first layer reads (NHWC for int8, NCHW for fp32).
  StreamWants want_input(const StreamWants& output) override;
  // Checks the described batches against the model (channels, size, mean) and takes their element
  // type, layout and scaling; describes its output rows (the logits) and top_k.
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;
  void thread_start() override;
  void process(BatchData& batch, BatchEmitter& out) override;
  void flush(BatchEmitter& out) override;
  int max_held() const override { return params_.calibration_batches; }
  const Params& params() const { return params_; }
  std::vector<std::pair<std::string, double>> metrics() const override;

 private:
  void run(BatchData& batch);
  void finish_calibration(BatchEmitter& out);
  void run_alone();
  void check_calibration_table(const std::string& where, Diagnostics& d);
  void store_network_stats();

  Params params_;
  infer::Model model_;
  infer::NetworkOptions options_;
  int batch_size_ = 0;
  std::unique_ptr<infer::Network> network_;
  // The calibration table read from disk and checked at link, loaded into the network on its
  // thread; empty when there is none (this run calibrates and writes it). A table for another
  // network is a config error at link.
  std::optional<infer::CalibrationTable> table_;
  std::vector<BatchData*> held_;
  std::atomic<std::uint64_t> scored_{0};
  std::atomic<std::uint64_t> top1_{0};
  std::atomic<std::uint64_t> topk_{0};
  std::atomic<std::uint64_t> timed_images_{0};  // images of the batches after the first
  bool warm_ = false;                           // a batch has run (stage thread only)
  std::atomic<double> infer_seconds_{0};
  std::atomic<double> calibration_seconds_{0};
  std::atomic<int> input_reorders_{0};
  std::atomic<int> winograd_convolutions_{0};
  // One full batch's input, kept for the `alone` runs at the end of the stream.
  std::vector<std::uint8_t> alone_input_;
  std::vector<float> alone_logits_;
  std::atomic<double> alone_seconds_{0};
  std::atomic<std::uint64_t> alone_images_{0};
};

}  // namespace millrace
