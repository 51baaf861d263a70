#include "engine/trace.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "engine/file_io.hpp"
#include "engine/json.hpp"

namespace millrace {

ChromeTrace::ChromeTrace(std::size_t slots, std::size_t events_per_thread)
    : slots_(slots),
      events_per_thread_(events_per_thread),
      rings_(std::make_unique<TraceRing[]>(slots)) {
  for (std::size_t i = 0; i < slots_; ++i) rings_[i].reserve(events_per_thread_);
}

std::uint64_t ChromeTrace::events() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < slots_; ++i) n += rings_[i].written();
  return n - dropped();
}

std::uint64_t ChromeTrace::dropped() const {
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < slots_; ++i) n += rings_[i].dropped();
  return n;
}

void ChromeTrace::write(const std::string& path, const Names& names) const {
  struct Kept {
    TraceEvent e;
    std::size_t ring;
  };
  std::vector<Kept> events;
  std::int64_t complete_from = 0;  // every thread's events are kept from here on
  for (std::size_t r = 0; r < slots_; ++r) {
    bool first = true;
    rings_[r].for_each([&](const TraceEvent& e) {
      if (first && rings_[r].dropped() > 0) complete_from = std::max(complete_from, e.ts);
      first = false;
      events.push_back({e, r});
    });
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const Kept& a, const Kept& b) { return a.e.ts < b.e.ts; });
  auto us = [](std::int64_t ns) { return static_cast<double>(ns) * 1e-3; };
  const std::uint64_t dropped = this->dropped();

  JsonWriter j;
  j.begin_object();
  j.key("displayTimeUnit").value("ms");
  j.key("otherData").begin_object();
  j.key("pipeline").value(names.pipeline);
  j.key("events_per_thread").value(events_per_thread_);
  j.key("events").value(static_cast<std::uint64_t>(events.size()));
  j.key("dropped_events").value(dropped);
  j.key("complete_from_us").value(us(complete_from));
  j.key("window").value(dropped == 0
                            ? std::string("the whole run")
                            : "each thread's latest " + std::to_string(events_per_thread_) +
                                  " events; older ones dropped");
  j.end_object();
  j.key("traceEvents").begin_array();
  j.begin_object().key("name").value("process_name").key("ph").value("M").key("pid").value(1);
  j.key("tid").value(0).key("args").begin_object().key("name").value("millrace " + names.pipeline);
  j.end_object().end_object();
  for (std::size_t r = 0; r < slots_; ++r) {
    if (rings_[r].written() == 0) continue;
    const std::string& thread = names.threads[r];
    j.begin_object().key("name").value("thread_name").key("ph").value("M").key("pid").value(1);
    j.key("tid").value(static_cast<std::uint64_t>(r + 1));
    j.key("args").begin_object().key("name").value(thread).end_object().end_object();
    j.begin_object().key("name").value("thread_sort_index").key("ph").value("M");
    j.key("pid").value(1).key("tid").value(static_cast<std::uint64_t>(r + 1));
    j.key("args").begin_object().key("sort_index").value(static_cast<std::uint64_t>(r));
    j.end_object().end_object();
  }
  j.end_array();
  j.end_object();
  // The events themselves are written by hand, one per line, in microseconds with nanosecond
  // digits: the metadata above goes through JsonWriter, which prints doubles at full precision.
  auto quoted = [](const std::string& text) {
    JsonWriter q;
    q.value(text);
    return q.str();
  };
  std::vector<std::string> spans;
  std::vector<std::string> edges;
  for (const auto& n : names.spans) spans.push_back(quoted(n));
  for (const auto& n : names.edges) edges.push_back(quoted(n));
  std::string head = j.str();
  head.resize(head.size() - 2);  // reopen the event array: drop "]}"
  std::string body;
  body.reserve(events.size() * 96);
  char line[512];
  for (const Kept& k : events) {
    const TraceEvent& e = k.e;
    if (e.counter) {
      std::snprintf(line, sizeof line,
                    ",\n{\"name\":%s,\"ph\":\"C\",\"ts\":%.3f,\"pid\":1,\"args\":{\"items\":%lld}}",
                    edges[e.id].c_str(), us(e.ts), static_cast<long long>(e.value));
    } else {
      std::snprintf(line, sizeof line,
                    ",\n{\"name\":%s,\"cat\":\"stage\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
                    "\"pid\":1,\"tid\":%zu}",
                    spans[e.id].c_str(), us(e.ts), us(e.value), k.ring + 1);
    }
    body += line;
  }
  // Whole or absent: a full disk or a killed process never leaves a cut-off trace.
  write_file_atomically(path, head + body + "\n]}\n", "trace file");
}

}  // namespace millrace
