#include "engine/random.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

namespace millrace {
namespace {

using Block = std::array<std::uint32_t, 4>;

// Known-answer vectors from Random123's kat_vectors file (philox4x32 with 10 rounds).
TEST(Philox4x32, KnownAnswerZero) {
  const Block out = philox4x32_10({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(out, (Block{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
}

TEST(Philox4x32, KnownAnswerAllOnes) {
  const Block out = philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                  {0xffffffffu, 0xffffffffu});
  EXPECT_EQ(out, (Block{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
}

TEST(Philox4x32, KnownAnswerPi) {
  const Block out = philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                                  {0xa4093822u, 0x299f31d0u});
  EXPECT_EQ(out, (Block{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox4x32, UsableAtCompileTime) {
  constexpr Block out = philox4x32_10({0, 0, 0, 0}, {0, 0});
  static_assert(out[0] == 0x6627e8d5u);
  EXPECT_EQ(out[3], 0x9b00dbd8u);
}

// Published FNV-1a 64 test vectors (Fowler, Noll, Vo reference test suite).
TEST(StableHash, Fnv1a64Vectors) {
  static_assert(stable_hash("") == 0xcbf29ce484222325ull);
  EXPECT_EQ(stable_hash("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(stable_hash("foobar"), 0x85944171f73967e8ull);
  EXPECT_NE(stable_hash("augment"), stable_hash("augmenT"));
}

std::vector<std::uint32_t> draw(CounterRng rng, int n) {
  std::vector<std::uint32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = rng.next_u32();
  return v;
}

TEST(CounterRng, SameCoordinatesSameStream) {
  const CounterRng a(42, stable_hash("augment"), 3, 1234);
  const CounterRng b(42, stable_hash("augment"), 3, 1234);
  EXPECT_EQ(draw(a, 257), draw(b, 257));

  CounterRng c(7, 8, 9, 10);
  CounterRng d(7, 8, 9, 10);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(c.uniform(), d.uniform());
    ASSERT_EQ(c.uniform_int(-5, 1000), d.uniform_int(-5, 1000));
    ASSERT_EQ(c.bernoulli(0.3), d.bernoulli(0.3));
  }
}

TEST(CounterRng, UniformIsBuiltFromTwoWords) {
  // uniform() takes the top 53 of the next 64 bits (first word high), as documented.
  CounterRng words(1, 2, 3, 4);
  CounterRng doubles(1, 2, 3, 4);
  for (int i = 0; i < 10; ++i) {
    const std::uint64_t hi = words.next_u32();
    const std::uint64_t lo = words.next_u32();
    const double expected = static_cast<double>(((hi << 32) | lo) >> 11) / 9007199254740992.0;
    ASSERT_EQ(doubles.uniform(), expected);
  }
}

TEST(CounterRng, EveryCoordinateChangesTheStream) {
  const auto base = draw(CounterRng(42, 99, 3, 1234), 16);
  EXPECT_NE(base, draw(CounterRng(43, 99, 3, 1234), 16));
  EXPECT_NE(base, draw(CounterRng(42, 98, 3, 1234), 16));
  EXPECT_NE(base, draw(CounterRng(42, 99, 4, 1234), 16));
  EXPECT_NE(base, draw(CounterRng(42, 99, 3, 1235), 16));
  EXPECT_NE(base, draw(CounterRng(42, 99, 3 + (std::uint64_t{1} << 32), 1234), 16));
  EXPECT_NE(base, draw(CounterRng(42, 99, 3, 1234 + (std::uint64_t{1} << 32)), 16));
  // Seed and stage key play different roles.
  EXPECT_NE(draw(CounterRng(5, 6, 0, 0), 16), draw(CounterRng(6, 5, 0, 0), 16));
}

TEST(CounterRng, DifferentSampleIdsGiveUnrelatedStreams) {
  // Over many neighbouring sample ids, the first words must not collide and the stream of one
  // must not be a shifted copy of another's.
  std::set<std::uint32_t> firsts;
  std::vector<std::vector<std::uint32_t>> streams;
  for (std::uint64_t id = 0; id < 2000; ++id) {
    streams.push_back(draw(CounterRng(0, 0, 0, id), 8));
    firsts.insert(streams.back()[0]);
  }
  EXPECT_GE(firsts.size(), 1999u);  // a single 32-bit birthday collision is allowed
  for (std::size_t i = 1; i < streams.size(); ++i) {
    ASSERT_NE(streams[i - 1][1], streams[i][0]);
    ASSERT_NE(streams[i - 1][4], streams[i][0]);
  }
}

TEST(CounterRng, UniformRange) {
  CounterRng rng(11, 12, 13, 14);
  double sum = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  // Mean of U(0,1) over 1e5 draws has standard deviation ~0.0009.
  EXPECT_NEAR(sum / n, 0.5, 0.005);

  for (int i = 0; i < 1000; ++i) {
    const double v = rng.uniform(0.08, 1.0);
    ASSERT_GE(v, 0.08);
    ASSERT_LE(v, 1.0);
  }
}

TEST(CounterRng, UniformHas53Bits) {
  // With 53 bits every value is a multiple of 2^-53 and the low bits are not always zero.
  CounterRng rng(1, 1, 1, 1);
  bool low_bit_seen = false;
  for (int i = 0; i < 64; ++i) {
    const double u = rng.uniform() * 0x1.0p53;
    ASSERT_EQ(u, static_cast<double>(static_cast<std::uint64_t>(u)));
    if (static_cast<std::uint64_t>(u) & 1u) low_bit_seen = true;
  }
  EXPECT_TRUE(low_bit_seen);
}

TEST(CounterRng, UniformIntRangeAndChiSquare) {
  CounterRng rng(2024, stable_hash("crop"), 0, 77);
  constexpr int kLo = -3;
  constexpr int kHi = 6;  // 10 bins
  constexpr int kN = 100000;
  std::array<int, kHi - kLo + 1> counts{};
  for (int i = 0; i < kN; ++i) {
    const int v = rng.uniform_int(kLo, kHi);
    ASSERT_GE(v, kLo);
    ASSERT_LE(v, kHi);
    ++counts[static_cast<std::size_t>(v - kLo)];
  }
  const double expected = static_cast<double>(kN) / counts.size();
  double chi2 = 0;
  for (const int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  // 9 degrees of freedom: P(chi2 > 40) is about 8e-6, so this only fails for a real bias.
  EXPECT_LT(chi2, 40.0) << "chi-square " << chi2;
  for (const int c : counts) EXPECT_GT(c, 0);
}

TEST(CounterRng, UniformIntNonPowerOfTwoRangeIsUnbiased) {
  // With a range of 3 * 2^29, reducing a 32-bit word modulo the range would hit [0, 2^30) three
  // times per 2^32 and [2^30, 3 * 2^29) only twice: thirds of the range in the ratio 3:3:2.
  // Unbiased, each third gets a third of the draws.
  CounterRng rng(5, 5, 5, 5);
  constexpr int kThird = 1 << 29;
  constexpr int kHi = 3 * kThird - 1;
  constexpr int kN = 60000;
  std::array<int, 3> thirds{};
  for (int i = 0; i < kN; ++i) {
    const int v = rng.uniform_int(0, kHi);
    ASSERT_GE(v, 0);
    ASSERT_LE(v, kHi);
    ++thirds[static_cast<std::size_t>(v / kThird)];
  }
  // Standard deviation of each count is ~115; a 3:3:2 bias would be off by 2500.
  for (const int t : thirds) EXPECT_NEAR(t, kN / 3.0, 600);
}

TEST(CounterRng, UniformIntEdges) {
  CounterRng rng(9, 9, 9, 9);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(rng.uniform_int(7, 7), 7);
  constexpr int kMin = std::numeric_limits<int>::min();
  constexpr int kMax = std::numeric_limits<int>::max();
  bool negative = false;
  bool positive = false;
  for (int i = 0; i < 200; ++i) {
    const int v = rng.uniform_int(kMin, kMax);
    negative = negative || v < 0;
    positive = positive || v > 0;
  }
  EXPECT_TRUE(negative);
  EXPECT_TRUE(positive);
  for (int i = 0; i < 200; ++i) {
    const int v = rng.uniform_int(kMax - 1, kMax);
    ASSERT_TRUE(v == kMax - 1 || v == kMax);
  }
  EXPECT_THROW(rng.uniform_int(1, 0), std::invalid_argument);
}

TEST(CounterRng, BernoulliExtremes) {
  CounterRng rng(3, 1, 4, 1);
  int hits = 0;
  for (int i = 0; i < 20000; ++i) {
    ASSERT_FALSE(rng.bernoulli(0.0));
    ASSERT_TRUE(rng.bernoulli(1.0));
    hits += rng.bernoulli(0.25) ? 1 : 0;
  }
  // Binomial(20000, 0.25): standard deviation ~61.
  EXPECT_NEAR(hits, 5000, 400);
}

}  // namespace
}  // namespace millrace
