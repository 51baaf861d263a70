// The declared stream (engine/stream.hpp): the two passes of link_stream over real stages and
// over stages that only record what they were told.
#include "engine/stream.hpp"

#include <gtest/gtest.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stages/augment/augment_stage.hpp"
#include "stages/batch/batch_stage.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/decode/decode_stage.hpp"
#include "stages/normalize/normalize_stage.hpp"

namespace millrace {
namespace {

using testing::make_stage;
using testing::stage_context;

// Records the wants and the description it was given; wants `layout` from its input and, when
// `reads_window`, asks the stage right before it to consult it about a window.
class Probe final : public TransformStage, public WindowReader {
 public:
  Probe(const std::string& name, Layout layout, bool reads_window)
      : TransformStage(stage_context(name, 0)), layout_(layout), reads_window_(reads_window) {}
  StreamWants want_input(const StreamWants& output) override {
    told_wants = output;
    StreamWants wants = Stage::want_input(output);
    if (layout_ != Layout::kAny) wants.layout = layout_;
    if (reads_window_) wants.window_reader = this;
    return wants;
  }
  StreamDesc link(const StreamDesc& input, Diagnostics&) override {
    told_desc = input;
    linked_after_wants = told_wants.has_value();
    return input;
  }
  void process(Sample&, RunReporter&) const override {}
  std::optional<WindowRequest> window(int, int, const Sample&) const noexcept override {
    return std::nullopt;
  }

  std::optional<StreamWants> told_wants;
  std::optional<StreamDesc> told_desc;
  bool linked_after_wants = false;

 private:
  Layout layout_;
  bool reads_window_;
};

TEST(Stream, WantsGoBackToFrontAndTheWindowRequestOnlyOneStageUp) {
  Probe first("first", Layout::kAny, false);
  Probe middle("middle", Layout::kAny, false);
  Probe reader("reader", Layout::kAny, true);
  Probe last("last", Layout::kNHWC, false);
  Diagnostics d;
  link_stream({&first, &middle, &reader, &last}, d);
  ASSERT_TRUE(last.told_wants && reader.told_wants && middle.told_wants && first.told_wants);
  EXPECT_EQ(last.told_wants->layout, Layout::kAny);  // nothing after the last stage
  EXPECT_EQ(reader.told_wants->layout, Layout::kNHWC);
  EXPECT_EQ(first.told_wants->layout, Layout::kNHWC);  // passed through the stages between
  EXPECT_EQ(middle.told_wants->window_reader, &reader);
  EXPECT_EQ(first.told_wants->window_reader, nullptr);  // never further than one stage
  EXPECT_TRUE(first.linked_after_wants && last.linked_after_wants);
  EXPECT_FALSE(d.has_errors());
}

TEST(Stream, ImageStagesDescribeWhatTheyGive) {
  auto decode = make_stage<DecodeStage>("decode", "{}");
  auto augment = make_stage<AugmentStage>("augment", "{resize: 256, size: [224, 200]}");
  auto normalize = make_stage<NormalizeStage>("normalize", "{mean: [1, 2, 3]}");
  auto batch = make_stage<BatchAssembler>("batch", "{size: 4}");
  ASSERT_TRUE(decode && augment && normalize && batch);
  Probe wants_nhwc("model", Layout::kNHWC, false);
  Diagnostics d;
  const StreamDesc out =
      link_stream({decode.get(), augment.get(), normalize.get(), batch.get(), &wants_nhwc}, d);
  EXPECT_FALSE(d.has_errors());
  // `layout: auto` took the layout the last stage wants.
  EXPECT_EQ(normalize->layout(), Layout::kNHWC);
  EXPECT_EQ(out.dtype, DType::kInt8);
  EXPECT_EQ(out.layout, Layout::kNHWC);
  EXPECT_EQ(out.shape, (std::array<std::int64_t, 3>{224, 200, 3}));
  EXPECT_EQ(out.shape_stage, "augment");
  EXPECT_EQ(out.batch_size, 4);
  ASSERT_TRUE(out.scaling.has_value());
  EXPECT_EQ(out.scaling->stage, "normalize");
  EXPECT_EQ(out.scaling->mean, (std::array<double, 3>{1, 2, 3}));
  EXPECT_TRUE(out.scaling->mxnet_compatible);
  EXPECT_TRUE(out.outputs_stage.empty());
}

TEST(Stream, AnExplicitLayoutIsKeptAndChannelsFirstReordersTheShape) {
  auto augment = make_stage<AugmentStage>("augment", "{size: 32}");
  auto normalize = make_stage<NormalizeStage>(
      "normalize", "{dtype: float32, std: [2, 4, 8], scale: 0.5, zero_point: 1, layout: NCHW}");
  ASSERT_TRUE(augment && normalize);
  Probe wants_nhwc("model", Layout::kNHWC, false);
  Diagnostics d;
  const StreamDesc out = link_stream({augment.get(), normalize.get(), &wants_nhwc}, d);
  EXPECT_EQ(out.layout, Layout::kNCHW);
  EXPECT_EQ(out.shape, (std::array<std::int64_t, 3>{3, 32, 32}));
  EXPECT_EQ(out.spatial(), (std::array<std::int64_t, 2>{32, 32}));
  ASSERT_TRUE(out.scaling.has_value());
  // float32: one unit of the output is std / scale pixels.
  EXPECT_EQ(out.scaling->unit, (std::array<float, 3>{4, 8, 16}));
  EXPECT_EQ(out.scaling->zero_point, 1.0F);
}

// A stage whose type declares `step` about the content of its samples; records its input.
class ContentProbe final : public TransformStage {
 public:
  ContentProbe(const std::string& name, ContentStep step) : TransformStage(declaring(name, step)) {}
  StreamDesc link(const StreamDesc& input, Diagnostics&) override {
    told = input;
    return input;
  }
  void process(Sample&, RunReporter&) const override {}

  StreamDesc told;

 private:
  static StageContext declaring(const std::string& name, ContentStep step) {
    StageContext c = stage_context(name, 0);
    c.content = step;
    return c;
  }
};

TEST(Stream, TheEngineCarriesWhatTheSamplesCarryAndChecksTheOrderByIt) {
  ContentProbe source("source", {SampleContent::kAny, SampleContent::kEncoded});
  ContentProbe decoder("decoder", {SampleContent::kEncoded, SampleContent::kPixels});
  ContentProbe crop("crop", {SampleContent::kPixels});
  Diagnostics d;
  const StreamDesc out = link_stream({&source, &decoder, &crop}, d);
  EXPECT_FALSE(d.has_errors());
  EXPECT_EQ(source.told.content, SampleContent::kAny);
  EXPECT_EQ(decoder.told.content, SampleContent::kEncoded);
  EXPECT_EQ(decoder.told.content_stage, "stage 'source' (source)");
  EXPECT_EQ(crop.told.content, SampleContent::kPixels);
  // A stage that makes nothing new leaves the content, and its maker, as they came.
  EXPECT_EQ(out.content, SampleContent::kPixels);
  EXPECT_EQ(out.content_stage, "stage 'decoder' (decoder)");

  Diagnostics wrong;
  link_stream({&source, &crop, &decoder}, wrong);
  ASSERT_EQ(wrong.error_count(), 1U);
  EXPECT_EQ(wrong.all()[0].message,
            "stage 'crop' (crop): needs decoded pixels (an RGB8 HWC image), but after stage "
            "'source' (source) its samples carry encoded image bytes (put a decode stage before "
            "it)");
}

}  // namespace
}  // namespace millrace
