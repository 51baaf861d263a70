// Golden tests of configuration errors: every tests/config_errors/NAME.yaml is validated and its
// diagnostics, formatted as `file:line:col: error: message`, must equal NAME.expected line for
// line. The expected files were written by hand, each location counted in the YAML file.
// Also: `--set` overrides are validated like the file itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "millrace/errors.hpp"
#include "millrace/pipeline.hpp"
#include "millrace/report.hpp"
#include "tests/support/config_testing.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;

const fs::path kCaseDir = fs::path(MILLRACE_SOURCE_DIR) / "tests" / "config_errors";

// Validation runs inside the cases' folder (an InFolder), so that each file is named `NAME.yaml` in
// its diagnostics and relative `root` folders (`.`) resolve there.
using testing::diagnostic_lines;
using testing::InFolder;

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kCaseDir, ec)) {
    if (entry.path().extension() == ".yaml") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  return text;
}

TEST(ConfigErrors, EveryRequiredCaseIsPresent) {
  const std::vector<std::string> names = case_names();
  for (const char* required :
       {"unknown_key", "wrong_type", "out_of_range", "unknown_stage_type", "missing_required",
        "duplicate_key", "wrong_list_length", "several_errors", "invalid_yaml",
        "missing_root_folder", "uint8_mean", "sink_before_batch", "no_batch", "unknown_top_level",
        "bad_threads", "serial_concurrency"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), required), names.end()) << required;
  }
  for (const auto& name : names) {
    EXPECT_TRUE(fs::is_regular_file(kCaseDir / (name + ".expected"))) << name << ".expected";
  }
}

class ConfigErrorCase : public ::testing::TestWithParam<std::string> {};

TEST_P(ConfigErrorCase, DiagnosticsMatchTheExpectedFile) {
  const std::string name = GetParam();
  const std::vector<std::string> expected = read_lines(kCaseDir / (name + ".expected"));
  const std::vector<std::string> yaml_lines = read_lines(kCaseDir / (name + ".yaml"));
  std::vector<Diagnostic> diagnostics;
  {
    InFolder here(kCaseDir);
    diagnostics = validate_file(name + ".yaml");
  }
  EXPECT_EQ(joined(diagnostic_lines(diagnostics)), joined(expected));

  EXPECT_TRUE(std::any_of(diagnostics.begin(), diagnostics.end(),
                          [](const Diagnostic& d) { return !d.warning; }))
      << name << ".yaml is a config error case but validates without errors";
  // Every diagnostic points into the file, at a place that exists in it (1-based).
  for (const auto& d : diagnostics) {
    SCOPED_TRACE(d.to_string());
    EXPECT_EQ(d.file, name + ".yaml");
    ASSERT_GE(d.line, 1);
    ASSERT_GE(d.column, 1);
    if (yaml_lines.empty()) continue;
    ASSERT_LE(static_cast<std::size_t>(d.line), yaml_lines.size());
    EXPECT_LE(static_cast<std::size_t>(d.column),
              yaml_lines[static_cast<std::size_t>(d.line) - 1].size());
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, ConfigErrorCase, ::testing::ValuesIn(case_names()),
                         [](const auto& info) { return info.param; });

TEST(ConfigErrors, AValidConfigHasNoDiagnostics) {
  // The cases' stages written correctly: their errors come from what each case changes.
  const testing::TempDir dir("millrace_valid");
  const fs::path file = dir.write("valid.yaml",
                                  "pipeline:\n  threads: 2\n  max_errors: 5%\nstages:\n"
                                  "  - type: files\n    root: " +
                                      kCaseDir.string() +
                                      "\n    shuffle: true\n"
                                      "  - type: decode\n    concurrency: 2\n    on_error: fail\n"
                                      "  - type: augment\n    size: 224\n    mirror: 0.5\n"
                                      "  - type: normalize\n    mean: [123.68, 116.779, 103.939]\n"
                                      "  - type: batch\n    size: 8\n    concurrency: serial\n"
                                      "  - type: npy\n    dir: out\n");
  const auto diagnostics = validate_file(file.string());
  for (const auto& d : diagnostics) ADD_FAILURE() << d.to_string();
}

TEST(ConfigErrors, QuotedNumberIsReportedAsAString) {
  // `size: "8"` is a string in YAML; a message that shows only '8' reads as if 8 were refused.
  try {
    Pipeline::from_string(
        "stages:\n  - type: files\n    root: .\n  - type: batch\n    size: \"8\"\n", "q.yaml");
    ADD_FAILURE() << "a quoted size was accepted";
  } catch (const ConfigError& e) {
    ASSERT_EQ(e.diagnostics().size(), 1U) << e.what();
    const std::string text = e.diagnostics()[0].to_string();
    EXPECT_EQ(text.rfind("q.yaml:5:11: error: stage 'batch' (batch): 'size' expects an integer", 0),
              0U)
        << text;
    EXPECT_NE(text.find("string"), std::string::npos) << text;
  }
}

TEST(ConfigErrors, MissingFileIsReported) {
  const auto diagnostics = validate_file("/nonexistent/millrace/config.yaml");
  ASSERT_EQ(diagnostics.size(), 1U);
  EXPECT_FALSE(diagnostics[0].warning);
  EXPECT_EQ(diagnostics[0].file, "/nonexistent/millrace/config.yaml");
}

TEST(ConfigErrors, OverridesAreValidatedWithTheFile) {
  InFolder here(kCaseDir);
  // An override can repair a case...
  EXPECT_TRUE(validate_file("wrong_type.yaml", {"batch.size=8"}).empty());
  // ...and its own errors are located at the override.
  EXPECT_EQ(diagnostic_lines(validate_file("wrong_type.yaml", {"batch.size=-3"})),
            std::vector<std::string>{"--set batch.size=-3: error: stage 'batch' (batch): "
                                     "'size' is out of range: -3 not in 1..65536"});
}

// A pipeline whose only fault can come from an override. Its folder holds no images, so a
// Pipeline that gets past validation fails in the source's prepare() with a runtime_error, not a
// ConfigError.
constexpr const char* kPipeline =
    "stages:\n"
    "  - type: files\n"
    "    root: .\n"
    "  - type: batch\n"
    "    size: 2\n";

std::vector<std::string> config_errors_of(const std::vector<std::string>& overrides) {
  InFolder here(kCaseDir);
  try {
    Pipeline::from_string(kPipeline, "inline.yaml", overrides);
  } catch (const ConfigError& e) {
    return diagnostic_lines(e.diagnostics());
  } catch (const std::exception&) {
    return {};
  }
  return {};
}

TEST(ConfigOverrides, UnknownStageNameIsAConfigError) {
  EXPECT_EQ(config_errors_of({"batchh.size=4"}),
            std::vector<std::string>{"--set batchh.size=4: error: no stage named 'batchh' (did you "
                                     "mean 'batch'?); stages: pipeline, files, batch"});
  EXPECT_THROW(Pipeline::from_string(kPipeline, "inline.yaml", {"sink.dir=out"}), ConfigError);
}

TEST(ConfigOverrides, OverriddenValuesAreCheckedLikeTheFile) {
  EXPECT_EQ(
      config_errors_of({"batch.szie=4"}),
      std::vector<std::string>{
          "--set batch.szie=4: error: stage 'batch' (batch): unknown key 'szie' (did you mean "
          "'size'?); known keys: type, name, concurrency, queue, on_error, size, last"});
  EXPECT_EQ(config_errors_of({"pipeline.threads=0"}),
            std::vector<std::string>{
                "--set pipeline.threads=0: error: pipeline: 'threads' is out of range: 0 not in "
                "1..1024"});
  // Several overrides, each with its own problem: all are reported.
  EXPECT_EQ(config_errors_of({"files.epochs=0", "nope.x=1", "batch.size=big"}).size(), 3U);
}

TEST(ConfigOverrides, InvalidOverrideValueIsOneError) {
  // A value that is not YAML is one error, at the override; no second error about the value
  // that replaced it.
  const auto bad_value = config_errors_of({"batch.last=[pad"});
  ASSERT_FALSE(bad_value.empty());
  EXPECT_EQ(bad_value[0].rfind("--set batch.last=[pad: error: invalid value '[pad'", 0), 0U)
      << bad_value[0];
  EXPECT_EQ(bad_value.size(), 1U) << joined(bad_value);
}

TEST(ConfigOverrides, AnOverrideDoesNotHideAnErrorInTheFile) {
  // `pipeline: 3` is wrong whatever --set adds to the pipeline section.
  InFolder here(kCaseDir);
  try {
    Pipeline::from_string("pipeline: 3\n" + std::string(kPipeline), "inline.yaml",
                          {"pipeline.threads=1"});
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("inline.yaml:1:11: error: 'pipeline' expects a mapping"),
              std::string::npos)
        << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a ConfigError: " << e.what();
  }
}

TEST(ConfigOverrides, MalformedAssignmentIsAConfigError) {
  for (const char* bad : {"batch.size", "size=4", "=4"}) {
    const auto errors = config_errors_of({bad});
    ASSERT_EQ(errors.size(), 1U) << bad;
    EXPECT_NE(errors[0].find("expected NAME.key=value"), std::string::npos) << errors[0];
  }
}

TEST(ConfigOverrides, DottedKeysReachIntoMappings) {
  // A path through a key that holds a scalar names it; nothing is silently replaced.
  EXPECT_EQ(config_errors_of({"batch.size.x=4"}),
            std::vector<std::string>{"--set batch.size.x=4: error: 'size' is a scalar, not a "
                                     "mapping, so it has no key 'x'"});
  // A path that creates a mapping is then validated like the file: here 'last' must be a word.
  const auto created = config_errors_of({"batch.last.mode=pad"});
  ASSERT_EQ(created.size(), 1U) << joined(created);
  EXPECT_NE(created[0].find("'last'"), std::string::npos) << created[0];
  for (const char* bad : {"batch..size=4", "batch.size.=4"}) {
    const auto errors = config_errors_of({bad});
    ASSERT_EQ(errors.size(), 1U) << bad;
    EXPECT_NE(errors[0].find("got an empty key"), std::string::npos) << errors[0];
  }
}

std::vector<std::string> validate_with(const std::string& file,
                                       const std::vector<std::string>& overrides) {
  InFolder here(kCaseDir);
  return diagnostic_lines(validate_file(file, overrides));
}

TEST(ConfigOverrides, StagesAreReachedByIndexOrNameUnderStages) {
  // infer_mean_mismatch.yaml's one error is normalize's mean (stage 3): each form that reaches
  // that key, the whole list or each element of it, repairs the case.
  ASSERT_EQ(validate_with("infer_mean_mismatch.yaml", {}).size(), 1U);
  for (const std::vector<std::string>& overrides :
       {std::vector<std::string>{"normalize.mean=[123.675,116.28,103.53]"},
        std::vector<std::string>{"stages.3.mean=[123.675,116.28,103.53]"},
        std::vector<std::string>{"stages.normalize.mean=[123.675,116.28,103.53]"},
        std::vector<std::string>{"stages.normalize.mean.0=123.675", "stages.3.mean.1=116.28",
                                 "normalize.mean.2=103.53"}}) {
    EXPECT_EQ(validate_with("infer_mean_mismatch.yaml", overrides), std::vector<std::string>{})
        << joined(overrides);
  }
  // Nested keys of a stage reached through `stages`, checked like the file.
  const std::vector<std::string> repaired = {"stages.3.mean=[123.675,116.28,103.53]"};
  auto with = [&](const std::string& extra) {
    std::vector<std::string> overrides = repaired;
    overrides.push_back(extra);
    return validate_with("infer_mean_mismatch.yaml", overrides);
  };
  EXPECT_EQ(with("stages.infer.winograd=false"), std::vector<std::string>{});
  EXPECT_EQ(with("stages.5.calibration.mode=entropy"), std::vector<std::string>{});
  EXPECT_EQ(with("stages.2.size=[32,32]"), std::vector<std::string>{});
  EXPECT_EQ(with("stages.infer.winograd=maybe"),
            std::vector<std::string>{"--set stages.infer.winograd=maybe: error: stage 'infer' "
                                     "(infer): 'winograd' expects true or false, got 'maybe'"});
  EXPECT_EQ(with("stages.infer.winogard=false"),
            std::vector<std::string>{
                "--set stages.infer.winogard=false: error: stage 'infer' (infer): unknown key "
                "'winogard' (did you mean 'winograd'?); known keys: type, name, concurrency, "
                "queue, model, max_model_bytes, precision, calibration, threads, parallel, "
                "winograd, channel_ranges, input, top_k, alone"});
  EXPECT_EQ(with("stages.infer.calibration.mdoe=entropy"),
            std::vector<std::string>{
                "--set stages.infer.calibration.mdoe=entropy: error: stage 'infer' (infer): "
                "'calibration': unknown key 'mdoe' (did you mean 'mode'?); known keys: batches, "
                "mode, table"});
}

TEST(ConfigOverrides, AWrongIndexOrNameListsWhatExists) {
  EXPECT_EQ(validate_with("infer_mean_mismatch.yaml", {"stages.6.size=4"}),
            std::vector<std::string>{
                "--set stages.6.size=4: error: 'stages' is a list of 6 with no element '6' "
                "(index 0..5, or a name: files, decode, augment, normalize, batch, infer)"});
  EXPECT_EQ(validate_with("infer_mean_mismatch.yaml", {"stages.normalise.mean=1"}),
            std::vector<std::string>{
                "--set stages.normalise.mean=1: error: 'stages' is a list of 6 with no element "
                "'normalise' (did you mean 'normalize'?) (index 0..5, or a name: files, decode, "
                "augment, normalize, batch, infer)"});
  EXPECT_EQ(validate_with("infer_mean_mismatch.yaml", {"normalize.mean.3=1"}),
            std::vector<std::string>{"--set normalize.mean.3=1: error: 'mean' is a list of 3 "
                                     "with no element '3' (index 0..2)"});
  EXPECT_EQ(
      validate_with("infer_mean_mismatch.yaml", {"stages.batch=4"}),
      std::vector<std::string>{"--set stages.batch=4: error: expected stages.INDEX.key=value or "
                               "stages.NAME.key=value"});
  // A list element of the wrong kind is reported by the stage, at the override.
  const auto wrong = validate_with("infer_mean_mismatch.yaml", {"normalize.mean.1=high"});
  ASSERT_EQ(wrong.size(), 1U) << joined(wrong);
  EXPECT_EQ(wrong[0].rfind("--set normalize.mean.1=high: error: stage 'normalize'", 0), 0U)
      << wrong[0];
}

TEST(ConfigOverrides, ValidOverridePassesValidation) {
  // Past validation, the source finds no images in this folder: not a ConfigError.
  InFolder here(kCaseDir);
  try {
    Pipeline::from_string(kPipeline, "inline.yaml", {"batch.size=4", "pipeline.threads=1"});
    ADD_FAILURE() << "a folder without images built a pipeline";
  } catch (const ConfigError& e) {
    ADD_FAILURE() << e.what();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no images found"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace millrace
