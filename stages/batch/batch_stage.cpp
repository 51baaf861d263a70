#include "stages/batch/batch_stage.hpp"

#include <cstring>

namespace millrace {

namespace {

std::string shape_text(const Tensor& t) {
  std::string s;
  for (int i = 0; i < t.rank; ++i) {
    s += (i > 0 ? "x" : "") + std::to_string(t.shape[static_cast<std::size_t>(i)]);
  }
  return s + " " + std::string(dtype_name(t.dtype));
}

std::size_t row_bytes(const BatchData& b) {
  std::size_t n = dtype_size(b.data.dtype);
  for (int i = 1; i < b.data.rank; ++i)
    n *= static_cast<std::size_t>(b.data.shape[static_cast<std::size_t>(i)]);
  return n;
}

}  // namespace

StageInfo BatchAssembler::info() {
  return {"batch",
          "groups samples into batches; the last one of an epoch is padded, dropped or partial",
          StageShape::kBatch,
          "samples with equal tensor shapes",
          "batches: data (N x sample shape), labels, ids, paths, pad count",
          false,
          true};
}

const Schema<BatchAssembler::Params>& BatchAssembler::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.integer("size", &Params::size, "samples per batch", 1, 1 << 16);
    s.choice(
        "last", &Params::last,
        "the epoch's last, incomplete batch: pad (repeat the epoch's first samples, as MXNet's "
        "round_batch; the pad count is reported), drop, or partial (a smaller batch)",
        {{"pad", Last::kPad}, {"drop", Last::kDrop}, {"partial", Last::kPartial}});
    return s;
  }();
  return schema;
}

BatchAssembler::BatchAssembler(StageContext context, Params params)
    : BatchStage(std::move(context)), params_(params) {}

void BatchAssembler::start_batch(BatchData& b, const Sample& s) const {
  const Tensor& t = s.tensor;
  const auto n = static_cast<std::int64_t>(params_.size);
  b.data.dtype = t.dtype;
  b.data.rank = t.rank + 1;
  b.data.shape[0] = n;
  for (int i = 0; i < t.rank; ++i) {
    b.data.shape[static_cast<std::size_t>(i) + 1] = t.shape[static_cast<std::size_t>(i)];
  }
  b.data.layout = "N" + t.layout;
  b.data.storage.resize(b.data.bytes());
  b.epoch = s.epoch;
  b.rows = 0;
  b.pad = 0;
  b.label_width = static_cast<int>(s.labels.size());
  b.labels.resize(static_cast<std::size_t>(params_.size) * s.labels.size());
  b.ids.resize(static_cast<std::size_t>(params_.size));
  b.paths.resize(static_cast<std::size_t>(params_.size));
  if (s.quantization) {
    b.quantization.unit.assign(s.quantization->unit.begin(), s.quantization->unit.end());
    b.quantization.zero_point = s.quantization->zero_point;
    b.quantization.mxnet_compatible = s.quantization->mxnet_compatible;
  } else {
    b.quantization.unit.clear();
    b.quantization.zero_point = 0;
    b.quantization.mxnet_compatible = false;
  }
}

void BatchAssembler::copy_row(BatchData& to, std::size_t to_row, const BatchData& from,
                              std::size_t from_row) {
  const std::size_t bytes = row_bytes(to);
  std::memcpy(to.data.storage.data() + to_row * bytes, from.data.storage.data() + from_row * bytes,
              bytes);
  const auto w = static_cast<std::size_t>(to.label_width);
  std::copy_n(from.labels.begin() + static_cast<std::ptrdiff_t>(from_row * w), w,
              to.labels.begin() + static_cast<std::ptrdiff_t>(to_row * w));
  to.ids[to_row] = from.ids[from_row];
  to.paths[to_row] = from.paths[from_row];
}

void BatchAssembler::check_shape(const Sample& s) {
  if (s.geometry.pending()) {
    // A crop or flip still pending means nothing materialised the sample: a pipeline bug, not a
    // data error.
    throw std::runtime_error(
        "received a sample with a pending crop or mirror: put a normalize stage before batch");
  }
  const Tensor& t = s.tensor;
  if (t.rank == 0) {
    throw std::runtime_error(
        "received a sample without data: put decode and normalize stages before batch");
  }
  if (expected_labels_ < 0) {
    expected_.dtype = t.dtype;
    expected_.rank = t.rank;
    expected_.shape = t.shape;
    expected_labels_ = static_cast<int>(s.labels.size());
  }
  bool same = t.dtype == expected_.dtype && t.rank == expected_.rank &&
              static_cast<int>(s.labels.size()) == expected_labels_;
  for (int i = 0; same && i < t.rank; ++i) {
    same = t.shape[static_cast<std::size_t>(i)] == expected_.shape[static_cast<std::size_t>(i)];
  }
  if (!same) {
    throw SampleError("sample is " + shape_text(t) + " with " + std::to_string(s.labels.size()) +
                      " label(s); the batches hold " + shape_text(expected_) + " with " +
                      std::to_string(expected_labels_) +
                      " (set augment.size so that all samples match)");
  }
}

void BatchAssembler::append_row(BatchData& b, const Sample& s) {
  const std::size_t bytes = row_bytes(b);
  std::memcpy(b.data.storage.data() + b.rows * bytes, s.tensor.storage.data(), bytes);
  std::copy(s.labels.begin(), s.labels.end(),
            b.labels.begin() + static_cast<std::ptrdiff_t>(b.rows * s.labels.size()));
  b.ids[b.rows] = s.id;
  b.paths[b.rows] = s.path;
  ++b.rows;
}

StreamDesc BatchAssembler::link(const StreamDesc& input, Diagnostics&) {
  StreamDesc out = input;
  out.batch_size = params_.size;
  return out;
}

void BatchAssembler::push(const Sample& s, BatchEmitter& out) {
  check_shape(s);
  Open& open = open_[s.epoch];
  if (s.pad_only) {
    // The epoch's first batch again, in a resumed run: kept to pad from, never delivered.
    if (open.first == nullptr) {
      open.first = &out.acquire();
      start_batch(*open.first, s);
    }
    if (open.first->rows < static_cast<std::size_t>(params_.size)) append_row(*open.first, s);
    return;
  }
  if (open.partial == nullptr) {
    open.partial = &out.acquire();
    start_batch(*open.partial, s);
  }
  BatchData& b = *open.partial;
  append_row(b, s);
  if (s.repeat) {
    ++b.pad;
  } else if (b.pad > 0) {
    // Repeated samples stay the batch's last rows, where `pad` says the padding is (they arrive
    // last in source order, but an unordered run may bring one early).
    const std::size_t first_repeat = b.rows - 1 - static_cast<std::size_t>(b.pad);
    const std::size_t last = b.rows - 1;
    copy_row(b, last, b, first_repeat);
    b.rows = first_repeat;
    append_row(b, s);
    b.rows = last + 1;
  }
  if (b.rows < static_cast<std::size_t>(params_.size)) return;

  if (params_.last == Last::kPad && open.first == nullptr) {
    BatchData& keep = out.acquire();
    start_batch(keep, s);
    keep.label_width = b.label_width;
    keep.labels.resize(b.labels.size());
    for (std::size_t r = 0; r < b.rows; ++r) copy_row(keep, r, b, r);
    keep.rows = b.rows;
    open.first = &keep;
  }
  open.partial = nullptr;
  out.emit(b);
}

std::optional<std::uint64_t> BatchAssembler::batches_for(std::uint64_t samples) const {
  const auto size = static_cast<std::uint64_t>(params_.size);
  return params_.last == Last::kDrop ? samples / size : (samples + size - 1) / size;
}

void BatchAssembler::finish_epoch(std::uint32_t epoch, BatchEmitter& out) {
  auto it = open_.find(epoch);
  if (it == open_.end()) return;
  Open open = it->second;
  open_.erase(it);
  if (open.partial != nullptr) {
    BatchData& b = *open.partial;
    const auto size = static_cast<std::size_t>(params_.size);
    switch (params_.last) {
      case Last::kDrop:
        out.discard(b);
        break;
      case Last::kPartial:
        b.data.shape[0] = static_cast<std::int64_t>(b.rows);
        b.data.storage.resize(b.data.bytes());
        b.ids.resize(b.rows);
        b.paths.resize(b.rows);
        b.labels.resize(b.rows * static_cast<std::size_t>(b.label_width));
        out.emit(b);
        break;
      case Last::kPad: {
        // MXNet's round_batch: the missing rows repeat the epoch's first samples (cycling through
        // the batch itself when the epoch is shorter than one batch).
        const std::size_t filled = b.rows;
        for (std::size_t r = filled; r < size; ++r) {
          const std::size_t k = r - filled;
          if (open.first != nullptr) {
            copy_row(b, r, *open.first, k % open.first->rows);
          } else {
            copy_row(b, r, b, k % filled);
          }
        }
        b.pad += static_cast<int>(size - filled);
        b.rows = size;
        out.emit(b);
        break;
      }
    }
  }
  if (open.first != nullptr) out.discard(*open.first);
}

}  // namespace millrace
