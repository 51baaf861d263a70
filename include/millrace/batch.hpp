// A batch delivered by a running pipeline.
//
// Contract: a Batch is a move-only handle on a pooled buffer owned by the Pipeline that produced
// it. Reading it is free of synchronisation; destroying it (or letting it go out of scope) hands
// the buffer back to the pipeline so that no batch is ever allocated in steady state. A Batch must
// not outlive its Pipeline. The number of Batches a consumer may hold at once is bounded by the
// pipeline's `prefetch`: holding that many stalls the pipeline until one is released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace millrace {

enum class DType { kUInt8, kInt8, kFloat32 };
std::string_view dtype_name(DType);  // "uint8", "int8", "float32"
std::size_t dtype_size(DType);

// What one integer of the data means (int8-contract.md): real value = (q - zero_point) * unit[c].
// MXNet-compatible int8 (mean subtracted, nothing else) is unit 1 and zero point 0.
struct Quantization {
  std::vector<float> unit;  // per channel; empty when the data is not quantized
  float zero_point = 0.0F;
  bool mxnet_compatible = false;
};

// A place in a pipeline's stream, counted within one epoch of the source: what a run has consumed
// up to and including a batch (Batch::position()), or where a run starts (Pipeline::start_at()).
// Positions count the source's samples in its order for the epoch, skipped (bad) ones included,
// so a run resumed from a batch's position reads exactly the samples after it.
struct StreamPosition {
  std::uint32_t epoch = 0;
  std::uint64_t samples = 0;  // samples of `epoch` consumed, in source order
  std::uint64_t batches = 0;  // batches of `epoch` delivered
  // The samples (from the epoch's start) that made its first batch; 0 while there is none. With
  // `last: pad` a resumed run reads these again, and only these, to pad the epoch's last batch
  // exactly as an uninterrupted run does.
  std::uint64_t first_batch_samples = 0;
};

namespace detail {
struct BatchData;
class BatchOwner;
}  // namespace detail

class Batch {
 public:
  Batch(detail::BatchData* data, detail::BatchOwner* owner) : data_(data), owner_(owner) {}
  Batch(Batch&& other) noexcept;
  Batch& operator=(Batch&& other) noexcept;
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  ~Batch();

  std::uint64_t index() const;  // position in the pipeline's batch stream, from 0
  std::uint32_t epoch() const;
  DType dtype() const;
  std::span<const std::int64_t> shape() const;  // e.g. {64, 3, 224, 224}
  std::string_view layout() const;              // e.g. "NCHW"
  const void* data() const;
  std::size_t bytes() const;
  template <class T>
  std::span<const T> values() const {
    return {static_cast<const T*>(data()), bytes() / sizeof(T)};
  }
  std::size_t size() const;  // samples in the batch, pad rows included
  int pad() const;           // trailing rows that repeat samples from the start of the epoch
  int label_width() const;
  std::span<const float> labels() const;          // size() * label_width() values
  std::span<const std::uint64_t> ids() const;     // sample ids, one per row
  const std::vector<std::string>& paths() const;  // where each row came from
  const Quantization& quantization() const;
  // Where the stream stands after this batch: a run started at this position (Pipeline::start_at)
  // delivers the batches after it, byte for byte. Meaningful in ordered mode (the default).
  StreamPosition position() const;
  // No batch of this epoch can follow: the epoch ended with it, or the samples left in the epoch
  // (its size known to the source) are too few for another batch. False when that is not known
  // yet, as for a batch followed only by samples that turn out to be skipped.
  bool last_in_epoch() const;
  // What a batch transform computed per row (an `infer` stage's logits), size() x output_width()
  // values; empty without one.
  std::span<const float> outputs() const;
  int output_width() const;

 private:
  void release();
  detail::BatchData* data_ = nullptr;
  detail::BatchOwner* owner_ = nullptr;
};

}  // namespace millrace
