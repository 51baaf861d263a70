// Black-box contracts of the engine (ordering, bounds, errors, cancellation, determinism), run
// over synthetic stages so that they do not depend on images. Each concurrency property is checked
// at several thread counts and queue capacities.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "engine/pipeline_access.hpp"
#include "engine/random.hpp"
#include "millrace/report.hpp"
#include "stages/batch/batch_stage.hpp"
#include "stages/sinks/sinks.hpp"

namespace millrace {
namespace {

// Samples loaded by every SyntheticSource (the loads a resumed run must not repeat).
std::atomic<std::uint64_t> g_synthetic_loads{0};

// A source of `count` samples per epoch whose 16-byte tensor is derived from the id.
class SyntheticSource final : public SourceStage {
 public:
  struct Params {
    std::int64_t count = 100;
    int epochs = 1;
    int next_sleep_us = 0;  // a slow source (a sleep: slow even when the machine is busy)
  };
  static StageInfo info() {
    return {"synthetic", "test source", StageShape::kSource, "nothing", "samples", true, true};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s = [] {
      Schema<Params> x;
      x.integer64("count", &Params::count, "samples per epoch", 0, 1LL << 40);
      x.integer("epochs", &Params::epochs, "epochs", 1, 1000);
      x.integer("next_sleep_us", &Params::next_sleep_us, "sleep per next()", 0, 1 << 30);
      return x;
    }();
    return s;
  }
  SyntheticSource(StageContext c, Params p) : SourceStage(std::move(c)), p_(p) {}
  SourceStatus next(Sample& s) override {
    if (p_.next_sleep_us > 0)
      std::this_thread::sleep_for(std::chrono::microseconds(p_.next_sleep_us));
    if (epoch_ >= end_epoch_) return SourceStatus::kEnd;
    if (i_ == p_.count) {
      i_ = 0;
      ++epoch_;
      return SourceStatus::kEpochEnd;
    }
    s.id = static_cast<std::uint64_t>(i_++);
    s.epoch = static_cast<std::uint32_t>(epoch_);
    s.path = "synthetic/" + std::to_string(s.id);
    s.labels.assign(1, static_cast<float>(s.id % 10));
    return SourceStatus::kSample;
  }
  bool has_load() const override { return true; }
  void load(Sample& s) const override {
    g_synthetic_loads.fetch_add(1);
    s.tensor.reshape(DType::kInt8, {16}, "C");
    for (int k = 0; k < 16; ++k)
      s.tensor.storage[static_cast<std::size_t>(k)] =
          static_cast<std::uint8_t>(s.id * 7 + static_cast<std::uint64_t>(k));
  }
  std::optional<std::uint64_t> total_samples() const override {
    return static_cast<std::uint64_t>(p_.count) * static_cast<std::uint64_t>(end_epoch_ - epoch_);
  }
  std::optional<std::uint64_t> samples_per_epoch() const override {
    return static_cast<std::uint64_t>(p_.count);
  }
  bool set_epochs(std::uint32_t first, std::uint32_t count) override {
    epoch_ = static_cast<int>(first);
    end_epoch_ = count == 0 ? p_.epochs : static_cast<int>(first + count);
    return true;
  }

 private:
  Params p_;
  std::int64_t i_ = 0;
  int epoch_ = 0;
  int end_epoch_ = p_.epochs;
};

// The most `work` bodies with `count_in_flight: true` seen running at once, and how many run now.
std::atomic<int> g_work_in_flight{0};
std::atomic<int> g_work_peak{0};

// A concurrent transform that burns an id-dependent amount of CPU (so samples finish out of
// order), mixes a random draw into the data, and fails on chosen ids.
class WorkStage final : public TransformStage {
 public:
  struct Params {
    int spin = 2000;
    std::vector<double> fail_ids;  // SampleError (a data problem)
    std::int64_t throw_id = -1;    // std::runtime_error (a stage failure)
    int sleep_us = 0;  // a slow stage that needs no CPU, so the others run even on a busy machine
    bool count_in_flight = false;  // keep g_work_peak
  };
  static StageInfo info() {
    return {"work", "test transform", StageShape::kTransform, "samples", "samples", true, true};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s = [] {
      Schema<Params> x;
      x.integer("spin", &Params::spin, "work units", 0, 1 << 30);
      x.numbers("fail_ids", &Params::fail_ids, "ids that fail", {});
      x.integer64("throw_id", &Params::throw_id, "id that throws", -1, 1LL << 40);
      x.integer("sleep_us", &Params::sleep_us, "sleep per sample", 0, 1 << 30);
      x.boolean("count_in_flight", &Params::count_in_flight, "keep g_work_peak");
      return x;
    }();
    return s;
  }
  WorkStage(StageContext c, Params p) : TransformStage(std::move(c)), p_(std::move(p)) {}
  void process(Sample& s, RunReporter&) const override {
    if (p_.count_in_flight) {
      const int now = g_work_in_flight.fetch_add(1) + 1;
      int peak = g_work_peak.load();
      while (now > peak && !g_work_peak.compare_exchange_weak(peak, now)) {
      }
    }
    struct Leave {
      bool counting;
      ~Leave() {
        if (counting) g_work_in_flight.fetch_sub(1);
      }
    } leave{p_.count_in_flight};
    CounterRng rng(context().seed, context().stage_key, s.epoch, s.id);
    const int units = p_.spin > 0 ? rng.uniform_int(0, p_.spin) : 0;
    volatile std::uint64_t sink = 0;
    for (int i = 0; i < units; ++i) sink = sink + static_cast<std::uint64_t>(i) * 2654435761ULL;
    if (p_.sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(p_.sleep_us));
    for (double f : p_.fail_ids) {
      if (static_cast<std::uint64_t>(f) == s.id) throw SampleError("synthetic data error");
    }
    if (p_.throw_id >= 0 && static_cast<std::uint64_t>(p_.throw_id) == s.id) {
      throw std::runtime_error("synthetic stage failure");
    }
    s.tensor.storage[0] = static_cast<std::uint8_t>(rng.next_u32());
  }

 private:
  Params p_;
};

// A batch transform that keeps its first `hold` batches (as a calibrating network does), then
// emits them in order before the current one; it adds 1 to every byte and records its thread.
class HoldingTransform final : public BatchTransformStage {
 public:
  struct Params {
    int hold = 2;
  };
  static StageInfo info() {
    return {
        "holding", "test batch transform", StageShape::kBatchTransform, "batches", "batches", false,
        false};
  }
  static const Schema<Params>& schema() {
    static const Schema<Params> s = [] {
      Schema<Params> x;
      x.integer("hold", &Params::hold, "batches held at first", 0, 100);
      return x;
    }();
    return s;
  }
  HoldingTransform(StageContext c, Params p) : BatchTransformStage(std::move(c)), p_(p) {}
  void thread_start() override { thread_ = std::this_thread::get_id(); }
  void process(BatchData& b, BatchEmitter& out) override {
    if (std::this_thread::get_id() != thread_) wrong_thread_ = true;
    for (auto& byte : b.data.storage) ++byte;
    if (static_cast<int>(held_.size()) < p_.hold && !released_) {
      held_.push_back(&b);
      return;
    }
    flush(out);
    out.emit(b);
  }
  void flush(BatchEmitter& out) override {
    released_ = true;
    for (BatchData* h : held_) out.emit(*h);
    held_.clear();
  }
  int max_held() const override { return p_.hold; }
  std::vector<std::pair<std::string, double>> metrics() const override {
    return {{"wrong_thread", wrong_thread_ ? 1.0 : 0.0}};
  }

 private:
  Params p_;
  std::vector<BatchData*> held_;
  bool released_ = false;
  std::thread::id thread_;
  std::atomic<bool> wrong_thread_{false};
};

const Registry& test_registry() {
  static const Registry r = [] {
    Registry x;
    x.add<SyntheticSource>();
    x.add<WorkStage>();
    x.add<BatchAssembler>();
    x.add<HoldingTransform>();
    x.add<DiscardSink>();
    return x;
  }();
  return r;
}

std::string config(int threads, int queue, bool ordered, const std::string& extra_work = "",
                   std::int64_t count = 300, int batch = 16, const std::string& last = "pad",
                   int epochs = 1) {
  return "pipeline: {threads: " + std::to_string(threads) + ", queue: " + std::to_string(queue) +
         ", ordered: " + (ordered ? "true" : "false") + ", seed: 7}\n" +
         "stages:\n"
         "  - {type: synthetic, count: " +
         std::to_string(count) + ", epochs: " + std::to_string(epochs) + "}\n" + "  - {type: work" +
         extra_work + "}\n" + "  - {type: work, name: work2, spin: 500}\n" +
         "  - {type: batch, size: " + std::to_string(batch) + ", last: " + last + "}\n" +
         "  - {type: discard}\n";
}

struct Drained {
  std::vector<std::uint64_t> ids;
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  std::size_t batches = 0;
  std::vector<int> pads;
};

Drained drain(Pipeline& p) {
  Drained d;
  while (auto b = p.next()) {
    ++d.batches;
    d.pads.push_back(b->pad());
    const auto* bytes = static_cast<const std::uint8_t*>(b->data());
    for (std::size_t i = 0; i < b->bytes(); ++i) d.hash = (d.hash ^ bytes[i]) * 0x100000001b3ULL;
    for (std::size_t r = 0; r < b->size() - static_cast<std::size_t>(b->pad()); ++r) {
      d.ids.push_back(b->ids()[r]);
      d.hash = (d.hash ^ b->ids()[r]) * 0x100000001b3ULL;
    }
  }
  return d;
}

class EngineAtThreads : public ::testing::TestWithParam<int> {};

TEST_P(EngineAtThreads, OrderedDeliversSourceOrderWithSkippedSamplesDropped) {
  Pipeline p = PipelineAccess::from_string(config(GetParam(), 4, true, ", fail_ids: [3, 50, 299]"),
                                           test_registry());
  Drained d = drain(p);
  std::vector<std::uint64_t> expected;
  for (std::uint64_t i = 0; i < 300; ++i) {
    if (i != 3 && i != 50 && i != 299) expected.push_back(i);
  }
  EXPECT_EQ(d.ids, expected);
  const RunStats s = p.stats();
  ASSERT_EQ(s.skipped.size(), 3U);
  std::set<std::string> paths;
  for (const auto& k : s.skipped) {
    paths.insert(k.path);
    EXPECT_EQ(k.stage, "work");
    EXPECT_EQ(k.error, "synthetic data error");
  }
  EXPECT_EQ(paths, (std::set<std::string>{"synthetic/3", "synthetic/50", "synthetic/299"}));
  EXPECT_EQ(s.images, 297U);
  EXPECT_EQ(s.samples_read, 300U);
  EXPECT_TRUE(s.error.empty());
}

TEST_P(EngineAtThreads, UnorderedDeliversEverySampleExactlyOnce) {
  Pipeline p = PipelineAccess::from_string(config(GetParam(), 3, false, "", 500, 7, "partial", 2),
                                           test_registry());
  Drained d = drain(p);
  ASSERT_EQ(d.ids.size(), 1000U);
  std::multiset<std::uint64_t> ids(d.ids.begin(), d.ids.end());
  for (std::uint64_t i = 0; i < 500; ++i) EXPECT_EQ(ids.count(i), 2U) << i;
}

// One delivered batch, whole, with where the stream stood after it.
struct Taken {
  std::vector<std::uint8_t> bytes;
  std::vector<std::uint64_t> ids;
  int pad = 0;
  StreamPosition position;
  bool last_in_epoch = false;
};

std::vector<Taken> take_all(Pipeline& p) {
  std::vector<Taken> out;
  while (auto b = p.next()) {
    const auto* bytes = static_cast<const std::uint8_t*>(b->data());
    out.push_back({{bytes, bytes + b->bytes()},
                   {b->ids().begin(), b->ids().end()},
                   b->pad(),
                   b->position(),
                   b->last_in_epoch()});
  }
  return out;
}

TEST_P(EngineAtThreads, AResumedRunDeliversTheRestByteForByteAndLoadsNothingBeforeIt) {
  // 50 samples an epoch in batches of 8, over two epochs, with failing samples on both sides of
  // the resume points: each policy for the short last batch, resumed after every batch.
  for (const std::string last : {"pad", "drop", "partial"}) {
    const std::string cfg = config(GetParam(), 3, true, ", fail_ids: [2, 20, 49]", 50, 8, last, 2);
    Pipeline whole = PipelineAccess::from_string(cfg, test_registry());
    const std::vector<Taken> all = take_all(whole);
    const std::size_t per_epoch = last == "drop" ? 5 : 6;  // 47 good samples an epoch
    ASSERT_EQ(all.size(), 2 * per_epoch) << last;
    EXPECT_EQ(all[per_epoch - 1].position.samples, last == "drop" ? 42U : 50U) << last;
    for (std::size_t k = 0; k < all.size(); ++k) {
      // Known at once, except under `drop` here: the 8 samples after the epoch's last batch could
      // have made another one, had sample 49 not failed.
      const bool known_last = k % per_epoch == per_epoch - 1 && last != "drop";
      EXPECT_EQ(all[k].last_in_epoch, known_last) << last << " batch " << k;
      EXPECT_EQ(all[k].position.batches, k % per_epoch + 1) << last << " batch " << k;
    }
    for (std::size_t k = 0; k + 1 < all.size(); ++k) {
      const StreamPosition from = all[k].position;
      Pipeline resumed = PipelineAccess::from_string(cfg, test_registry());
      resumed.start_at(from);
      const std::uint64_t loads_before = g_synthetic_loads.load();
      const std::vector<Taken> rest = take_all(resumed);
      const std::uint64_t loads = g_synthetic_loads.load() - loads_before;
      ASSERT_EQ(rest.size(), all.size() - k - 1) << last << " after batch " << k;
      for (std::size_t i = 0; i < rest.size(); ++i) {
        const Taken& want = all[k + 1 + i];
        EXPECT_EQ(rest[i].bytes, want.bytes) << last << " after batch " << k << ", batch " << i;
        EXPECT_EQ(rest[i].ids, want.ids) << last << " after batch " << k << ", batch " << i;
        EXPECT_EQ(rest[i].pad, want.pad);
        EXPECT_EQ(rest[i].position.samples, want.position.samples);
        EXPECT_EQ(rest[i].position.batches, want.position.batches);
        EXPECT_EQ(rest[i].position.first_batch_samples, want.position.first_batch_samples);
      }
      // Loaded: the rest of the resumed epoch and all of the next; with `last: pad` also the
      // epoch's first batch again, to pad its last one from.
      const std::uint64_t again = last == "pad" ? from.first_batch_samples : 0;
      const std::uint64_t later_epochs = from.epoch == 0 ? 50 : 0;
      EXPECT_EQ(loads, 50 - from.samples + again + later_epochs) << last << " after batch " << k;
    }
  }
}

TEST_P(EngineAtThreads, AnEpochStartedDirectlyIsTheSameAsInAFullRun) {
  const std::string cfg = config(GetParam(), 2, true, "", 30, 7, "pad", 3);
  Pipeline whole = PipelineAccess::from_string(cfg, test_registry());
  const std::vector<Taken> all = take_all(whole);
  ASSERT_EQ(all.size(), 15U);
  Pipeline second = PipelineAccess::from_string(cfg, test_registry());
  second.start_at({1, 0, 0, 0}, 1);
  const std::vector<Taken> one = take_all(second);
  ASSERT_EQ(one.size(), 5U);
  for (std::size_t i = 0; i < one.size(); ++i) {
    EXPECT_EQ(one[i].bytes, all[5 + i].bytes) << i;
    EXPECT_EQ(one[i].position.epoch, 1U);
  }
  // Past the configured epochs when asked for more.
  Pipeline more = PipelineAccess::from_string(cfg, test_registry());
  more.start_at({2, 0, 0, 0}, 4);
  EXPECT_EQ(take_all(more).size(), 20U);
}

TEST_P(EngineAtThreads, WaitForTimesOutWhileNothingIsReadyAndWakesForABatch) {
  Pipeline p = PipelineAccess::from_string(
      config(GetParam(), 2, true, ", sleep_us: 20000", 8, 4, "pad"), test_registry());
  // The first batch needs 4 samples of 20 ms each (on at most GetParam() threads): not in 1 ms.
  EXPECT_FALSE(p.wait_for(std::chrono::milliseconds(1)));
  EXPECT_TRUE(p.wait_for(std::chrono::seconds(30)));
  EXPECT_TRUE(p.next().has_value());
  std::size_t rest = 0;
  while (p.wait_for(std::chrono::seconds(30))) {
    if (!p.next()) break;
    ++rest;
  }
  EXPECT_EQ(rest, 1U);
}

TEST(Engine, StartAtIsRefusedWhereItCannotHoldItsPromise) {
  Pipeline unordered = PipelineAccess::from_string(config(2, 2, false), test_registry());
  EXPECT_THROW(unordered.start_at({0, 10, 1, 10}), ConfigError);
  Pipeline p = PipelineAccess::from_string(config(2, 2, true), test_registry());
  EXPECT_THROW(p.start_at({0, 10, 1, 20}), std::invalid_argument);
  p.start();
  EXPECT_THROW(p.start_at({1, 0, 0, 0}), std::logic_error);
}

TEST_P(EngineAtThreads, InFlightItemsNeverExceedTheEdgeCapacities) {
  for (int queue : {1, 2, 5}) {
    Pipeline p =
        PipelineAccess::from_string(config(GetParam(), queue, true, "", 400), test_registry());
    Pipeline::Impl& impl = PipelineAccess::impl(p);
    // A slow consumer: the graph must stall on its tokens, not pile items up.
    std::size_t n = 0;
    while (auto b = p.next()) {
      if (++n % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const auto peaks = impl.edge_peaks();
    const auto caps = impl.edge_capacities();
    ASSERT_EQ(peaks.size(), caps.size());
    for (std::size_t i = 0; i < peaks.size(); ++i) {
      EXPECT_LE(peaks[i], caps[i]) << "edge " << i << " queue " << queue;
      EXPECT_GE(peaks[i], 1) << "edge " << i << " saw no item";
    }
    EXPECT_LE(impl.samples_created(), impl.samples_limit());
  }
}

TEST_P(EngineAtThreads, MemoryDoesNotGrowWithTheDatasetSize) {
  // The number of sample objects ever created is bounded by the edge capacities, whatever the
  // number of samples streamed: a 100x larger data set must not need a larger pool.
  std::vector<std::size_t> created;
  std::vector<std::size_t> limits;
  for (std::int64_t count : {50, 5000}) {
    Pipeline p = PipelineAccess::from_string(config(GetParam(), 4, true, ", spin: 50", count),
                                             test_registry());
    drain(p);
    created.push_back(PipelineAccess::impl(p).samples_created());
    limits.push_back(PipelineAccess::impl(p).samples_limit());
  }
  EXPECT_EQ(limits[0], limits[1]);
  EXPECT_LE(created[1], limits[1]);
  EXPECT_LT(limits[1], 100U);  // 5 edges of at most 4 + the ordering window, not 5000
}

TEST_P(EngineAtThreads, AThrowingStageNamesItselfAndTheSampleAndDoesNotHang) {
  Pipeline p =
      PipelineAccess::from_string(config(GetParam(), 4, true, ", throw_id: 123"), test_registry());
  try {
    drain(p);
    FAIL() << "expected RunError";
  } catch (const RunError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("stage 'work'"), std::string::npos) << what;
    EXPECT_NE(what.find("<string>:4"), std::string::npos) << what;  // the stage's config line
    EXPECT_NE(what.find("sample 123 'synthetic/123'"), std::string::npos) << what;
    EXPECT_NE(what.find("synthetic stage failure"), std::string::npos) << what;
  }
  EXPECT_FALSE(p.stats().error.empty());
}

TEST_P(EngineAtThreads, OnErrorFailStopsTheRunNamingTheSample) {
  std::string cfg = config(GetParam(), 4, true, ", fail_ids: [42], on_error: fail");
  Pipeline p = PipelineAccess::from_string(cfg, test_registry());
  EXPECT_THROW(
      {
        try {
          drain(p);
        } catch (const RunError& e) {
          EXPECT_NE(std::string(e.what()).find("synthetic/42"), std::string::npos);
          throw;
        }
      },
      RunError);
}

TEST_P(EngineAtThreads, MaxErrorsCountFailsTheRun) {
  std::string cfg = config(GetParam(), 4, true, ", fail_ids: [1, 2, 3]");
  cfg.replace(cfg.find("seed: 7"), 7, "seed: 7, max_errors: 2");
  Pipeline p = PipelineAccess::from_string(cfg, test_registry());
  try {
    drain(p);
    FAIL() << "expected RunError";
  } catch (const RunError& e) {
    EXPECT_NE(std::string(e.what()).find("above pipeline.max_errors 2"), std::string::npos)
        << e.what();
  }
}

TEST_P(EngineAtThreads, CancelEndsAnEndlessRunPromptly) {
  Pipeline p =
      PipelineAccess::from_string(config(GetParam(), 4, true, "", 1LL << 36), test_registry());
  ASSERT_TRUE(p.next().has_value());
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    p.cancel();
  });
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t after = 0;
  while (auto b = p.next()) ++after;  // the consumer is blocked in next() when cancel() comes
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  canceller.join();
  EXPECT_LT(seconds, 5.0);  // generous: the run would otherwise go on for hours
  EXPECT_TRUE(p.stats().cancelled);
}

INSTANTIATE_TEST_SUITE_P(Threads, EngineAtThreads, ::testing::Values(1, 2, 8));

TEST(Engine, BatchStreamIsIdenticalForAnyThreadCountAndQueueSize) {
  std::optional<std::uint64_t> reference;
  for (int threads : {1, 2, 8}) {
    for (int queue : {1, 4, 64}) {
      Pipeline p = PipelineAccess::from_string(
          config(threads, queue, true, ", fail_ids: [17]", 203, 16, "pad", 2), test_registry());
      const Drained d = drain(p);
      EXPECT_EQ(d.batches, 26U);  // 202 samples per epoch -> 13 batches, the last padded
      if (!reference) reference = d.hash;
      EXPECT_EQ(d.hash, *reference) << "threads " << threads << " queue " << queue;
    }
  }
}

TEST(Engine, AStageRunsAtItsFullConcurrencyBehindAQueueSmallerThanIt) {
  // A body holds a token of its output edge while it works: with edges of `queue` tokens alone,
  // four slots behind `queue: 1` would run one at a time. The sleep needs no CPU, so all four
  // can overlap on any machine.
  g_work_peak = 0;
  Pipeline p = PipelineAccess::from_string(
      config(4, 1, true, ", spin: 0, sleep_us: 2000, concurrency: 4, count_in_flight: true", 200),
      test_registry());
  drain(p);
  EXPECT_EQ(g_work_peak.load(), 4);
  EXPECT_EQ(g_work_in_flight.load(), 0);
}

TEST(Engine, ABatchTransformRunsOnItsOwnThreadAndMayHoldBatches) {
  for (int hold : {0, 3, 30}) {
    for (int queue : {1, 4}) {
      std::string with = config(2, queue, true, ", spin: 100", 200, 8);
      with.replace(with.find("  - {type: discard}"), 0,
                   "  - {type: holding, hold: " + std::to_string(hold) + "}\n");
      std::string without = config(2, queue, true, ", spin: 100", 200, 8);
      Pipeline a = PipelineAccess::from_string(with, test_registry());
      Pipeline b = PipelineAccess::from_string(without, test_registry());
      std::vector<std::uint64_t> index_a;
      std::vector<std::uint8_t> bytes_a;
      std::vector<std::uint8_t> bytes_b;
      while (auto x = a.next()) {
        index_a.push_back(x->index());
        auto v = x->values<std::uint8_t>();
        bytes_a.insert(bytes_a.end(), v.begin(), v.end());
      }
      while (auto x = b.next()) {
        auto v = x->values<std::uint8_t>();
        bytes_b.insert(bytes_b.end(), v.begin(), v.end());
      }
      ASSERT_EQ(bytes_a.size(), bytes_b.size());
      for (std::size_t i = 0; i < bytes_a.size(); ++i) {
        ASSERT_EQ(bytes_a[i], static_cast<std::uint8_t>(bytes_b[i] + 1)) << i;
      }
      for (std::size_t i = 0; i < index_a.size(); ++i) EXPECT_EQ(index_a[i], i);  // order kept
      const RunStats s = a.stats();
      ASSERT_EQ(s.metrics.size(), 1U);
      EXPECT_EQ(s.metrics[0].first, "holding.wrong_thread");
      EXPECT_EQ(s.metrics[0].second, 0.0);
    }
  }
}

TEST(Engine, LastBatchPadCountsAcrossEpochs) {
  Pipeline p = PipelineAccess::from_string(config(2, 4, true, ", spin: 0", 20, 8, "pad", 3),
                                           test_registry());
  const Drained d = drain(p);
  EXPECT_EQ(d.pads, (std::vector<int>{0, 0, 4, 0, 0, 4, 0, 0, 4}));
}

TEST(Engine, StatsReportEveryStage) {
  Pipeline p = PipelineAccess::from_string(config(2, 4, true), test_registry());
  drain(p);
  const RunStats s = p.stats();
  ASSERT_EQ(s.stages.size(), 5U);
  EXPECT_EQ(s.stages[1].name, "work");
  EXPECT_EQ(s.stages[1].items, 300U);
  EXPECT_GT(s.stages[1].busy_seconds, 0.0);
  EXPECT_EQ(s.stages[3].items, 300U);  // batch
  EXPECT_EQ(s.stages[4].items, 19U);   // discard: ceil(300 / 16) batches
  EXPECT_EQ(s.batches, 19U);
  EXPECT_TRUE(s.finished);
  EXPECT_GT(s.images_per_second, 0.0);
}

TEST(Engine, DestroyingAPipelineMidRunDoesNotHang) {
  for (int i = 0; i < 5; ++i) {
    Pipeline p =
        PipelineAccess::from_string(config(2, 2, i % 2 == 0, "", 1 << 20), test_registry());
    auto b = p.next();
    ASSERT_TRUE(b.has_value());
  }
}

TEST(Engine, ABatchHeldByTheConsumerStallsButDoesNotLoseData) {
  Pipeline p = PipelineAccess::from_string(config(2, 2, true, ", spin: 0", 64, 4), test_registry());
  std::vector<Batch> held;
  // prefetch is 2: holding two batches is allowed; the pipeline waits for one to come back.
  held.push_back(*p.next());
  held.push_back(*p.next());
  held.clear();
  const Drained d = drain(p);
  EXPECT_EQ(d.ids.size(), 56U);
}

// ---- Where the time goes -------------------------------------------------------------------

const StageStats& stage(const RunStats& s, const std::string& name) {
  for (const auto& st : s.stages) {
    if (st.name == name) return st;
  }
  throw std::logic_error("no stage " + name);
}

// A stage's slot time: busy, waiting for input, blocked on output and waiting for a worker
// together cover every slot for the whole run.
double accounted(const StageStats& st) {
  return st.busy_seconds + st.wait_input_seconds + st.blocked_output_seconds +
         st.wait_worker_seconds;
}

// Unordered by default: no ordering window, so only the edges' own tokens bound each stage.
std::string two_work_stages(const std::string& source, const std::string& work,
                            const std::string& work2, int threads = 2, bool ordered = false) {
  return "pipeline: {threads: " + std::to_string(threads) +
         ", queue: 4, seed: 3, ordered: " + (ordered ? "true" : "false") + "}\n" +
         "stages:\n"
         "  - {type: synthetic" +
         source + "}\n  - {type: work" + work + "}\n  - {type: work, name: work2" + work2 +
         "}\n  - {type: batch, size: 8}\n  - {type: discard}\n";
}

TEST(WhereTheTimeGoes, ASlowDownstreamStageBlocksTheOneBeforeIt) {
  // About 0.6 s: the contrast needs a second thread in the arena, and on a loaded machine the
  // worker may join late; a run this long leaves it most of the run either way.
  Pipeline p = PipelineAccess::from_string(
      two_work_stages(", count: 400", ", spin: 0", ", spin: 0, sleep_us: 1500, concurrency: 1"),
      test_registry());
  drain(p);
  const RunStats s = p.stats();
  const StageStats& work = stage(s, "work");
  const StageStats& work2 = stage(s, "work2");
  const double work_slots = work.concurrency * s.run_wall_seconds;
  // work is cheap and its output edge is full: blocked on work2 is where its slots' time goes.
  // (The bounds leave room for an oversubscribed machine, where preempted workers blur the
  // causes; the contrast between the two stages is what must hold.)
  EXPECT_GT(work.blocked_output_seconds, 0.15 * work_slots) << format_summary("p", s);
  EXPECT_GT(work.blocked_output_seconds, 10 * work.busy_seconds) << format_summary("p", s);
  // work2 always has input and room after it: it is busy, neither waiting nor blocked.
  EXPECT_LT(work2.blocked_output_seconds, 0.05 * work2.busy_seconds) << format_summary("p", s);
  EXPECT_LT(work2.blocked_output_seconds, 0.1 * work.blocked_output_seconds);
  EXPECT_LT(work2.wait_input_seconds, 0.1 * work2.busy_seconds) << format_summary("p", s);
  EXPECT_GT(work2.busy_seconds, 0.8 * s.run_wall_seconds) << format_summary("p", s);
  // Its input edge is full all along.
  EXPECT_EQ(work2.queue_peak, work2.queue_capacity);
  EXPECT_GT(work2.queue_mean, 0.25 * work2.queue_capacity) << format_summary("p", s);
  for (const auto* st : {&work, &work2}) {
    EXPECT_NEAR(accounted(*st), st->concurrency * s.run_wall_seconds,
                0.1 * st->concurrency * s.run_wall_seconds)
        << st->name << "\n"
        << format_summary("p", s);
  }
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "work2") << b.report;
}

TEST(WhereTheTimeGoes, ASlowSourceMakesTheStagesAfterItWait) {
  Pipeline p = PipelineAccess::from_string(
      two_work_stages(", count: 150, next_sleep_us: 1000", ", spin: 0", ", spin: 0"),
      test_registry());
  drain(p);
  const RunStats s = p.stats();
  const StageStats& source = s.stages.front();
  const StageStats& work = stage(s, "work");
  const StageStats& work2 = stage(s, "work2");
  EXPECT_GT(source.busy_seconds, 0.6 * s.run_wall_seconds) << format_summary("p", s);
  // The source never waits for a token: every edge after it is empty.
  EXPECT_LT(source.blocked_output_seconds, 0.3 * source.busy_seconds) << format_summary("p", s);
  for (const auto* st : {&work, &work2}) {
    EXPECT_GT(st->wait_input_seconds, 0.6 * st->concurrency * s.run_wall_seconds)
        << st->name << "\n"
        << format_summary("p", s);
    EXPECT_LT(st->blocked_output_seconds, 0.05 * st->wait_input_seconds) << st->name;
    EXPECT_LT(st->queue_mean, 0.5) << st->name;
  }
  EXPECT_EQ(find_bottleneck(s).stage, "synthetic") << find_bottleneck(s).report;
}

TEST(WhereTheTimeGoes, ASlowConsumerIsNamed) {
  Pipeline p = PipelineAccess::from_string(
      two_work_stages(", count: 240", ", spin: 0", ", spin: 0"), test_registry());
  while (auto b = p.next()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const RunStats s = p.stats();
  EXPECT_GT(s.consumer_wait_seconds, 0.6 * s.run_wall_seconds) << format_summary("p", s);
  EXPECT_EQ(find_bottleneck(s).stage, "consumer");
}

TEST(WhereTheTimeGoes, ConcurrencyAutoGivesTheCostlyStageTheThreads) {
  auto run = [](const std::string& work, const std::string& work2) {
    Pipeline p = PipelineAccess::from_string(two_work_stages(", count: 600", work, work2, 4, true),
                                             test_registry());
    Drained d = drain(p);
    return std::make_pair(d.hash, p.stats());
  };
  const auto [hash, s] = run(", spin: 0, sleep_us: 2000, concurrency: auto",
                             ", spin: 0, sleep_us: 20, concurrency: auto");
  const StageStats& work = stage(s, "work");
  const StageStats& work2 = stage(s, "work2");
  EXPECT_TRUE(work.concurrency_auto);
  EXPECT_TRUE(work2.concurrency_auto);
  // work takes over 10 times as long as work2 (a sleep, so even on a busy machine): it gets the
  // 4 threads, work2 the floor of two slots.
  EXPECT_EQ(work.concurrency, 4) << s.concurrency_note;
  EXPECT_EQ(work2.concurrency, 2) << s.concurrency_note;
  EXPECT_NE(s.concurrency_note.find("work2 2"), std::string::npos) << s.concurrency_note;
  // Balancing changes when items run, never what they become.
  const auto [fixed_hash, fixed_stats] =
      run(", spin: 0, sleep_us: 2000", ", spin: 0, sleep_us: 20");
  EXPECT_EQ(hash, fixed_hash);
  EXPECT_TRUE(fixed_stats.concurrency_note.empty());
}

TEST(WhereTheTimeGoes, ConcurrencyAutoIsRejectedOnASerialStage) {
  std::string cfg = config(2, 4, true);
  cfg.replace(cfg.find("{type: discard}"), 15, "{type: discard, concurrency: auto}");
  try {
    PipelineAccess::from_string(cfg, test_registry());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'concurrency: auto' balances concurrent stages"),
              std::string::npos)
        << e.what();
  }
}

TEST(WhereTheTimeGoes, ALongRunsTraceKeepsEachThreadsLatestEvents) {
  const auto path = std::filesystem::path(MILLRACE_BINARY_DIR) / "engine_test_trace.json";
  std::string cfg = config(2, 4, true, ", spin: 0", 3000);
  cfg.replace(cfg.find("seed: 7"), 7, "seed: 7, trace: '" + path.string() + "', trace_events: 64");
  Pipeline p = PipelineAccess::from_string(cfg, test_registry());
  drain(p);
  const RunStats s = p.stats();
  ASSERT_TRUE(s.trace.written);
  EXPECT_EQ(s.trace.events_per_thread, 64);
  // Two workers and one spare slot: at most 3 x 64 events kept, the rest counted as dropped.
  EXPECT_LE(s.trace.events, 3U * 64U);
  EXPECT_GE(s.trace.events, 64U);
  EXPECT_GT(s.trace.dropped, 3000U);  // several spans and counter samples per sample
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t spans = 0;
  for (std::size_t at = text.find("\"ph\":\"X\""); at != std::string::npos;
       at = text.find("\"ph\":\"X\"", at + 1)) {
    ++spans;
  }
  EXPECT_GT(spans, 0U);
  EXPECT_LE(spans, s.trace.events);
  EXPECT_NE(text.find("\"dropped_events\":" + std::to_string(s.trace.dropped)), std::string::npos);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace millrace
