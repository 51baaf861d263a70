// Tests of the `batch` stage driven through its BatchStage interface with a fake emitter that
// recycles a fixed set of buffers, as the engine's pool does.
#include "stages/batch/batch_stage.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/config_node.hpp"

namespace millrace {
namespace {

// Hands out buffers from a vector it owns; a released buffer is reset (keeping its contents'
// capacity and stale elements, like the engine's pool), so a stage that relies on fresh buffers
// shows up here. Every emitted batch is copied for inspection.
class FakeEmitter final : public BatchEmitter {
 public:
  explicit FakeEmitter(std::size_t buffers = 8) : buffers_(buffers), in_use_(buffers, false) {}

  BatchData& acquire() override {
    for (std::size_t i = 0; i < buffers_.size(); ++i) {
      if (!in_use_[i]) {
        in_use_[i] = true;
        ++acquired;
        return buffers_[i];
      }
    }
    throw std::logic_error("fake emitter: all buffers in use");
  }
  void emit(BatchData& batch) override {
    emitted.push_back(batch);
    ++emits_this_call;
    give_back(batch);
  }
  void discard(BatchData& batch) override {
    ++discarded;
    give_back(batch);
  }

  std::size_t in_use() const {
    std::size_t n = 0;
    for (bool b : in_use_) n += b ? 1 : 0;
    return n;
  }

  std::vector<BatchData> emitted;
  int emits_this_call = 0;
  int acquired = 0;
  int discarded = 0;

 private:
  void give_back(BatchData& batch) {
    const auto i = static_cast<std::size_t>(&batch - buffers_.data());
    if (i >= buffers_.size() || !in_use_[i]) {
      ADD_FAILURE() << "a buffer that was not acquired was handed back";
      return;
    }
    in_use_[i] = false;
    buffers_[i].reset();
  }

  std::vector<BatchData> buffers_;
  std::vector<bool> in_use_;
};

constexpr int kC = 3;
constexpr int kH = 2;
constexpr int kW = 2;
constexpr std::size_t kRowBytes = static_cast<std::size_t>(kC) * kH * kW;

// The int8 value of element k of the sample with this id: distinct per sample and element.
std::int8_t pixel(std::uint64_t id, std::size_t k) {
  return static_cast<std::int8_t>(static_cast<int>((id * 37 + k * 5) % 256) - 128);
}

Sample make_sample(std::uint64_t id, std::uint32_t epoch, int label_width = 1, int c = kC,
                   int h = kH, int w = kW) {
  Sample s;
  s.id = id;
  s.epoch = epoch;
  s.path = "img/" + std::to_string(id) + ".jpg";
  for (int k = 0; k < label_width; ++k) s.labels.push_back(static_cast<float>(id) + 0.25F * k);
  s.tensor.reshape(DType::kInt8, {c, h, w}, "CHW");
  for (std::size_t k = 0; k < s.tensor.storage.size(); ++k) {
    s.tensor.storage[k] = static_cast<std::uint8_t>(pixel(id, k));
  }
  return s;
}

BatchAssembler make_batch(int size, BatchAssembler::Last last) {
  StageContext context;
  context.name = "batch";
  context.type = "batch";
  BatchAssembler::Params params;
  params.size = size;
  params.last = last;
  return BatchAssembler(context, params);
}

// Pushes samples id_begin..id_end-1 of `epoch`, checking that no call emits more than one batch.
void push_range(BatchAssembler& stage, FakeEmitter& out, std::uint64_t id_begin,
                std::uint64_t id_end, std::uint32_t epoch, int label_width = 1) {
  for (std::uint64_t id = id_begin; id < id_end; ++id) {
    out.emits_this_call = 0;
    stage.push(make_sample(id, epoch, label_width), out);
    EXPECT_LE(out.emits_this_call, 1) << "push emitted more than one batch";
  }
}

void finish(BatchAssembler& stage, FakeEmitter& out, std::uint32_t epoch) {
  out.emits_this_call = 0;
  stage.finish_epoch(epoch, out);
  EXPECT_LE(out.emits_this_call, 1) << "finish_epoch emitted more than one batch";
}

// Checks every row of `b` against the sample whose id is listed for that row in `ids`.
void expect_rows(const BatchData& b, const std::vector<std::uint64_t>& ids, int label_width = 1) {
  ASSERT_EQ(b.rows, ids.size());
  ASSERT_EQ(b.data.rank, 4);
  EXPECT_EQ(b.data.dtype, DType::kInt8);
  EXPECT_EQ(b.data.layout, "NCHW");
  EXPECT_EQ(b.data.shape[0], static_cast<std::int64_t>(ids.size()));
  EXPECT_EQ(b.data.shape[1], kC);
  EXPECT_EQ(b.data.shape[2], kH);
  EXPECT_EQ(b.data.shape[3], kW);
  ASSERT_EQ(b.data.storage.size(), ids.size() * kRowBytes);
  EXPECT_EQ(b.label_width, label_width);
  ASSERT_GE(b.labels.size(), ids.size() * static_cast<std::size_t>(label_width));
  ASSERT_GE(b.ids.size(), ids.size());
  // The public Batch::paths() hands out the whole vector: it must hold exactly one per row.
  ASSERT_EQ(b.paths.size(), ids.size());
  for (std::size_t r = 0; r < ids.size(); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    EXPECT_EQ(b.ids[r], ids[r]);
    EXPECT_EQ(b.paths[r], "img/" + std::to_string(ids[r]) + ".jpg");
    for (int k = 0; k < label_width; ++k) {
      EXPECT_EQ(b.labels[r * static_cast<std::size_t>(label_width) + static_cast<std::size_t>(k)],
                static_cast<float>(ids[r]) + 0.25F * k);
    }
    bool same = true;
    for (std::size_t k = 0; k < kRowBytes; ++k) {
      same =
          same && static_cast<std::int8_t>(b.data.storage[r * kRowBytes + k]) == pixel(ids[r], k);
    }
    EXPECT_TRUE(same) << "pixels of row " << r << " are not those of sample " << ids[r];
  }
}

TEST(BatchAssembler, FullBatchesInOrder) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 8, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[0], {0, 1, 2, 3});
  expect_rows(out.emitted[1], {4, 5, 6, 7});
  for (const auto& b : out.emitted) {
    EXPECT_EQ(b.pad, 0);
    EXPECT_EQ(b.epoch, 0U);
  }
  finish(stage, out, 0);
  // The epoch divided evenly: nothing more to emit, and every buffer is back.
  EXPECT_EQ(out.emitted.size(), 2U);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, PadRepeatsTheEpochsFirstSamples) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 10, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 3U);
  expect_rows(out.emitted[0], {0, 1, 2, 3});
  expect_rows(out.emitted[1], {4, 5, 6, 7});
  // MXNet's round_batch: the two missing rows are the epoch's samples 0 and 1.
  expect_rows(out.emitted[2], {8, 9, 0, 1});
  EXPECT_EQ(out.emitted[2].pad, 2);
  EXPECT_EQ(out.emitted[0].pad, 0);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, PadOfOneMissingRow) {
  FakeEmitter out;
  auto stage = make_batch(3, BatchAssembler::Last::kPad);
  push_range(stage, out, 100, 105, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[1], {103, 104, 100});
  EXPECT_EQ(out.emitted[1].pad, 1);
}

TEST(BatchAssembler, EpochShorterThanABatchPadsByCyclingItsOwnRows) {
  FakeEmitter out;
  auto stage = make_batch(5, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 2, 0);
  EXPECT_TRUE(out.emitted.empty());
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 1U);
  expect_rows(out.emitted[0], {0, 1, 0, 1, 0});
  EXPECT_EQ(out.emitted[0].pad, 3);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, SingleSampleEpochFillsTheBatchWithItself) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kPad);
  push_range(stage, out, 9, 10, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 1U);
  expect_rows(out.emitted[0], {9, 9, 9, 9});
  EXPECT_EQ(out.emitted[0].pad, 3);
}

TEST(BatchAssembler, PadComesFromTheSameEpoch) {
  FakeEmitter out;
  auto stage = make_batch(3, BatchAssembler::Last::kPad);
  // Epochs overlap, as they may when samples arrive out of order.
  push_range(stage, out, 0, 3, 0);    // epoch 0, batch 0..2 emitted
  push_range(stage, out, 10, 13, 1);  // epoch 1, batch 10..12 emitted
  push_range(stage, out, 3, 4, 0);
  push_range(stage, out, 13, 15, 1);
  finish(stage, out, 1);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 4U);
  expect_rows(out.emitted[0], {0, 1, 2});
  expect_rows(out.emitted[1], {10, 11, 12});
  expect_rows(out.emitted[2], {13, 14, 10});
  EXPECT_EQ(out.emitted[2].epoch, 1U);
  EXPECT_EQ(out.emitted[2].pad, 1);
  expect_rows(out.emitted[3], {3, 0, 1});
  EXPECT_EQ(out.emitted[3].epoch, 0U);
  EXPECT_EQ(out.emitted[3].pad, 2);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, PadEveryEpochOfSeveral) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kPad);
  for (std::uint32_t epoch = 0; epoch < 3; ++epoch) {
    // The source reshuffles every epoch: here, epoch e starts at id 10 * e.
    push_range(stage, out, 10ULL * epoch, 10ULL * epoch + 6, epoch);
    finish(stage, out, epoch);
  }
  ASSERT_EQ(out.emitted.size(), 6U);
  for (std::uint32_t epoch = 0; epoch < 3; ++epoch) {
    const std::uint64_t b = 10ULL * epoch;
    const auto& full = out.emitted[2ULL * epoch];
    const auto& padded = out.emitted[2ULL * epoch + 1];
    expect_rows(full, {b, b + 1, b + 2, b + 3});
    expect_rows(padded, {b + 4, b + 5, b, b + 1});
    EXPECT_EQ(padded.pad, 2);
    EXPECT_EQ(padded.epoch, epoch);
  }
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, DropDiscardsTheIncompleteBatch) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kDrop);
  push_range(stage, out, 0, 10, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[0], {0, 1, 2, 3});
  expect_rows(out.emitted[1], {4, 5, 6, 7});
  EXPECT_GE(out.discarded, 1);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, DropOfAnEpochShorterThanABatchEmitsNothing) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kDrop);
  push_range(stage, out, 0, 3, 0);
  finish(stage, out, 0);
  EXPECT_TRUE(out.emitted.empty());
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, PartialEmitsASmallerBatch) {
  FakeEmitter out;
  auto stage = make_batch(4, BatchAssembler::Last::kPartial);
  push_range(stage, out, 0, 10, 0, 2);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 3U);
  expect_rows(out.emitted[1], {4, 5, 6, 7}, 2);
  expect_rows(out.emitted[2], {8, 9}, 2);
  EXPECT_EQ(out.emitted[2].data.shape[0], 2);
  EXPECT_EQ(out.emitted[2].data.bytes(), 2 * kRowBytes);
  EXPECT_EQ(out.emitted[2].labels.size(), 4U);
  EXPECT_EQ(out.emitted[2].pad, 0);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, RecycledBuffersAfterAPartialBatchAreFullSizeAgain) {
  // One buffer at a time: the partial batch's buffer (shrunk) is the next epoch's first.
  FakeEmitter out(1);
  auto stage = make_batch(4, BatchAssembler::Last::kPartial);
  push_range(stage, out, 0, 1, 0);
  finish(stage, out, 0);
  push_range(stage, out, 20, 24, 1);
  finish(stage, out, 1);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[0], {0});
  expect_rows(out.emitted[1], {20, 21, 22, 23});
}

TEST(BatchAssembler, LabelWidthTwo) {
  FakeEmitter out;
  auto stage = make_batch(3, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 5, 0, 2);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[0], {0, 1, 2}, 2);
  expect_rows(out.emitted[1], {3, 4, 0}, 2);
  EXPECT_EQ(out.emitted[1].labels.size(), 6U);
}

TEST(BatchAssembler, SampleOfAnotherShapeIsASampleError) {
  FakeEmitter out;
  auto stage = make_batch(3, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 1, 0);
  EXPECT_THROW(stage.push(make_sample(1, 0, 1, kC, kH, kW + 1), out), SampleError);
  EXPECT_THROW(stage.push(make_sample(2, 0, 1, 1, kH, kW), out), SampleError);
  EXPECT_THROW(stage.push(make_sample(3, 0, 2), out), SampleError);  // two labels, not one
  Sample uint8_sample = make_sample(4, 0);
  uint8_sample.tensor.dtype = DType::kUInt8;
  EXPECT_THROW(stage.push(uint8_sample, out), SampleError);
  Sample rank2 = make_sample(5, 0);
  rank2.tensor.reshape(DType::kInt8, {kC, std::int64_t{kH} * kW}, "CX");
  EXPECT_THROW(stage.push(rank2, out), SampleError);
  try {
    stage.push(make_sample(6, 0, 1, kC, 4, 4), out);
    ADD_FAILURE() << "no error";
  } catch (const SampleError& e) {
    // The message says what the sample is and what the batch holds.
    EXPECT_NE(std::string(e.what()).find("3x4x4"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("3x2x2"), std::string::npos) << e.what();
  }
  // The rejected samples left no trace: the batch goes on with the next good ones.
  push_range(stage, out, 7, 9, 0);
  ASSERT_EQ(out.emitted.size(), 1U);
  expect_rows(out.emitted[0], {0, 7, 8});
}

TEST(BatchAssembler, SampleOfAnotherShapeAtABatchBoundaryIsASampleError) {
  // Pad rows are copied from the epoch's first batch, so every batch of an epoch must have the
  // shape of the first, not only the rows within one batch.
  FakeEmitter out;
  auto stage = make_batch(2, BatchAssembler::Last::kPad);
  push_range(stage, out, 0, 2, 0);
  ASSERT_EQ(out.emitted.size(), 1U);
  ASSERT_THROW(stage.push(make_sample(2, 0, 1, kC, kH + 1, kW + 1), out), SampleError);
  push_range(stage, out, 3, 4, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  expect_rows(out.emitted[1], {3, 0});
  EXPECT_EQ(out.emitted[1].pad, 1);
}

TEST(BatchAssemblerDeathTest, SampleWithoutATensorIsRejected) {
  // A sample that no stage decoded (a pipeline of files then batch) has no tensor: batching it
  // must fail with an error, never read its missing pixels. The check runs in a child process so
  // that a crash fails this test only.
  EXPECT_EXIT(
      {
        FakeEmitter out;
        auto stage = make_batch(2, BatchAssembler::Last::kPad);
        Sample raw;
        raw.id = 1;
        raw.path = "img/1.jpg";
        raw.labels = {0.0F};
        try {
          stage.push(raw, out);
        } catch (const std::runtime_error&) {
          std::_Exit(0);
        }
        std::_Exit(1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(BatchAssembler, PendingCropOrMirrorIsAPipelineError) {
  FakeEmitter out;
  auto stage = make_batch(2, BatchAssembler::Last::kPad);
  Sample cropped = make_sample(0, 0);
  cropped.geometry.roi = {0, 0, 1, 1};
  try {
    stage.push(cropped, out);
    ADD_FAILURE() << "no error";
  } catch (const SampleError&) {
    ADD_FAILURE() << "a pipeline bug must not be a per-sample error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("normalize"), std::string::npos) << e.what();
  }
  Sample mirrored = make_sample(1, 0);
  mirrored.geometry.flips = flip_of(1);
  EXPECT_THROW(stage.push(mirrored, out), std::runtime_error);
  EXPECT_EQ(out.in_use(), 0U);
}

TEST(BatchAssembler, QuantizationTravelsWithTheBatch) {
  FakeEmitter out(2);
  auto stage = make_batch(2, BatchAssembler::Last::kPartial);
  Quantization q;
  q.unit = {0.5F, 0.25F, 2.0F};
  q.zero_point = -3.0F;
  q.mxnet_compatible = true;
  for (std::uint64_t id = 0; id < 2; ++id) {
    Sample s = make_sample(id, 0);
    s.quantization = &q;
    stage.push(s, out);
  }
  // The next batch reuses the buffer and its samples carry no quantization: none is reported.
  push_range(stage, out, 2, 3, 0);
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  EXPECT_EQ(out.emitted[0].quantization.unit, q.unit);
  EXPECT_EQ(out.emitted[0].quantization.zero_point, -3.0F);
  EXPECT_TRUE(out.emitted[0].quantization.mxnet_compatible);
  EXPECT_TRUE(out.emitted[1].quantization.unit.empty());
  EXPECT_EQ(out.emitted[1].quantization.zero_point, 0.0F);
  EXPECT_FALSE(out.emitted[1].quantization.mxnet_compatible);
}

TEST(BatchAssembler, Float32AndHwcSamples) {
  FakeEmitter out;
  auto stage = make_batch(2, BatchAssembler::Last::kPad);
  for (std::uint64_t id = 0; id < 3; ++id) {
    Sample s;
    s.id = id;
    s.labels = {1.0F};
    s.tensor.reshape(DType::kFloat32, {1, 2, 3}, "HWC");
    for (int k = 0; k < 6; ++k) {
      const float v = static_cast<float>(id) * 10.0F + static_cast<float>(k) * 0.5F;
      std::memcpy(s.tensor.storage.data() + static_cast<std::ptrdiff_t>(4) * k, &v, 4);
    }
    stage.push(s, out);
  }
  finish(stage, out, 0);
  ASSERT_EQ(out.emitted.size(), 2U);
  const BatchData& b = out.emitted[1];
  EXPECT_EQ(b.data.layout, "NHWC");
  EXPECT_EQ(b.data.dtype, DType::kFloat32);
  ASSERT_EQ(b.data.bytes(), 2U * 6U * 4U);
  const std::vector<std::uint64_t> rows = {2, 0};
  for (std::size_t r = 0; r < 2; ++r) {
    for (int k = 0; k < 6; ++k) {
      float v = 0;
      std::memcpy(&v, b.data.storage.data() + (r * 6 + static_cast<std::size_t>(k)) * 4, 4);
      EXPECT_EQ(v, static_cast<float>(rows[r]) * 10.0F + static_cast<float>(k) * 0.5F);
    }
  }
}

TEST(BatchAssembler, FinishOfAnEpochWithoutSamplesEmitsNothing) {
  FakeEmitter out;
  auto stage = make_batch(2, BatchAssembler::Last::kPad);
  finish(stage, out, 0);
  finish(stage, out, 5);
  EXPECT_TRUE(out.emitted.empty());
  EXPECT_EQ(out.acquired, 0);
}

TEST(BatchAssembler, SchemaThroughTheRegistry) {
  const StageFactory* factory = Registry::builtin().find("batch");
  ASSERT_NE(factory, nullptr);
  EXPECT_EQ(factory->info().shape, StageShape::kBatch);
  EXPECT_FALSE(factory->info().concurrent);
  StageContext context;
  context.name = "batch";
  context.type = "batch";
  const std::vector<std::string> engine_keys{"type", "name", "concurrency", "queue", "on_error"};
  {
    Diagnostics d;
    ConfigNode node = load_config_document("type: batch\nsize: 2\nlast: partial\n", "b.yaml", d);
    auto stage = factory->create(node, context, engine_keys, d);
    ASSERT_NE(stage, nullptr);
    EXPECT_FALSE(d.has_errors());
    auto* batch = dynamic_cast<BatchAssembler*>(stage.get());
    ASSERT_NE(batch, nullptr);
    FakeEmitter out;
    for (std::uint64_t id = 0; id < 3; ++id) batch->push(make_sample(id, 0), out);
    batch->finish_epoch(0, out);
    ASSERT_EQ(out.emitted.size(), 2U);
    expect_rows(out.emitted[1], {2});
  }
  {
    Diagnostics d;
    ConfigNode node = load_config_document("type: batch\nsize: 0\nlast: round\n", "b.yaml", d);
    EXPECT_EQ(factory->create(node, context, engine_keys, d), nullptr);
    std::vector<std::string> messages;
    for (const auto& diagnostic : d.all()) messages.push_back(diagnostic.to_string());
    EXPECT_EQ(messages,
              (std::vector<std::string>{
                  "b.yaml:2:7: error: stage 'batch' (batch): 'size' is out of range: 0 not in "
                  "1..65536",
                  "b.yaml:3:7: error: stage 'batch' (batch): 'last' expects one of pad | drop | "
                  "partial, got 'round'"}));
  }
}

// A sample dealt twice in an epoch (Sample::repeat) to even out the parts of a run: a padding row,
// kept at the end of its batch and counted in `pad`.
TEST(BatchAssembler, RepeatedSamplesArePaddingRowsAtTheBatchEnd) {
  const auto repeat = [](std::uint64_t id) {
    Sample s = make_sample(id, 0);
    s.repeat = true;
    return s;
  };
  {
    FakeEmitter out;
    auto stage = make_batch(4, BatchAssembler::Last::kPartial);
    stage.push(make_sample(0, 0), out);
    stage.push(repeat(9), out);  // early, as an unordered run may bring it
    stage.push(make_sample(1, 0), out);
    finish(stage, out, 0);
    ASSERT_EQ(out.emitted.size(), 1U);
    expect_rows(out.emitted[0], {0, 1, 9});
    EXPECT_EQ(out.emitted[0].pad, 1);
  }
  {
    FakeEmitter out;
    auto stage = make_batch(4, BatchAssembler::Last::kPad);
    push_range(stage, out, 0, 5, 0);
    stage.push(repeat(1), out);
    finish(stage, out, 0);
    ASSERT_EQ(out.emitted.size(), 2U);
    expect_rows(out.emitted[1], {4, 1, 0, 1});
    EXPECT_EQ(out.emitted[1].pad, 3);  // the repeat and the two rows padded from the epoch's start
  }
  {
    FakeEmitter out;
    auto stage = make_batch(2, BatchAssembler::Last::kDrop);
    push_range(stage, out, 0, 1, 0);
    stage.push(repeat(0), out);
    finish(stage, out, 0);
    ASSERT_EQ(out.emitted.size(), 1U);
    EXPECT_EQ(out.emitted[0].pad, 1);
  }
}

}  // namespace
}  // namespace millrace
