#include "stages/sinks/sinks.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "engine/json.hpp"
#include "stages/infer/infer_stage.hpp"

namespace millrace {

namespace {

std::string io_error(const std::string& path, const char* what) {
  return path + ": cannot " + what + ": " +
         std::error_code(errno, std::generic_category()).message();
}

const char* npy_descr(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return "|u1";
    case DType::kInt8:
      return "|i1";
    case DType::kFloat32:
      return "<f4";
  }
  return "|u1";
}

}  // namespace

void write_npy(const std::string& path, DType dtype, const std::int64_t* shape, int rank,
               const void* data, std::size_t bytes) {
  std::string header = "{'descr': '";
  header += npy_descr(dtype);
  header += "', 'fortran_order': False, 'shape': (";
  for (int i = 0; i < rank; ++i)
    header += std::to_string(shape[i]) + (rank == 1 || i + 1 < rank ? ", " : "");
  header += "), }";
  // Format 1.0: magic (6) + version (2) + header length (2) + header, padded with spaces and a
  // newline so that the data starts on a 64-byte boundary.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error(io_error(path, "create"));
  const unsigned char preamble[10] = {0x93,
                                      'N',
                                      'U',
                                      'M',
                                      'P',
                                      'Y',
                                      1,
                                      0,
                                      static_cast<unsigned char>(header.size() & 0xFF),
                                      static_cast<unsigned char>(header.size() >> 8)};
  bool ok = std::fwrite(preamble, 1, sizeof preamble, f) == sizeof preamble &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            (bytes == 0 || std::fwrite(data, 1, bytes, f) == bytes);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) throw std::runtime_error(io_error(path, "write"));
}

StageInfo NpySink::info() {
  return {"npy",
          "writes each batch as NumPy .npy files (data and labels) plus a batches.jsonl index",
          StageShape::kSink,
          "batches",
          "the same batches, unchanged",
          false,
          false};
}

const Schema<NpySink::Params>& NpySink::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.string("dir", &Params::dir,
             "output folder (created if missing): batch_<k:06d>_data.npy, batch_<k:06d>_label.npy, "
             "batches.jsonl; under MPI each rank writes in rank<k>/ inside it")
        .required();
    return s;
  }();
  return schema;
}

NpySink::NpySink(StageContext context, Params params)
    : SinkStage(std::move(context)), params_(std::move(params)) {
  dir_ = this->context().world > 1 ? params_.dir + "/rank" + std::to_string(this->context().rank)
                                   : params_.dir;
}

NpySink::~NpySink() {
  if (index_ != nullptr) std::fclose(index_);
}

void NpySink::open() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    throw std::runtime_error("stage '" + name() + "': cannot create folder '" + dir_ +
                             "': " + ec.message());
  }
  const std::string index = dir_ + "/batches.jsonl";
  index_ = std::fopen(index.c_str(), "w");
  if (index_ == nullptr) throw std::runtime_error(io_error(index, "create"));
}

void NpySink::consume(const BatchData& b) {
  char stem[32];
  std::snprintf(stem, sizeof stem, "/batch_%06llu", static_cast<unsigned long long>(b.index));
  const std::string base = dir_ + stem;
  write_npy(base + "_data.npy", b.data.dtype, b.data.shape.data(), b.data.rank,
            b.data.storage.data(), b.data.bytes());
  if (b.output_width > 0) {
    const std::int64_t output_shape[2] = {static_cast<std::int64_t>(b.rows), b.output_width};
    write_npy(base + "_logits.npy", DType::kFloat32, output_shape, 2, b.outputs.data(),
              b.outputs.size() * sizeof(float));
  }
  const std::int64_t label_shape[2] = {static_cast<std::int64_t>(b.rows), b.label_width};
  write_npy(base + "_label.npy", DType::kFloat32, label_shape, b.label_width == 1 ? 1 : 2,
            b.labels.data(), b.rows * static_cast<std::size_t>(b.label_width) * sizeof(float));

  JsonWriter json;
  json.begin_object().key("index").value(b.index).key("epoch").value(
      static_cast<std::uint64_t>(b.epoch));
  json.key("ids").begin_array();
  for (std::size_t r = 0; r < b.rows; ++r) json.value(b.ids[r]);
  json.end_array().key("paths").begin_array();
  for (std::size_t r = 0; r < b.rows; ++r) json.value(b.paths[r]);
  json.end_array();
  json.key("pad").value(b.pad).key("layout").value(b.data.layout);
  json.key("dtype").value(std::string(dtype_name(b.data.dtype)));
  json.key("shape").begin_array();
  for (int i = 0; i < b.data.rank; ++i) json.value(b.data.shape[static_cast<std::size_t>(i)]);
  json.end_array();
  if (!b.quantization.unit.empty()) {
    json.key("quantization").begin_object().key("unit").begin_array();
    for (float u : b.quantization.unit) json.value(static_cast<double>(u));
    json.end_array().key("zero_point").value(static_cast<double>(b.quantization.zero_point));
    json.key("mxnet_compatible").value(b.quantization.mxnet_compatible).end_object();
  }
  json.end_object();
  line_ = json.str();
  line_ += '\n';
  if (std::fwrite(line_.data(), 1, line_.size(), index_) != line_.size()) {
    throw std::runtime_error(io_error(dir_ + "/batches.jsonl", "write"));
  }
}

void NpySink::finish() {
  if (index_ != nullptr && std::fflush(index_) != 0) {
    throw std::runtime_error(io_error(dir_ + "/batches.jsonl", "write"));
  }
}

StageInfo PredictionsSink::info() {
  return {"predictions",
          "writes one JSON line per sample: id, path, label, top_k [[class, score], ...] (softmax "
          "scores of the logits an infer stage attached)",
          StageShape::kSink,
          "batches with logits",
          "the same batches, unchanged",
          false,
          false};
}

const Schema<PredictionsSink::Params>& PredictionsSink::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.string("path", &Params::path,
             "output .jsonl file (folders created); under MPI, rank<k>/ is inserted before the "
             "file name")
        .required();
    s.integer("top_k", &Params::top_k,
              "classes per sample, best first; 0: the top_k of the infer stage before it", 0, 1000);
    return s;
  }();
  return schema;
}

PredictionsSink::PredictionsSink(StageContext context, Params params)
    : SinkStage(std::move(context)), params_(std::move(params)) {
  const std::filesystem::path p(params_.path);
  path_ = this->context().world > 1
              ? (p.parent_path() / ("rank" + std::to_string(this->context().rank)) / p.filename())
                    .string()
              : params_.path;
}

PredictionsSink::~PredictionsSink() {
  if (out_ != nullptr) std::fclose(out_);
}

void PredictionsSink::link(const std::vector<Stage*>& upstream, Diagnostics& d) {
  for (auto it = upstream.rbegin(); it != upstream.rend(); ++it) {
    if (const auto* infer = dynamic_cast<const InferStage*>(*it)) {
      if (params_.top_k == 0) params_.top_k = infer->params().top_k;
      return;
    }
  }
  d.error(context().where, "stage '" + name() +
                               "' (predictions): needs an infer stage before it (it writes the "
                               "model's predictions)");
}

void PredictionsSink::open() {
  const auto parent = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  out_ = std::fopen(path_.c_str(), "w");
  if (out_ == nullptr) throw std::runtime_error(io_error(path_, "create"));
}

void PredictionsSink::consume(const BatchData& b) {
  if (b.output_width <= 0) {
    throw std::runtime_error("batch " + std::to_string(b.index) + " carries no model outputs");
  }
  const auto classes = static_cast<std::size_t>(b.output_width);
  const std::size_t k = std::min(classes, static_cast<std::size_t>(params_.top_k));
  order_.resize(classes);
  scores_.resize(classes);
  const std::size_t real = b.rows - static_cast<std::size_t>(b.pad);
  for (std::size_t r = 0; r < real; ++r) {
    const float* logits = b.outputs.data() + r * classes;
    const double top = *std::max_element(logits, logits + classes);
    double sum = 0;
    for (std::size_t c = 0; c < classes; ++c) {
      scores_[c] = std::exp(static_cast<double>(logits[c]) - top);
      sum += scores_[c];
    }
    for (std::size_t c = 0; c < classes; ++c) order_[c] = static_cast<int>(c);
    std::partial_sort(
        order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(k), order_.end(),
        [&](int x, int y) { return logits[x] > logits[y] || (logits[x] == logits[y] && x < y); });
    JsonWriter json;
    json.begin_object().key("id").value(b.ids[r]).key("path").value(b.paths[r]);
    json.key("label").value(
        static_cast<double>(b.labels[r * static_cast<std::size_t>(b.label_width)]));
    json.key("top_k").begin_array();
    for (std::size_t i = 0; i < k; ++i) {
      const auto c = static_cast<std::size_t>(order_[i]);
      json.begin_array().value(order_[i]).value(scores_[c] / sum).end_array();
    }
    json.end_array().end_object();
    line_ = json.str();
    line_ += '\n';
    if (std::fwrite(line_.data(), 1, line_.size(), out_) != line_.size()) {
      throw std::runtime_error(io_error(path_, "write"));
    }
  }
}

void PredictionsSink::finish() {
  if (out_ != nullptr && std::fflush(out_) != 0) throw std::runtime_error(io_error(path_, "write"));
}

StageInfo DiscardSink::info() {
  return {"discard",
          "consumes batches and drops them (for benchmarks); counts only",
          StageShape::kSink,
          "batches",
          "the same batches, unchanged",
          false,
          false};
}

const Schema<DiscardSink::Params>& DiscardSink::schema() {
  static const Schema<Params> schema;
  return schema;
}

DiscardSink::DiscardSink(StageContext context, Params) : SinkStage(std::move(context)) {}

void DiscardSink::consume(const BatchData&) { ++batches_; }

}  // namespace millrace
