#include "stages/sinks/sinks.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>

#include "engine/file_io.hpp"
#include "engine/json.hpp"

namespace millrace {

namespace {

std::string io_error(const std::string& path, const char* what, int error = errno) {
  return path + ": cannot " + what + ": " +
         std::error_code(error, std::generic_category()).message();
}

// Writes every byte of `parts`, resuming after short writes and signals. False with errno set on
// failure (a full disk reports ENOSPC here, or only at close() on some file systems).
bool write_all(int fd, iovec* parts, int count) {
  while (count > 0) {
    const ssize_t n = ::writev(fd, parts, count);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) {
      errno = EIO;
      return false;
    }
    auto done = static_cast<std::size_t>(n);
    while (count > 0 && done >= parts->iov_len) {
      done -= parts->iov_len;
      ++parts;
      --count;
    }
    if (count > 0) {
      parts->iov_base = static_cast<char*>(parts->iov_base) + done;
      parts->iov_len -= done;
    }
  }
  return true;
}

// Appends `text` to `fd` (opened O_APPEND) in one write where the system allows, resuming after
// short writes; a write cut short (a full disk) is cut back off, so that the file never ends in
// part of `text`. `size` is the file's length, kept up to date. On failure returns the errno.
int append_whole(int fd, const std::string& text, std::uint64_t& size) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : EIO;
      if (done > 0 && ::ftruncate(fd, static_cast<off_t>(size)) != 0) return errno;
      return error;
    }
    done += static_cast<std::size_t>(n);
  }
  size += text.size();
  return 0;
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
               const void* data, std::size_t bytes, bool sync) {
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
  unsigned char preamble[10] = {0x93,
                                'N',
                                'U',
                                'M',
                                'P',
                                'Y',
                                1,
                                0,
                                static_cast<unsigned char>(header.size() & 0xFF),
                                static_cast<unsigned char>(header.size() >> 8)};
  iovec parts[3] = {{preamble, sizeof preamble},
                    {header.data(), header.size()},
                    {const_cast<void*>(data), bytes}};  // NOLINT: writev only reads it

  const std::string temp = npy_temp_path(path);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw std::runtime_error(io_error(path, "create"));
  bool ok = write_all(fd, parts, bytes == 0 ? 2 : 3) && (!sync || ::fdatasync(fd) == 0);
  int error = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (ok && ::rename(temp.c_str(), path.c_str()) != 0) {
    error = errno;
    ::unlink(temp.c_str());
    throw std::runtime_error(io_error(path, "rename its temporary file into place", error));
  }
  if (!ok) {
    ::unlink(temp.c_str());
    throw std::runtime_error(io_error(path, "write", error));
  }
}

std::string npy_temp_path(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  const std::size_t name = slash == std::string::npos ? 0 : slash + 1;
  return path.substr(0, name) + "." + path.substr(name) + ".tmp";
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
    s.path("dir", &Params::dir,
           "output folder (created if missing): batch_<k:06d>_data.npy, batch_<k:06d>_label.npy, "
           "batches.jsonl; under MPI each rank writes in rank<k>/ inside it")
        .required();
    s.choice("fsync", &Params::fsync,
             "when the files reach the disk: end (the file system is flushed when the run stops), "
             "batch (each batch's files and the folder before its batches.jsonl line: no line "
             "names a lost file even after a power loss, at a cost in throughput) or none (left to "
             "the system); a killed run never leaves a partial file in any mode",
             {{"end", Sync::kEnd}, {"batch", Sync::kBatch}, {"none", Sync::kNone}});
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
  if (index_ >= 0) ::close(index_);
}

namespace {

// batch_<digits>_<name>.npy, as consume() names the files it writes.
bool is_batch_file_name(const std::string& file) {
  constexpr std::string_view kPrefix = "batch_";
  if (file.rfind(kPrefix, 0) != 0 || file.size() < 4 ||
      file.compare(file.size() - 4, 4, ".npy") != 0) {
    return false;
  }
  std::size_t i = kPrefix.size();
  const std::size_t digits = i;
  while (i < file.size() && file[i] >= '0' && file[i] <= '9') ++i;
  return i > digits && i < file.size() && file[i] == '_';
}

}  // namespace

void NpySink::open() {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    throw std::runtime_error("stage '" + name() + "': cannot create folder '" + dir_ +
                             "': " + ec.message());
  }
  // A run killed while writing leaves its temporary file; it is ours (a hidden .batch_*.tmp),
  // never a result, and would otherwise stay forever. An earlier run's batch files go too: the
  // index is started afresh, and a shorter run would leave the earlier run's later batches beside
  // it, where a reader of the folder would take them for this run's.
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    const std::string file = entry.path().filename().string();
    const bool temporary = file.rfind(".batch_", 0) == 0 && file.size() > 4 &&
                           file.compare(file.size() - 4, 4, ".tmp") == 0;
    if (temporary || is_batch_file_name(file)) std::filesystem::remove(entry.path(), ec);
  }
  const std::string index = dir_ + "/batches.jsonl";
  index_ = ::open(index.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0666);
  if (index_ < 0) throw std::runtime_error(io_error(index, "create"));
  index_bytes_ = 0;
}

void NpySink::consume(const BatchData& b) {
  char stem[32];
  std::snprintf(stem, sizeof stem, "/batch_%06llu", static_cast<unsigned long long>(b.index));
  const std::string base = dir_ + stem;
  files_.clear();
  // The files written so far are removed if a later one fails: a batch is whole or absent.
  auto write = [&](const std::string& path, DType dtype, const std::int64_t* shape, int rank,
                   const void* data, std::size_t bytes) {
    try {
      write_npy(path, dtype, shape, rank, data, bytes, params_.fsync == Sync::kBatch);
    } catch (...) {
      for (const auto& f : files_) ::unlink(f.c_str());
      throw;
    }
    files_.push_back(path);
  };
  write(base + "_data.npy", b.data.dtype, b.data.shape.data(), b.data.rank, b.data.storage.data(),
        b.data.bytes());
  if (b.output_width > 0) {
    const std::int64_t output_shape[2] = {static_cast<std::int64_t>(b.rows), b.output_width};
    write(base + "_logits.npy", DType::kFloat32, output_shape, 2, b.outputs.data(),
          b.outputs.size() * sizeof(float));
  }
  const std::int64_t label_shape[2] = {static_cast<std::int64_t>(b.rows), b.label_width};
  write(base + "_label.npy", DType::kFloat32, label_shape, b.label_width == 1 ? 1 : 2,
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
  append_index_line(files_);
}

// With `fsync: batch` the renames reach the disk before the line that names them. The line is
// appended whole or not at all; a batch whose line cannot be written loses its files too, so that
// a reader of the folder sees the batches the index names and nothing else.
void NpySink::append_index_line(const std::vector<std::string>& files) {
  const std::string index = dir_ + "/batches.jsonl";
  auto drop_batch = [&](const std::string& path, const char* what, int error) {
    for (const auto& f : files) ::unlink(f.c_str());
    throw std::runtime_error(io_error(path, what, error));
  };
  if (params_.fsync == Sync::kBatch) {
    const int dir = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) drop_batch(dir_, "open the folder to flush it", errno);
    if (::fsync(dir) != 0) {
      const int error = errno;
      ::close(dir);
      drop_batch(dir_, "flush the folder to the disk", error);
    }
    ::close(dir);
  }
  if (const int error = append_whole(index_, line_, index_bytes_))
    drop_batch(index, "write", error);
}

// Runs at the end of every run, also one that failed or was interrupted: what was written is then
// on the disk.
void NpySink::finish() {
  if (index_ < 0) return;
  const int fd = index_;
  index_ = -1;
  const bool synced = params_.fsync == Sync::kNone || ::syncfs(fd) == 0;
  const int error = errno;
  if (!synced) {
    ::close(fd);
    throw std::runtime_error(io_error(dir_, "flush the written files to the disk", error));
  }
  if (::close(fd) != 0) throw std::runtime_error(io_error(dir_ + "/batches.jsonl", "write"));
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
    s.path("path", &Params::path,
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
  if (out_ >= 0) ::close(out_);
}

StreamDesc PredictionsSink::link(const StreamDesc& input, Diagnostics& d) {
  if (input.outputs_stage.empty()) {
    d.error(context().where, "stage '" + name() +
                                 "' (predictions): needs an infer stage before it (it writes the "
                                 "model's predictions)");
  } else if (params_.top_k == 0) {
    params_.top_k = input.top_k;
  }
  return input;
}

void PredictionsSink::open() {
  const auto parent = std::filesystem::path(path_).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  // A FIFO in the file's place would block the open until a reader came.
  if (const std::string problem = output_file_problem(path_); !problem.empty()) {
    throw std::runtime_error(path_ + ": cannot create: " + problem);
  }
  out_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0666);
  if (out_ < 0) throw std::runtime_error(io_error(path_, "create"));
  out_bytes_ = 0;
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
  lines_.clear();
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
    lines_ += json.str();
    lines_ += '\n';
  }
  // A batch's lines in one append: a killed run leaves no partial line.
  if (const int error = append_whole(out_, lines_, out_bytes_)) {
    throw std::runtime_error(io_error(path_, "write", error));
  }
}

void PredictionsSink::finish() {
  if (out_ < 0) return;
  const int fd = out_;
  out_ = -1;
  if (::close(fd) != 0) throw std::runtime_error(io_error(path_, "write"));
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
