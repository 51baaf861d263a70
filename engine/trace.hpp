// The Chrome trace of a run (chrome://tracing, Perfetto): an observer of the executor, in the
// manner of taskflow's ChromeObserver. The executor tells it when a step ran (a span) and how
// many items an edge held (a counter sample); it never changes what the executor does.
//
// Contract: one ring of preallocated events per thread slot, each written by one thread only
// (the thread in that slot) without locks or allocation; a full ring overwrites its oldest
// events, so a long run keeps each thread's latest ones and memory stays bounded. write() and the
// counts are called after the run, when no thread writes any more.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace millrace {

// One event of the trace: a span (a stage invocation) or a counter sample (an edge's occupancy).
struct TraceEvent {
  std::int64_t ts = 0;     // ns since the run's origin
  std::int64_t value = 0;  // span: duration in ns; counter: items on the edge
  std::uint32_t id = 0;    // span: the step (0 = the source's next); counter: the edge
  bool counter = false;
};

// The trace events of one thread: preallocated, overwritten oldest first, so a long run keeps
// each thread's latest events. One writer (the thread in that arena slot); read after the run.
class alignas(64) TraceRing {
 public:
  void reserve(std::size_t capacity) {
    events_ = std::make_unique<TraceEvent[]>(capacity);
    capacity_ = capacity;
  }
  void add(const TraceEvent& e) {
    const std::uint64_t n = written_.load(std::memory_order_relaxed);
    events_[n % capacity_] = e;
    written_.store(n + 1, std::memory_order_release);
  }
  std::uint64_t written() const { return written_.load(std::memory_order_acquire); }
  // The kept events, oldest first.
  template <class F>
  void for_each(F f) const {
    const std::uint64_t n = written();
    const std::uint64_t first = n > capacity_ ? n - capacity_ : 0;
    for (std::uint64_t i = first; i < n; ++i) f(events_[i % capacity_]);
  }
  std::uint64_t dropped() const {
    const std::uint64_t n = written();
    return n > capacity_ ? n - capacity_ : 0;
  }

 private:
  std::unique_ptr<TraceEvent[]> events_;
  std::size_t capacity_ = 0;
  std::atomic<std::uint64_t> written_{0};
};

class ChromeTrace {
 public:
  // What the events' numbers stand for, when the trace is written.
  struct Names {
    std::string pipeline;
    std::vector<std::string> spans;    // by span id: the source's next(), then every step
    std::vector<std::string> edges;    // by edge id: the edge into every step
    std::vector<std::string> threads;  // by slot
  };

  ChromeTrace(std::size_t slots, std::size_t events_per_thread);

  void span(std::size_t slot, std::int64_t ts, std::int64_t duration, std::uint32_t step) {
    rings_[slot].add({ts, duration, step, false});
  }
  void edge(std::size_t slot, std::size_t edge, std::int64_t ts, std::int64_t items) {
    rings_[slot].add({ts, items, static_cast<std::uint32_t>(edge), true});
  }

  // Writes the kept events as a Chrome trace JSON file; throws std::runtime_error when the file
  // cannot be written.
  void write(const std::string& path, const Names& names) const;
  std::uint64_t events() const;  // kept
  std::uint64_t dropped() const;

 private:
  std::size_t slots_;
  std::size_t events_per_thread_;
  std::unique_ptr<TraceRing[]> rings_;
};

}  // namespace millrace
