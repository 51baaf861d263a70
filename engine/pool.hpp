// Pools of recycled objects (samples, batch buffers) and of large byte buffers, with lock-free
// free lists.
//
// Contract:
// - ObjectPool: acquire() and release() may be called from any number of threads at once and
//   never block: the free list is a Boost.Lockfree stack whose nodes are allocated up front.
//   Objects are created on demand up to `limit` (the bound the graph's token counts guarantee) and
//   then live as long as the pool, so steady state allocates nothing. Exceeding the limit is a bug
//   in the engine's accounting and throws std::logic_error.
// - BufferPool: byte buffers that items borrow for as long as they need them (the large
//   intermediate data of a few stages) and give back, so that their number follows the items that
//   need one at the same moment rather than every item alive. acquire() and release() may be called
//   from any thread and never block or spin: an empty pool creates a buffer (the only allocation),
//   which stops once the pool holds as many buffers as were ever borrowed at once. Buffers keep
//   their capacity, so a pool is best kept to data of one kind (one stage's output) whose sizes are
//   alike. The pool is held through std::shared_ptr: a BufferLease keeps it alive, so items may
//   outlive the stage that made the pool.
#pragma once

#include <atomic>
#include <boost/lockfree/stack.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace millrace {

template <class T>
class ObjectPool {
 public:
  ObjectPool(std::string what, std::size_t limit)
      : what_(std::move(what)), limit_(limit), free_(limit) {}

  T* acquire() {
    T* object = nullptr;
    if (free_.pop(object)) return object;
    // Only during warm-up: each object is created once and then recycled forever.
    std::lock_guard<std::mutex> lock(grow_);
    if (all_.size() >= limit_) {
      throw std::logic_error("millrace: " + what_ + " pool exhausted at " + std::to_string(limit_) +
                             " objects (in-flight accounting broken)");
    }
    all_.push_back(std::make_unique<T>());
    created_.store(all_.size(), std::memory_order_relaxed);
    return all_.back().get();
  }

  void release(T* object) {
    object->reset();
    if (!free_.bounded_push(object))
      throw std::logic_error("millrace: " + what_ + " pool overflow");
  }

  // How many objects exist: the high-water mark of objects in use at once.
  std::size_t created() const { return created_.load(std::memory_order_relaxed); }
  std::size_t limit() const { return limit_; }

 private:
  std::string what_;
  std::size_t limit_;
  boost::lockfree::stack<T*> free_;
  std::mutex grow_;
  std::vector<std::unique_ptr<T>> all_;
  std::atomic<std::size_t> created_{0};
};

// A byte buffer of a BufferPool.
struct PooledBuffer {
  std::vector<std::uint8_t> bytes;
  PooledBuffer* next_created = nullptr;  // every buffer the pool made, for its destructor
};

class BufferPool {
 public:
  BufferPool() : free_(0) {}
  ~BufferPool() {
    PooledBuffer* b = all_.load(std::memory_order_acquire);
    while (b != nullptr) delete std::exchange(b, b->next_created);
  }
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  PooledBuffer* acquire() {
    PooledBuffer* buffer = nullptr;
    if (free_.pop(buffer)) return buffer;
    // Only until the pool holds as many buffers as are ever borrowed at once. The free list gets
    // a node for the new buffer now, so that release() never allocates.
    free_.reserve(1);
    buffer = new PooledBuffer;
    buffer->next_created = all_.load(std::memory_order_relaxed);
    while (!all_.compare_exchange_weak(buffer->next_created, buffer, std::memory_order_release,
                                       std::memory_order_relaxed)) {
    }
    created_.fetch_add(1, std::memory_order_relaxed);
    return buffer;
  }

  void release(PooledBuffer* buffer) {
    if (!free_.bounded_push(buffer)) throw std::logic_error("millrace: buffer pool overflow");
  }

  // How many buffers exist: the most that were borrowed at the same moment.
  std::size_t created() const { return created_.load(std::memory_order_relaxed); }

 private:
  boost::lockfree::stack<PooledBuffer*> free_;
  std::atomic<PooledBuffer*> all_{nullptr};
  std::atomic<std::size_t> created_{0};
};

}  // namespace millrace
