// A BatchEmitter for benchmarks that drive a batch stage by hand: two recycled buffers are all the
// stage needs with `last: pad` (the batch being filled and the copy of the epoch's first batch
// that it keeps for padding). The derived class decides what emitting a batch means and hands the
// buffer back with recycle(), as if its consumer had released it at once.
#pragma once

#include <array>
#include <stdexcept>
#include <vector>

#include "engine/stage.hpp"

namespace millrace {

class TwoBufferEmitter : public BatchEmitter {
 public:
  TwoBufferEmitter() {
    for (BatchData& b : buffers_) free_.push_back(&b);
  }
  TwoBufferEmitter(const TwoBufferEmitter&) = delete;
  TwoBufferEmitter& operator=(const TwoBufferEmitter&) = delete;

  BatchData& acquire() final {
    if (free_.empty()) throw std::logic_error("the batch stage holds more than two buffers");
    BatchData* b = free_.back();
    free_.pop_back();
    return *b;
  }
  void discard(BatchData& batch) final { recycle(batch); }

 protected:
  ~TwoBufferEmitter() = default;

  void recycle(BatchData& batch) {
    batch.reset();
    free_.push_back(&batch);
  }

 private:
  std::array<BatchData, 2> buffers_;
  std::vector<BatchData*> free_;
};

}  // namespace millrace
