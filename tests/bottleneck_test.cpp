// The rule that names the stage limiting a run and what to change, on constructed statistics:
// each case sets up the figures a known situation produces and checks the stage and the advice.
#include <gtest/gtest.h>

#include <algorithm>

#include "millrace/report.hpp"

namespace millrace {
namespace {

StageStats make_stage(const std::string& name, const std::string& type, int concurrency,
                      double busy, double wait_input, double blocked, int capacity = 8,
                      double queue_mean = 0) {
  StageStats st;
  st.name = name;
  st.type = type;
  st.concurrency = concurrency;
  st.busy_seconds = busy;
  st.wait_input_seconds = wait_input;
  st.blocked_output_seconds = blocked;
  st.queue = capacity;
  st.queue_capacity = capacity;
  st.queue_mean = queue_mean;
  return st;
}

bool suggests(const Bottleneck& b, const std::string& change) {
  return std::find(b.changes.begin(), b.changes.end(), change) != b.changes.end();
}

// A 10-second run of the validation recipe on `threads` threads.
RunStats validation_run(int threads, int decode_concurrency, double decode_busy_share) {
  RunStats s;
  s.threads = threads;
  s.run_wall_seconds = 10;
  const double decode_slots = decode_concurrency * 10.0;
  const double decode_busy = decode_busy_share * decode_slots;
  s.stages = {
      make_stage("files", "files", threads, 0.2, 0.0, 0.9 * threads * 10.0),
      make_stage("decode", "decode", decode_concurrency, decode_busy, 0.0, 0.0, 8, 7.8),
      make_stage("augment", "augment", threads, 1.2, 0.85 * threads * 10.0, 0.0, 8, 0.3),
      make_stage("normalize", "normalize", threads, 0.4, 0.95 * threads * 10.0, 0.0, 8, 0.1),
      make_stage("batch", "batch", 1, 0.1, 9.5, 0.0, 16, 0.5),
      make_stage("npy", "npy", 1, 0.2, 9.5, 0.0, 8, 0.0),
  };
  return s;
}

TEST(Bottleneck, ASaturatedStageOnBusyThreadsIsNamedWithACheaperDecode) {
  // decode busy 97% of its 2 slots on 2 threads, its queue full, files blocked, augment starved.
  RunStats s = validation_run(2, 2, 0.97);
  s.stages[1].cheaper = {{"reduce: auto", "decodes only the crop window"},
                         {"dct: fast", "uses the fast inverse DCT"}};
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "decode") << b.report;
  EXPECT_TRUE(suggests(b, "decode.reduce: auto")) << b.report;
  EXPECT_TRUE(suggests(b, "decode.dct: fast")) << b.report;
  EXPECT_NE(b.report.find("(`decode.reduce: auto` decodes only the crop window; `decode.dct: "
                          "fast` uses the fast inverse DCT)"),
            std::string::npos)
      << b.report;
  EXPECT_FALSE(suggests(b, "decode.concurrency: 2")) << b.report;
  EXPECT_NE(b.report.find("'files' is blocked on it 90%"), std::string::npos) << b.report;
  EXPECT_NE(b.report.find("'augment' waits for its output 85%"), std::string::npos) << b.report;
  EXPECT_NE(b.report.find("7.8 of 8"), std::string::npos) << b.report;
}

TEST(Bottleneck, ASaturatedStageWithIdleThreadsGetsMoreConcurrency) {
  // decode serial on 8 threads: flat out on its one slot while the other threads idle.
  const Bottleneck b = find_bottleneck(validation_run(8, 1, 0.99));
  EXPECT_EQ(b.stage, "decode") << b.report;
  ASSERT_FALSE(b.changes.empty());
  EXPECT_EQ(b.changes.front(), "decode.concurrency: 8") << b.report;
}

TEST(Bottleneck, TheBusiestStageIsNamedNotTheFirstSlowOne) {
  RunStats s = validation_run(4, 4, 0.5);
  s.stages[2] = make_stage("augment", "augment", 1, 9.6, 0.1, 0.0, 8, 7.5);
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "augment") << b.report;
  EXPECT_EQ(b.changes.front(), "augment.concurrency: 4") << b.report;
}

TEST(Bottleneck, ASlowConsumerIsNamed) {
  RunStats s = validation_run(2, 2, 0.3);
  s.consumer_wait_seconds = 7;
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "consumer") << b.report;
  EXPECT_NE(b.report.find("70%"), std::string::npos) << b.report;
}

TEST(Bottleneck, TheNetworkIsNamedWhenItRunsFlatOut) {
  RunStats s = validation_run(2, 2, 0.4);
  s.stages.insert(s.stages.end() - 1, make_stage("infer", "infer", 1, 9.9, 0.05, 0.0, 8, 7.9));
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "infer") << b.report;
  EXPECT_TRUE(suggests(b, "infer.threads (more)")) << b.report;
}

TEST(Bottleneck, DataStagesStarvedOfCoresByTheNetworkGetFewerOneDnnThreads) {
  RunStats s = validation_run(2, 2, 0.95);
  s.stages.insert(s.stages.end() - 1, make_stage("infer", "infer", 1, 3.0, 6.0, 0.0, 8, 0.2));
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "decode") << b.report;
  EXPECT_TRUE(suggests(b, "infer.threads (fewer)")) << b.report;
}

TEST(Bottleneck, ASettingAlreadyOnIsNotOffered) {
  // The same saturated decode with `reduce: auto` and `dct: fast` on: it has nothing to offer.
  const Bottleneck b = find_bottleneck(validation_run(2, 2, 0.97));
  EXPECT_EQ(b.stage, "decode") << b.report;
  EXPECT_FALSE(suggests(b, "decode.reduce: auto")) << b.report;
  EXPECT_EQ(b.report.find("reduce"), std::string::npos) << b.report;
  EXPECT_NE(b.report.find("run on more cores"), std::string::npos) << b.report;
}

TEST(Bottleneck, ABurstyEdgeGetsALargerQueue) {
  RunStats s = validation_run(2, 2, 0.9);
  // augment blocked 30% of the time on normalize, which waits for it 40% of the time: they take
  // turns, the queue between them too shallow to let both run.
  s.stages[2].blocked_output_seconds = 0.3 * 2 * 10.0;
  s.stages[3].wait_input_seconds = 0.4 * 2 * 10.0;
  // Its edge holds its queue of 8 plus one item per slot of augment: the advice is about the
  // queue, the setting the user changes.
  s.stages[3].queue_capacity = 10;
  const Bottleneck b = find_bottleneck(s);
  EXPECT_TRUE(suggests(b, "normalize.queue: 16")) << b.report;
}

TEST(Bottleneck, NoSaturatedStageNamesNoStage) {
  RunStats s = validation_run(2, 2, 0.3);
  s.stages[0].blocked_output_seconds = 0;
  s.stages[1].wait_input_seconds = 0.1;
  const Bottleneck b = find_bottleneck(s);
  EXPECT_EQ(b.stage, "") << b.report;
  EXPECT_NE(b.report.find("No stage runs flat out"), std::string::npos) << b.report;
}

TEST(Bottleneck, ARunThatDidNotStartHasNoVerdict) {
  const Bottleneck b = find_bottleneck(RunStats{});
  EXPECT_EQ(b.stage, "");
  EXPECT_FALSE(b.report.empty());
}

}  // namespace
}  // namespace millrace
