// Where relative paths in a config lead: a path written in a config file is relative to the file's
// folder, whatever the current directory; one in YAML text (a Python dict arrives as text) or in
// an override is relative to the current directory. Two data sets of different sizes, one beside
// the config and one in the current directory, tell which folder a run read.
#include <gtest/gtest.h>

#include <filesystem>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "millrace/errors.hpp"
#include "millrace/pipeline.hpp"
#include "millrace/report.hpp"
#include "tests/support/config_testing.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;

using testing::InFolder;

void write_images(const fs::path& folder, int count) {
  fs::create_directories(folder / "class0");
  const cv::Mat image(24, 32, CV_8UC3, cv::Scalar(40, 120, 200));
  for (int i = 0; i < count; ++i) {
    ASSERT_TRUE(
        cv::imwrite((folder / "class0" / ("img" + std::to_string(i) + ".jpg")).string(), image));
  }
}

// Every relative path kind the run touches: the source's root, the sink's folder, the trace.
constexpr const char* kConfig =
    "pipeline: {threads: 2, trace: out/trace.json}\n"
    "stages:\n"
    "  - {type: files, root: data/x}\n"
    "  - {type: decode}\n"
    "  - {type: augment, size: 16}\n"
    "  - {type: normalize, mean: [123.68, 116.779, 103.939]}\n"
    "  - {type: batch, size: 1, last: partial}\n"
    "  - {type: npy, dir: out/batches}\n";

std::size_t samples_of(Pipeline p) {
  std::size_t n = 0;
  while (auto batch = p.next()) n += batch->size() - static_cast<std::size_t>(batch->pad());
  return n;
}

// <tmp>/data/x: 2 images, the current directory's; <tmp>/sub/data/x: 3, the config's.
class ConfigPaths : public ::testing::Test {
 protected:
  void SetUp() override {
    write_images(dir_ / "data/x", 2);
    write_images(dir_ / "sub/data/x", 3);
    dir_.write("sub/config.yaml", kConfig);
    // The trace's folder must exist (the npy sink makes its own).
    fs::create_directories(dir_ / "out");
    fs::create_directories(dir_ / "sub/out");
  }
  testing::TempDir dir_{"millrace_paths"};
};

TEST_F(ConfigPaths, AConfigFileResolvesAgainstItsFolderFromAnyDirectory) {
  {
    InFolder here(dir_.path());
    EXPECT_EQ(samples_of(Pipeline::from_file("sub/config.yaml")), 3U);
  }
  EXPECT_TRUE(fs::is_regular_file(dir_ / "sub/out/batches/batches.jsonl"));
  EXPECT_TRUE(fs::is_regular_file(dir_ / "sub/out/trace.json"));
  EXPECT_FALSE(fs::exists(dir_ / "out/batches"));
  EXPECT_FALSE(fs::exists(dir_ / "out/trace.json"));
  // From a folder with no data at all, by an absolute path.
  fs::create_directories(dir_ / "elsewhere");
  InFolder elsewhere(dir_ / "elsewhere");
  EXPECT_EQ(samples_of(Pipeline::from_file((dir_ / "sub/config.yaml").string())), 3U);
  EXPECT_TRUE(validate_file((dir_ / "sub/config.yaml").string()).empty());
}

TEST_F(ConfigPaths, TextAndOverridesResolveAgainstTheCurrentDirectory) {
  InFolder here(dir_.path());
  // YAML text (what a Python dict becomes) has no folder: its source name does not lend one.
  EXPECT_EQ(samples_of(Pipeline::from_string(kConfig, "sub/config.yaml")), 2U);
  EXPECT_TRUE(fs::is_regular_file(dir_ / "out/batches/batches.jsonl"));
  EXPECT_TRUE(fs::is_regular_file(dir_ / "out/trace.json"));
  // An override is typed where the user stands.
  EXPECT_EQ(samples_of(Pipeline::from_file("sub/config.yaml", {"files.root=data/x"})), 2U);
  EXPECT_EQ(samples_of(Pipeline::from_file("sub/config.yaml", {"stages.0.root=data/x"})), 2U);
}

TEST_F(ConfigPaths, AbsolutePathsAreTakenAsTheyAre) {
  dir_.write("sub/absolute.yaml",
             "stages:\n  - {type: files, root: \"" + (dir_ / "data/x").string() +
                 "\"}\n  - {type: decode}\n  - {type: augment, size: 16}\n"
                 "  - {type: normalize, mean: [124, 117, 104]}\n  - {type: batch, size: 1}\n");
  InFolder here(dir_ / "sub");
  EXPECT_EQ(samples_of(Pipeline::from_file("absolute.yaml")), 2U);
}

TEST_F(ConfigPaths, ErrorsNameTheResolvedPath) {
  dir_.write("sub/missing.yaml",
             "stages:\n  - {type: files, root: nowhere}\n  - {type: batch, size: 1}\n");
  InFolder here(dir_.path());
  bool named = false;
  for (const auto& d : validate_file("sub/missing.yaml")) {
    named = named || d.message.find("sub/nowhere") != std::string::npos;
  }
  EXPECT_TRUE(named) << "no diagnostic names sub/nowhere";
}

TEST(ResolveConfigPath, Rules) {
  Location file{"configs/a.yaml", 1, 1, true};
  EXPECT_EQ(resolve_config_path(file, "data/x"), "configs/data/x");
  EXPECT_EQ(resolve_config_path(file, "./data/x"), "configs/data/x");
  EXPECT_EQ(resolve_config_path(file, "../data/x"), "configs/../data/x");
  EXPECT_EQ(resolve_config_path(file, "/abs/x"), "/abs/x");
  EXPECT_EQ(resolve_config_path(file, "."), "configs");
  EXPECT_EQ(resolve_config_path(file, ""), "");
  EXPECT_EQ(resolve_config_path({"a.yaml", 1, 1, true}, "data/x"), "data/x");
  EXPECT_EQ(resolve_config_path({"/etc/m/a.yaml", 1, 1, true}, "x"), "/etc/m/x");
  EXPECT_EQ(resolve_config_path({"configs/a.yaml", 1, 1, false}, "data/x"), "data/x");
  EXPECT_EQ(resolve_config_path({"--set files.root=x", 0, 0, false}, "x"), "x");
}

}  // namespace
}  // namespace millrace
