// The data that travels through a pipeline: samples and batches.
//
// Contract: Sample and BatchData objects are owned by the engine's pools and recycled, never
// allocated per item in steady state: every buffer keeps its capacity across uses. While a stage
// holds an item it is the only one touching it, so items need no locks. The engine knows nothing
// about images: a Sample carries encoded bytes, a current tensor and a scratch tensor that image
// stages swap between, and an optional region of interest that later stages read through.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "millrace/batch.hpp"

namespace millrace {

// A dense tensor in a reusable buffer. `shape` has `rank` leading entries in use.
struct Tensor {
  DType dtype = DType::kUInt8;
  int rank = 0;
  std::array<std::int64_t, 4> shape{};
  std::string layout;  // e.g. "HWC", "CHW"
  std::vector<std::uint8_t> storage;

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
    storage.resize(bytes());
  }
};

// A window of the two leading (spatial) dimensions of a tensor: `height` 0 means the whole tensor.
struct Region {
  std::int64_t y = 0;
  std::int64_t x = 0;
  std::int64_t height = 0;
  std::int64_t width = 0;
};

// Transforms that a later stage applies while it copies the data anyway (so no extra pass runs).
enum DeferredTransform : std::uint32_t {
  kFlipLastSpatialAxis = 1U << 0,  // mirror: reverse the second spatial dimension
};

struct Sample {
  std::uint64_t seq = 0;  // dense position in the stream, assigned by the engine
  std::uint64_t id = 0;   // the dataset's id for this sample
  std::uint32_t epoch = 0;
  std::string path;  // where it came from, for errors and outputs
  std::vector<float> labels;
  std::vector<std::uint8_t> bytes;             // encoded input, as read
  Tensor tensor;                               // the current data
  Tensor scratch;                              // a second buffer a stage may fill and then swap in
  Region region;                               // part of `tensor` that later stages read
  std::uint32_t deferred = 0;                  // DeferredTransform bits
  const Quantization* quantization = nullptr;  // owned by the stage that quantized the data
  bool skipped = false;                        // a tombstone: an error made the sample unusable
  std::string error;                           // why it was skipped

  // Readies a recycled sample for reuse, keeping buffer capacity.
  void reset() {
    seq = id = 0;
    epoch = 0;
    path.clear();
    labels.clear();
    bytes.clear();
    tensor.rank = scratch.rank = 0;
    region = {};
    deferred = 0;
    quantization = nullptr;
    skipped = false;
    error.clear();
  }
};

namespace detail {

struct BatchData {
  std::uint64_t index = 0;
  std::uint32_t epoch = 0;
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
