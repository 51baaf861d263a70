// A pool of recycled objects (samples, batch buffers) with a lock-free free list.
//
// Contract: acquire() and release() may be called from any number of threads at once and never
// block: the free list is a Boost.Lockfree stack whose nodes are allocated up front. Objects are
// created on demand up to `limit` (the bound the graph's token counts guarantee) and then live as
// long as the pool, so steady state allocates nothing. Exceeding the limit is a bug in the
// engine's accounting and throws std::logic_error.
#pragma once

#include <atomic>
#include <boost/lockfree/stack.hpp>
#include <cstddef>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
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

}  // namespace millrace
