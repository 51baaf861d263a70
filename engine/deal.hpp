// Dealing one epoch's order over the whole data set to the parts of a multi-process run, as
// PyTorch's DistributedSampler does: part k takes the order's positions start + k,
// start + k + parts, ...; every part takes the same count, ceil((size - start) / parts), a part
// short of one wrapping round to the positions after `start` again (a repeat, delivered as
// padding). The parts of a run therefore take disjoint positions that cover [start, size), and
// after each has taken n the positions taken are exactly [start, start + n * parts): a resumed
// epoch may be dealt from there to any other number of parts.
//
// Contract: a plain value, pure functions; the sources that read in any order share it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace millrace {

struct Deal {
  std::uint64_t size = 0;   // the epoch's order: positions [0, size)
  std::uint64_t start = 0;  // positions before it were taken earlier (a resumed epoch)
  std::uint64_t parts = 1;
  std::uint64_t part = 0;

  std::uint64_t count() const {
    const std::uint64_t left = size - std::min(start, size);
    return (left + parts - 1) / parts;
  }
  struct Position {
    std::uint64_t index;  // into the order
    bool repeat;
  };
  // This part's k-th position, k < count().
  Position at(std::uint64_t k) const {
    const std::uint64_t g = start + part + k * parts;
    if (g < size) return {g, false};
    return {start + (g - size) % (size - start), true};
  }
};

}  // namespace millrace
