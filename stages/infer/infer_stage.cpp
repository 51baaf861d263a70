#include "stages/infer/infer_stage.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "engine/file_io.hpp"
#include "stages/infer/calibration.hpp"
#include "stages/infer/onnx_import.hpp"

namespace millrace {

namespace {

// Reads a mapping's keys with a per-key handler; unknown keys are errors naming the known ones.
template <class Handler>
void read_map(const ConfigNode& n, const std::string& context,
              const std::vector<std::string>& known, Diagnostics& d, Handler handle) {
  if (!n.is_map()) {
    d.error(n.where, context + " expects a mapping, got " + std::string(n.kind_name()));
    return;
  }
  for (const auto& [key, value] : n.entries) {
    if (std::find(known.begin(), known.end(), key.scalar) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      const std::string hint = nearest(key.scalar, known);
      d.error(key.where, context + ": unknown key '" + key.scalar + "'" +
                             (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                             "; known keys: " + list);
      continue;
    }
    handle(key.scalar, value, context + "." + key.scalar);
  }
}

bool read_three(const ConfigNode& n, const std::string& context, Diagnostics& d,
                std::vector<double>& out) {
  std::vector<double> values;
  if (n.is_sequence()) {
    for (const auto& item : n.items) {
      double v = 0;
      if (!read_number(item, v, context, d)) return false;
      values.push_back(v);
    }
  } else {
    double v = 0;
    if (!read_number(n, v, context, d)) return false;
    values.push_back(v);
  }
  if (values.size() != 1 && values.size() != 3) {
    d.error(n.where, context + " expects 1 or 3 numbers, got " + std::to_string(values.size()));
    return false;
  }
  if (values.size() == 1) values.assign(3, values.front());
  out = values;
  return true;
}

}  // namespace

StageInfo InferStage::info() {
  return {"infer",
          "runs an ONNX model (Conv, BN, ReLU, pools, Add, Gemm, ...) as a oneDNN int8 or fp32 "
          "network on each batch; int8 batches are its first layer's input as they are",
          StageShape::kBatchTransform,
          "batches (int8, uint8 or float32 NCHW/NHWC)",
          "the same batches with the model's logits attached",
          false,
          false};
}

const Schema<InferStage::Params>& InferStage::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.path("model", &Params::model, "fp32 ONNX model (opset 11-17)").required();
    s.integer64("max_model_bytes", &Params::max_model_bytes,
                "refuse a model whose file and external data together exceed this many bytes, "
                "before reading it",
                1, std::numeric_limits<std::int64_t>::max());
    s.choice("precision", &Params::precision,
             "int8 (calibrated post-training quantization) or fp32",
             {{"int8", infer::Precision::kInt8}, {"fp32", infer::Precision::kFp32}});
    s.custom("calibration", "{batches, mode, table}",
             "int8: calibrate on the first `batches` batches (minmax | entropy | mse); `table` "
             "(JSON) is "
             "loaded when it exists (one made for another model, preprocessing or mode is an "
             "error), else written after calibrating; without it nothing is written",
             "{batches: 8, mode: minmax}",
             [](Params& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               read_map(n, c, {"batches", "mode", "table"}, d,
                        [&](const std::string& key, const ConfigNode& v, const std::string& ctx) {
                          if (key == "batches") {
                            std::int64_t b = 0;
                            if (read_int(v, b, ctx, d)) {
                              if (b < 1 || b > 10000) {
                                d.error(v.where, ctx + " is out of range: " + std::to_string(b) +
                                                     " not in 1..10000");
                              } else {
                                p.calibration_batches = static_cast<int>(b);
                              }
                            }
                          } else if (key == "mode") {
                            std::string m;
                            if (!read_string(v, m, ctx, d)) return;
                            if (m == "minmax") {
                              p.calibration_mode = infer::CalibrationMode::kMinMax;
                            } else if (m == "entropy") {
                              p.calibration_mode = infer::CalibrationMode::kEntropy;
                            } else if (m == "mse") {
                              p.calibration_mode = infer::CalibrationMode::kMse;
                            } else {
                              d.error(
                                  v.where,
                                  ctx + " expects one of minmax | entropy | mse, got '" + m + "'");
                            }
                          } else {
                            read_path(v, p.calibration_table, ctx, d);
                          }
                        });
             });
    s.integer("threads", &Params::threads,
              "oneDNN (OpenMP) threads of the stage's own inference thread", 1, 1024);
    s.choice("parallel", &Params::parallel,
             "how the threads share a batch: samples (each thread runs its own contiguous part of "
             "the batch through the whole network, one join per batch) or layers (oneDNN splits "
             "every primitive across the threads, a join per primitive)",
             {{"samples", infer::Parallelism::kSamples}, {"layers", infer::Parallelism::kLayers}});
    s.boolean("winograd", &Params::winograd,
              "int8: 3x3 stride-1 convolutions with at least 128 input channels run oneDNN's "
              "Winograd kernel (fewer multiplications, the same result up to rounding, less "
              "accurate; it can pay where the direct int8 kernel is AVX-512 VNNI, not where it "
              "runs on AMX); false: direct convolution everywhere");
    s.boolean("channel_ranges", &Params::channel_ranges,
              "int8: a value one convolution writes only for convolutions is quantized with a "
              "scale per channel (folded into the two convolutions' scales and weights: no cost "
              "at run time), which moves precision from the reading convolution's weights to "
              "the value: it costs a trained EfficientNet-Lite0 4 points of top-1, so it is off "
              "unless asked for; false: one scale per value");
    s.custom("input", "{mean, std}",
             "what the model was trained on, in pixel units (torchvision: mean [123.675, 116.28, "
             "103.53], std [58.395, 57.12, 57.375]); checked against normalize, 1/std folded into "
             "the first convolution",
             "(none: the model sees the loader's real values)",
             [](Params& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               read_map(n, c, {"mean", "std"}, d,
                        [&](const std::string& key, const ConfigNode& v, const std::string& ctx) {
                          std::vector<double> values;
                          if (!read_three(v, ctx, d, values)) return;
                          if (key == "std" && std::any_of(values.begin(), values.end(),
                                                          [](double x) { return !(x > 0); })) {
                            d.error(v.where, ctx + " must be positive");
                            return;
                          }
                          (key == "mean" ? p.input_mean : p.input_std) = values;
                        });
             });
    s.integer("top_k", &Params::top_k, "classes reported per sample by the predictions sink", 1,
              1000);
    s.integer("alone", &Params::alone,
              "after the stream ends, time this many more runs of the network on a copy of one "
              "batch while the data stages are idle: the metric infer.alone_images_per_second "
              "(inference alone, as a peer that is fed ready tensors measures it); 0: off",
              0, 1000000);
    return s;
  }();
  return schema;
}

void InferStage::check(const Params& p, const ConfigNode& node, const std::string& where,
                       Diagnostics& d) {
  const ConfigNode* model = node.find("model");
  try {
    (void)infer::import_onnx(p.model, static_cast<std::uint64_t>(p.max_model_bytes));
  } catch (const infer::ModelError& e) {
    d.error(model != nullptr ? model->where : node.where, where + ": " + e.what());
  }
}

InferStage::InferStage(StageContext context, Params params)
    : BatchTransformStage(std::move(context)), params_(std::move(params)) {
  model_ = infer::import_onnx(params_.model, static_cast<std::uint64_t>(params_.max_model_bytes));
  // Hashed once, here: the calibration table's check and the Network reuse the digest.
  model_.digest = infer::model_digest(model_);
  options_.precision = params_.precision;
  options_.threads = params_.threads;
  options_.parallel = params_.parallel;
  options_.winograd = params_.winograd;
  options_.channel_ranges = params_.channel_ranges;
  options_.calibration = params_.calibration_mode;
  if (!params_.input_std.empty()) {
    for (int c = 0; c < 3; ++c) {
      options_.input.model_std[static_cast<std::size_t>(c)] =
          static_cast<float>(params_.input_std[static_cast<std::size_t>(c)]);
    }
  }
}

InferStage::~InferStage() = default;

StreamWants InferStage::want_input(const StreamWants& output) {
  // `auto` layouts take what the first primitive reads; an explicit one is honoured (and costs a
  // reorder per batch when it differs, which the metrics report).
  StreamWants wants = Stage::want_input(output);
  wants.layout = params_.precision == infer::Precision::kInt8 ? Layout::kNHWC : Layout::kNCHW;
  return wants;
}

StreamDesc InferStage::link(const StreamDesc& input, Diagnostics& d) {
  const std::string where = "stage '" + name() + "' (infer)";
  StreamDesc out = input;
  out.outputs_stage = name();
  out.output_width = 0;
  if (model_.output >= 0 && model_.output < model_.value_count()) {
    std::int64_t width = 1;
    const auto& shape = model_.value_shapes[static_cast<std::size_t>(model_.output)];
    for (std::size_t i = 1; i < shape.size(); ++i) width *= shape[i];
    out.output_width = static_cast<int>(width);
  }
  out.top_k = params_.top_k;
  if (!input.scaling || input.batch_size <= 0) {
    d.error(context().where, where + ": needs a normalize stage and a batch stage before it");
    return out;
  }
  batch_size_ = input.batch_size;
  options_.batch = batch_size_;

  // The batches' pixels must be what the model takes.
  const auto& in = model_.input_shape;
  if (in[1] != 3) {
    d.error(context().where, where + ": model '" + params_.model + "' takes " +
                                 std::to_string(in[1]) + " input channels; the loader gives 3");
  }
  const auto [height, width] = input.spatial();
  if (!input.shape_stage.empty() && height != 0 && (height != in[2] || width != in[3])) {
    d.error(context().where, where + ": model '" + params_.model + "' takes " +
                                 std::to_string(in[2]) + "x" + std::to_string(in[3]) +
                                 " images but stage '" + input.shape_stage + "' crops " +
                                 std::to_string(height) + "x" + std::to_string(width));
  }

  // The loader's integers and the model's expectations must agree on the mean (int8-contract.md,
  // section 3): with int8 a padded 0 then means "the mean pixel", as the float model sees it.
  const StreamScaling& scaling = *input.scaling;
  if (!params_.input_mean.empty()) {
    for (std::size_t c = 0; c < 3; ++c) {
      const double loader = scaling.mean[c];
      const double model = params_.input_mean[c];
      // MXNet-compatible int8 rounds the mean, so agreement is to rounding.
      const double tolerance = scaling.mxnet_compatible ? 0.5 + 1e-9 : 1e-3;
      if (std::abs(std::round(loader) - model) > tolerance &&
          std::abs(loader - model) > tolerance) {
        d.error(context().where, where + ": the model expects mean " + format_number(model) +
                                     " on channel " + std::to_string(c) + " but stage '" +
                                     scaling.stage + "' subtracts " + format_number(loader) +
                                     " (they must agree, to rounding)");
        break;
      }
    }
  }
  for (std::size_t c = 0; c < 3; ++c) options_.input.mean[c] = static_cast<float>(scaling.mean[c]);
  options_.input.type = input.dtype;
  for (std::size_t c = 0; c < 3; ++c) options_.input.unit[c] = scaling.unit[c];
  options_.input.zero_point = scaling.zero_point;
  options_.input.layout = input.layout == Layout::kNHWC ? Layout::kNHWC : Layout::kNCHW;
  check_calibration_table(where, d);
  return out;
}

void InferStage::check_calibration_table(const std::string& where, Diagnostics& d) {
  const std::string& path = params_.calibration_table;
  if (params_.precision != infer::Precision::kInt8 || path.empty()) return;
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
    // Written after calibration: a table that cannot be is found now, not after the run.
    const std::string problem = output_file_problem(path);
    if (!problem.empty()) {
      d.error(context().where,
              where + ": calibration table '" + path + "' cannot be written: " + problem);
    }
    return;
  }
  // A table that exists was named to be used: one made for another model, preprocessing or mode
  // would give wrong logits without a word, so it is an error, never silently used or replaced.
  try {
    infer::CalibrationTable table = infer::load_calibration_table(path);
    const std::string ours = infer::calibration_fingerprint(model_, options_.input);
    std::string differs = infer::fingerprint_mismatch(table.fingerprint, ours);
    if (table.mode != params_.calibration_mode) {
      differs += std::string(differs.empty() ? "" : "; ") + "mode " +
                 infer::calibration_mode_name(table.mode) + " in the table, " +
                 infer::calibration_mode_name(params_.calibration_mode) + " here";
    }
    if (differs.empty()) {
      table_ = std::move(table);
      return;
    }
    d.error(context().where,
            where + ": calibration table '" + path + "' was made for another model or recipe (" +
                differs + "); the table's fingerprint: '" + table.fingerprint +
                "'; this stage's: '" + ours +
                "'. Delete the file to calibrate again, or set calibration.table to another file");
  } catch (const infer::CalibrationError& e) {
    d.error(context().where, where + ": " + e.what() + " (delete it to calibrate again)");
  }
}

void InferStage::thread_start() {
  network_ = std::make_unique<infer::Network>(model_, options_);
  if (network_->needs_calibration() && table_) {
    network_->load_calibration(std::move(*table_), params_.calibration_table);
    table_.reset();
  }
  store_network_stats();
}

void InferStage::store_network_stats() {
  // They change only when the network builds its primitives: at start, and when calibrated.
  input_reorders_.store(network_->stats().input_reorders_per_batch);
  winograd_convolutions_.store(network_->stats().winograd_convolutions);
}

void InferStage::run(BatchData& b) {
  const int rows = static_cast<int>(b.rows);
  const int classes = network_->classes();
  b.output_width = classes;
  b.outputs.resize(static_cast<std::size_t>(rows) * static_cast<std::size_t>(classes));
  const auto t0 = std::chrono::steady_clock::now();
  network_->run(b.data.storage.data(), rows, b.outputs.data());
  // Steady state, like the pipeline's own images/s: the first, cold batch is left out.
  if (warm_) {
    infer_seconds_.store(
        infer_seconds_.load() +
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    timed_images_.fetch_add(static_cast<std::uint64_t>(rows));
  }
  warm_ = true;
  // One copy, of the first full batch: the int8 and fp32 kernels' speed does not depend on the
  // values, so one batch stands for all of them.
  if (params_.alone > 0 && alone_input_.empty() && rows == batch_size_ && b.pad == 0) {
    alone_input_.assign(b.data.storage.begin(),
                        b.data.storage.begin() + static_cast<std::ptrdiff_t>(b.data.bytes()));
  }

  // Accuracy against the labels (the first label of each row), pad rows excluded.
  const std::size_t real = b.rows - static_cast<std::size_t>(b.pad);
  const auto k = static_cast<std::size_t>(std::min(params_.top_k, classes));
  std::uint64_t top1 = 0;
  std::uint64_t topk = 0;
  for (std::size_t r = 0; r < real; ++r) {
    const float* row = b.outputs.data() + r * static_cast<std::size_t>(classes);
    const auto label = static_cast<int>(b.labels[r * static_cast<std::size_t>(b.label_width)]);
    if (label < 0 || label >= classes) continue;
    int better = 0;  // classes that score above the label's
    for (int c = 0; c < classes; ++c) better += row[c] > row[label] ? 1 : 0;
    top1 += better == 0 ? 1 : 0;
    topk += static_cast<std::size_t>(better) < k ? 1 : 0;
  }
  scored_.fetch_add(real);
  top1_.fetch_add(top1);
  topk_.fetch_add(topk);
}

void InferStage::finish_calibration(BatchEmitter& out) {
  const auto t0 = std::chrono::steady_clock::now();
  network_->finalize_calibration();
  if (!params_.calibration_table.empty()) network_->save_calibration(params_.calibration_table);
  store_network_stats();
  calibration_seconds_.store(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  for (BatchData* h : held_) {
    run(*h);
    out.emit(*h);
  }
  held_.clear();
}

void InferStage::process(BatchData& b, BatchEmitter& out) {
  if (network_->needs_calibration()) {
    const auto t0 = std::chrono::steady_clock::now();
    network_->observe(b.data.storage.data(), static_cast<int>(b.rows));
    calibration_seconds_.store(
        calibration_seconds_.load() +
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    held_.push_back(&b);
    if (static_cast<int>(held_.size()) == params_.calibration_batches) finish_calibration(out);
    return;
  }
  run(b);
  out.emit(b);
}

void InferStage::flush(BatchEmitter& out) {
  // A stream shorter than the calibration window: calibrate on what there is.
  if (network_ && !held_.empty()) finish_calibration(out);
  if (network_ && !alone_input_.empty()) run_alone();
}

void InferStage::run_alone() {
  // Every upstream stage has finished, so the network has the cores to itself: this is the
  // figure to hold against a peer that times its model on ready-made tensors.
  alone_logits_.resize(static_cast<std::size_t>(batch_size_) *
                       static_cast<std::size_t>(network_->classes()));
  network_->run(alone_input_.data(), batch_size_, alone_logits_.data());  // warm the caches
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < params_.alone; ++i) {
    network_->run(alone_input_.data(), batch_size_, alone_logits_.data());
  }
  alone_seconds_.store(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  alone_images_.store(static_cast<std::uint64_t>(params_.alone) *
                      static_cast<std::uint64_t>(batch_size_));
}

std::vector<std::pair<std::string, double>> InferStage::metrics() const {
  std::vector<std::pair<std::string, double>> m;
  const auto scored = scored_.load();
  if (scored > 0) {
    m.emplace_back("top1_accuracy",
                   static_cast<double>(top1_.load()) / static_cast<double>(scored));
    m.emplace_back("top" + std::to_string(params_.top_k) + "_accuracy",
                   static_cast<double>(topk_.load()) / static_cast<double>(scored));
  }
  const double seconds = infer_seconds_.load();
  if (seconds > 0) {
    m.emplace_back("inference_images_per_second",
                   static_cast<double>(timed_images_.load()) / seconds);
  }
  if (alone_seconds_.load() > 0) {
    m.emplace_back("alone_images_per_second",
                   static_cast<double>(alone_images_.load()) / alone_seconds_.load());
  }
  m.emplace_back("calibration_seconds", calibration_seconds_.load());
  m.emplace_back("input_reorders_per_batch", input_reorders_.load());
  m.emplace_back("winograd_convolutions", winograd_convolutions_.load());
  return m;
}

}  // namespace millrace
