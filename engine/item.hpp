// The data that travels through a pipeline: samples and batches.
//
// Contract: Sample and BatchData objects are owned by the engine's pools and recycled, never
// allocated per item in steady state: every buffer keeps its capacity across uses. While a stage
// holds an item it is the only one touching it, so items need no locks. The engine knows nothing
// about images: a Sample carries encoded bytes, a current tensor, a scratch tensor that stages
// swap with it, and the current tensor's geometry relative to its source (TensorGeometry), which
// stages set and read and the engine never does.
//
// A tensor's storage is either its own or borrowed from a BufferPool (Tensor::borrow): stages put
// large intermediate data that a sample needs only for a while in borrowed storage and give it
// back as soon as they have read it, so that a sample waiting for its turn further down the
// pipeline holds only its own, small, output. Sample::reset() gives back whatever is still
// borrowed (a sample dropped on an error or a cancellation), so a buffer always returns to its
// pool when its sample is recycled.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/pool.hpp"
#include "millrace/batch.hpp"

namespace millrace {

// Sizes a reused buffer. When it must grow it reserves twice what is needed (at most 32 MiB more),
// so a pooled buffer that meets items of varying sizes reallocates a few times at first and then
// not at all.
inline void resize_reusing(std::vector<std::uint8_t>& buffer, std::size_t bytes) {
  constexpr std::size_t kMaxHeadroom = std::size_t{32} << 20;
  if (bytes > buffer.capacity()) buffer.reserve(bytes + std::min(bytes, kMaxHeadroom));
  buffer.resize(bytes);
}

// A buffer of a BufferPool, held for one tensor. While held, the tensor's `storage` is the pool
// buffer's memory and the tensor's own memory waits in the pool buffer's object, so that lending
// and giving back are two vector swaps: no copy, no allocation. A lease moves with its tensor
// (std::swap of two tensors keeps each storage with its lease). A copy of a tensor copies the
// bytes into memory of its own and holds no lease; copying onto a tensor keeps its lease.
class BufferLease {
 public:
  BufferLease() = default;
  // Copies hold nothing: a lease belongs to the storage it was taken for.
  BufferLease(const BufferLease&) noexcept {}
  // NOLINTNEXTLINE(bugprone-unhandled-self-assignment): assigns nothing, so self is harmless.
  BufferLease& operator=(const BufferLease&) noexcept { return *this; }
  BufferLease(BufferLease&& other) noexcept
      : pool_(std::move(other.pool_)), buffer_(std::exchange(other.buffer_, nullptr)) {}
  BufferLease& operator=(BufferLease&& other) noexcept {
    if (this != &other) {
      drop();
      pool_ = std::move(other.pool_);
      buffer_ = std::exchange(other.buffer_, nullptr);
    }
    return *this;
  }
  // Reached with a buffer held only when a borrowing tensor is destroyed or moved onto: the buffer
  // goes back holding the tensor's own memory, parked there, as the borrowed memory leaves with
  // the tensor's storage.
  ~BufferLease() { drop(); }

  explicit operator bool() const { return buffer_ != nullptr; }

  // Swaps `storage` with a buffer of `pool`.
  void take(const std::shared_ptr<BufferPool>& pool, std::vector<std::uint8_t>& storage) {
    buffer_ = pool->acquire();
    pool_ = pool;
    std::swap(storage, buffer_->bytes);
  }
  // Swaps the pool's memory back out of `storage` and returns the buffer to its pool.
  void restore(std::vector<std::uint8_t>& storage) {
    if (buffer_ == nullptr) return;
    std::swap(storage, buffer_->bytes);
    drop();
  }

 private:
  void drop() noexcept {
    if (buffer_ != nullptr) pool_->release(std::exchange(buffer_, nullptr));
    pool_.reset();
  }

  std::shared_ptr<BufferPool> pool_;
  PooledBuffer* buffer_ = nullptr;
};

// A dense tensor in a reusable buffer. `shape` has `rank` leading entries in use.
struct Tensor {
  DType dtype = DType::kUInt8;
  int rank = 0;
  std::array<std::int64_t, 4> shape{};
  std::string layout;  // e.g. "HWC", "CHW"
  std::vector<std::uint8_t> storage;
  BufferLease lease;  // set while `storage` is borrowed from a BufferPool

  std::int64_t elements() const {
    std::int64_t n = rank > 0 ? 1 : 0;
    for (int i = 0; i < rank; ++i) n *= shape[static_cast<std::size_t>(i)];
    return n;
  }
  std::size_t bytes() const { return static_cast<std::size_t>(elements()) * dtype_size(dtype); }
  // Sets the shape and sizes the buffer; keeps capacity, so no allocation once it is large enough.
  void reshape(DType type, std::initializer_list<std::int64_t> dims, const char* layout_name) {
    dtype = type;
    rank = static_cast<int>(dims.size());
    std::size_t i = 0;
    for (auto d : dims) shape[i++] = d;
    layout = layout_name;
    resize_reusing(storage, bytes());
  }
  // Makes `storage` a buffer of `pool` (its content is then undefined) until give_back(). A
  // tensor that already borrows keeps its buffer.
  void borrow(const std::shared_ptr<BufferPool>& pool) {
    if (!lease && pool != nullptr) lease.take(pool, storage);
  }
  bool borrowed() const { return static_cast<bool>(lease); }
  // Returns borrowed storage to its pool and takes the tensor's own memory back; the tensor is
  // then empty (rank 0). Nothing happens to storage of its own.
  void give_back() {
    if (!lease) return;
    lease.restore(storage);
    rank = 0;
  }
};

// A window of a tensor's two leading dimensions: `height` indices from `y` along dimension 0 and
// `width` from `x` along dimension 1. `height` 0 means the whole tensor.
struct Region {
  std::int64_t y = 0;
  std::int64_t x = 0;
  std::int64_t height = 0;
  std::int64_t width = 0;
};

// The bit of TensorGeometry::flips that reverses dimension `axis`.
constexpr std::uint32_t flip_of(int axis) { return 1U << static_cast<unsigned>(axis); }

// Where a tensor lies in its source when it holds less than all of it at full resolution: its
// two leading dimensions are the window from `origin` (dimension 0, then 1) of the source scaled
// down by 1/scale, a source whose full extent at full scale is `extent`.
struct SourceWindow {
  int scale = 0;  // 0: the whole source at full scale (origin and extent mean nothing)
  std::array<std::int64_t, 2> origin{};
  std::array<std::int64_t, 2> extent{};
};

// How a sample's current tensor stands relative to the source it was computed from, in tensor
// terms. It lets a stage leave a crop or a flip to a later stage that copies the data anyway (so
// that no pass runs only to crop or flip), and a stage deliver less than the whole source when
// the stage after it reads only part of it. The engine never reads it. The default is the
// identity: the whole tensor is read as it is, and it is the whole source at full scale. The
// stages that set and read a part say what it means for their data (for images: decode, augment,
// normalize and batch, in their headers); a stage that applies a part resets it.
struct TensorGeometry {
  // The part of the tensor that later stages read.
  Region roi;
  // Dimensions of `roi` that later stages read reversed: flip_of(axis) bits.
  std::uint32_t flips = 0;
  // The tensor's place in its source.
  SourceWindow source;

  // A crop or a flip that a later stage has still to apply.
  bool pending() const { return roi.height != 0 || flips != 0; }
};

struct Sample {
  std::uint64_t seq = 0;  // dense position in the stream, assigned by the engine
  std::uint64_t id = 0;   // the dataset's id for this sample
  std::uint32_t epoch = 0;
  std::uint64_t position = 0;  // in the epoch's source order, assigned by the engine
  // Read again only to pad the epoch's last batch in a resumed run (`last: pad`): the batch stage
  // keeps it for padding and never delivers it as a row of its own.
  bool pad_only = false;
  // A sample the source deals a second time in an epoch so that every part of a run gets as many
  // samples as the others: delivered as a padding row (Batch::pad counts it).
  bool repeat = false;
  std::string path;  // where it came from, for errors and outputs
  std::vector<float> labels;
  std::vector<std::uint8_t> bytes;             // encoded input, as read
  Tensor tensor;                               // the current data
  Tensor scratch;                              // a second buffer a stage may fill and then swap in
  TensorGeometry geometry;                     // `tensor` relative to its source
  const Quantization* quantization = nullptr;  // owned by the stage that quantized the data
  bool skipped = false;                        // a tombstone: an error made the sample unusable
  std::string error;                           // why it was skipped

  // Readies a recycled sample for reuse, keeping buffer capacity.
  void reset() {
    seq = id = position = 0;
    epoch = 0;
    pad_only = repeat = false;
    path.clear();
    labels.clear();
    bytes.clear();
    tensor.give_back();
    scratch.give_back();
    tensor.rank = scratch.rank = 0;
    geometry = {};
    quantization = nullptr;
    skipped = false;
    error.clear();
  }
};

namespace detail {

struct BatchData {
  std::uint64_t index = 0;
  std::uint32_t epoch = 0;
  StreamPosition position;     // after this batch, stamped by the engine when the batch is made
  bool last_in_epoch = false;  // no batch of its epoch can follow it
  Tensor data;
  std::size_t rows = 0;  // samples, pad rows included
  int pad = 0;
  int label_width = 1;
  std::vector<float> labels;
  std::vector<std::uint64_t> ids;
  std::vector<std::string> paths;
  Quantization quantization;
  // What a batch transform computed for each row (a network's logits): rows x output_width.
  std::vector<float> outputs;
  int output_width = 0;

  void reset() {
    index = 0;
    epoch = 0;
    position = {};
    last_in_epoch = false;
    data.rank = 0;
    rows = 0;
    pad = 0;
    label_width = 1;
    output_width = 0;
    // ids, labels, paths and quantization keep their elements: the batch stage overwrites them
    // in place, so nothing is freed and reallocated per batch.
  }
};

// Who takes a batch buffer back when its public handle is released.
class BatchOwner {
 public:
  virtual void release(BatchData* batch) = 0;

 protected:
  ~BatchOwner() = default;
};

}  // namespace detail

using BatchData = detail::BatchData;

}  // namespace millrace
