// Counter-based random numbers for reproducible augmentation.
//
// Contract: a sample's random draws depend only on (seed, stage key, epoch, sample id) and on the
// order of draws the stage itself makes, never on which thread runs it or when. That is what lets
// the pipeline run stages concurrently and out of order and still produce the same epoch twice.
// The generator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
// 1, 2, 3", SC 2011): a keyed bijection of a 128-bit counter, so a stream is created in O(1) from
// its coordinates and needs no shared state.
//
// Concurrency: `philox4x32_10` and `stable_hash` are pure functions. A `CounterRng` is a small
// value with no shared state; create one per (stage, sample) on the thread that uses it and never
// share one instance between threads. Nothing here allocates, blocks or throws, except
// `uniform_int` with lo > hi.
//
// Stream layout: the 64-bit Philox key is a mix of (seed, stage key, high half of the epoch); the
// counter words are (block index, low half of the epoch, low and high halves of the sample id).
// Each block yields four 32-bit values, so one stream holds 2^34 values before it wraps around,
// far beyond what one sample's augmentation draws.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string_view>

namespace millrace {

namespace detail {

inline constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
inline constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
inline constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
inline constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;

// SplitMix64 finalizer (Steele, Lea, Flood 2014): a bijection with full avalanche, used so that
// nearby seeds and stage keys give unrelated Philox keys.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace detail

// The raw Philox4x32-10 block function, as in Random123's philox4x32(ctr, key).
constexpr std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> ctr,
                                                     std::array<std::uint32_t, 2> key) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += detail::kPhiloxW0;
      key[1] += detail::kPhiloxW1;
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(detail::kPhiloxM0) * ctr[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(detail::kPhiloxM1) * ctr[2];
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32);
    const auto lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32);
    const auto lo1 = static_cast<std::uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
  }
  return ctr;
}

// FNV-1a, 64 bit: a hash that is the same on every platform and build, for deriving stage keys
// from stage names (std::hash gives no such guarantee).
constexpr std::uint64_t stable_hash(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : s) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

class CounterRng {
 public:
  // key = (seed, stage_key); counter starts at (epoch, sample_id) and a running index.
  constexpr CounterRng(std::uint64_t seed, std::uint64_t stage_key, std::uint64_t epoch,
                       std::uint64_t sample_id) {
    // Chained rather than xor-ed, so that swapping seed and stage key gives another stream.
    const std::uint64_t k =
        detail::mix64(detail::mix64(detail::mix64(seed) + stage_key) + (epoch >> 32));
    key_ = {static_cast<std::uint32_t>(k), static_cast<std::uint32_t>(k >> 32)};
    ctr_ = {0, static_cast<std::uint32_t>(epoch), static_cast<std::uint32_t>(sample_id),
            static_cast<std::uint32_t>(sample_id >> 32)};
  }

  constexpr std::uint32_t next_u32() {
    if (used_ == 4) {
      block_ = philox4x32_10(ctr_, key_);
      ++ctr_[0];
      used_ = 0;
    }
    return block_[used_++];
  }

  // [0, 1) with 53 random bits, the resolution of a double (like Python's random.random()).
  constexpr double uniform() {
    const std::uint64_t hi = next_u32();
    const std::uint64_t lo = next_u32();
    return static_cast<double>(((hi << 32) | lo) >> 11) * 0x1.0p-53;
  }

  // lo + (hi - lo) * uniform(), the same formula as Python's random.uniform and torch's uniform_.
  constexpr double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform over [lo, hi], both inclusive, without modulo bias (Lemire's multiply-and-reject,
  // "Fast random integer generation in an interval", 2019). Throws std::invalid_argument if lo >
  // hi.
  constexpr int uniform_int(int lo, int hi) {
    if (lo > hi) throw std::invalid_argument("CounterRng::uniform_int: lo > hi");
    const std::uint64_t range =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(hi) - lo) + 1;  // 1 .. 2^32
    std::uint64_t offset = 0;
    if (range == (std::uint64_t{1} << 32)) {
      offset = next_u32();
    } else {
      const auto range32 = static_cast<std::uint32_t>(range);
      std::uint64_t m = static_cast<std::uint64_t>(next_u32()) * range32;
      auto low = static_cast<std::uint32_t>(m);
      if (low < range32) {
        const std::uint32_t threshold = static_cast<std::uint32_t>(-range32) % range32;
        while (low < threshold) {
          m = static_cast<std::uint64_t>(next_u32()) * range32;
          low = static_cast<std::uint32_t>(m);
        }
      }
      offset = m >> 32;
    }
    return static_cast<int>(static_cast<std::int64_t>(lo) + static_cast<std::int64_t>(offset));
  }

  // True with probability p; p <= 0 is never true and p >= 1 always (uniform() < 1).
  constexpr bool bernoulli(double p) { return uniform() < p; }

 private:
  std::array<std::uint32_t, 2> key_{};
  std::array<std::uint32_t, 4> ctr_{};
  std::array<std::uint32_t, 4> block_{};
  int used_ = 4;
};

}  // namespace millrace
