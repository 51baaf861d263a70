// Replays the kept fuzz inputs: every file under tests/data/fuzz/<target>/ (the seeds, and every
// input that once crashed or hung a target, kept after its fix) goes through its target's entry
// point. The targets trap on a broken invariant and let through only unexpected exceptions, so
// a file passes when the call returns.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.hpp"

namespace millrace::fuzz {
namespace {

struct Target {
  const char* name;
  int (*run)(const std::uint8_t*, std::size_t);
};

// The one list of targets, in the order of fuzz/CMakeLists.txt.
const Target kTargets[] = {
    {"jpeg", jpeg}, {"image", image},   {"recordio", recordio}, {"idx", idx},
    {"lst", lst},   {"config", config}, {"onnx", onnx},         {"calibration", calibration},
};

class Replay : public ::testing::TestWithParam<Target> {};

TEST_P(Replay, EveryKeptInputRunsThrough) {
  const std::filesystem::path folder =
      std::filesystem::path(MILLRACE_TEST_DATA_DIR) / "fuzz" / GetParam().name;
  ASSERT_TRUE(std::filesystem::is_directory(folder)) << folder << " is missing";
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (entry.is_regular_file() && entry.path().filename() != "README.md") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << folder << " holds no inputs";
  for (const auto& file : files) {
    SCOPED_TRACE(file.string());
    std::ifstream in(file, std::ios::binary);
    ASSERT_TRUE(in) << "cannot read " << file;
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                          std::istreambuf_iterator<char>());
    EXPECT_NO_THROW(EXPECT_EQ(GetParam().run(bytes.data(), bytes.size()), 0));
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, Replay, ::testing::ValuesIn(kTargets),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace millrace::fuzz
