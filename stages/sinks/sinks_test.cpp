// Tests of the sinks: .npy files are read back by NumPy itself (a python3 with numpy must be
// installed), the batches.jsonl index by Python's json module.
#include "stages/sinks/sinks.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/config_node.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The first Python that has NumPy: $MILLRACE_PYTHON, then the system interpreter (where the
// distribution's numpy package installs), then whatever `python3` the PATH finds first.
const std::string& python_with_numpy() {
  static const std::string found = [] {
    std::vector<std::string> candidates;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): the test's own thread, before any pipeline runs
    if (const char* env = std::getenv("MILLRACE_PYTHON")) candidates.emplace_back(env);
    candidates.emplace_back("/usr/bin/python3");
    candidates.emplace_back("python3");
    for (const auto& c : candidates) {
      const std::string probe = "'" + c + "' -c 'import numpy' >/dev/null 2>&1";
      if (std::system(probe.c_str()) == 0) return c;  // NOLINT(concurrency-mt-unsafe)
    }
    return std::string();
  }();
  return found;
}

// Runs a Python script (given `dir` as sys.argv[1]) and returns its exit code; an assertion that
// fails in it prints its traceback into the test log.
int run_python(const TempDir& dir, const std::string& script) {
  if (python_with_numpy().empty()) {
    ADD_FAILURE() << "no python3 with numpy found (set MILLRACE_PYTHON)";
    return -1;
  }
  const fs::path file = dir.path() / "check.py";
  std::ofstream(file) << "import sys, json\nimport numpy as np\nd = sys.argv[1]\n" << script;
  const std::string command =
      "'" + python_with_numpy() + "' '" + file.string() + "' '" + dir.path().string() + "'";
  const int status = std::system(command.c_str());  // NOLINT(concurrency-mt-unsafe)
  if (status == -1 || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// What the .npy format 1.0 requires of the header, checked byte by byte.
void expect_npy_layout(const fs::path& path, std::size_t data_bytes) {
  const std::string file = read_file(path);
  ASSERT_GE(file.size(), 10U);
  EXPECT_EQ(file.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header_length =
      static_cast<unsigned char>(file[8]) |
      (static_cast<std::size_t>(static_cast<unsigned char>(file[9])) << 8);
  // The data starts on a 64-byte boundary and the header ends with a newline.
  EXPECT_EQ((10 + header_length) % 64, 0U);
  ASSERT_LE(10 + header_length, file.size());
  EXPECT_EQ(file[10 + header_length - 1], '\n');
  EXPECT_EQ(file.size(), 10 + header_length + data_bytes);
}

TEST(WriteNpy, Int8ReadBackByNumpy) {
  TempDir dir;
  std::vector<std::int8_t> values(std::size_t{2} * 3 * 4);
  for (std::size_t k = 0; k < values.size(); ++k) {
    values[k] = static_cast<std::int8_t>(static_cast<int>((k * 37) % 256) - 128);
  }
  const std::int64_t shape[] = {2, 3, 4};
  write_npy((dir.path() / "a.npy").string(), DType::kInt8, shape, 3, values.data(), values.size());
  expect_npy_layout(dir.path() / "a.npy", values.size());
  EXPECT_EQ(run_python(dir, R"(
a = np.load(d + '/a.npy')
assert a.dtype == np.int8, a.dtype
assert a.shape == (2, 3, 4), a.shape
e = ((np.arange(24) * 37) % 256 - 128).astype(np.int8).reshape(2, 3, 4)
assert (a == e).all(), a
)"),
            0);
}

TEST(WriteNpy, Uint8OneDimensional) {
  TempDir dir;
  std::vector<std::uint8_t> values = {0, 50, 100, 200, 255};
  const std::int64_t shape[] = {5};
  write_npy((dir.path() / "u.npy").string(), DType::kUInt8, shape, 1, values.data(), values.size());
  expect_npy_layout(dir.path() / "u.npy", values.size());
  EXPECT_EQ(run_python(dir, R"(
a = np.load(d + '/u.npy')
assert a.dtype == np.uint8, a.dtype
assert a.shape == (5,), a.shape
assert a.tolist() == [0, 50, 100, 200, 255], a
)"),
            0);
}

TEST(WriteNpy, Float32FourDimensional) {
  TempDir dir;
  std::vector<float> values(std::size_t{2} * 3 * 1 * 2);
  for (std::size_t k = 0; k < values.size(); ++k) values[k] = static_cast<float>(k) * 0.5F - 1.0F;
  values[3] = 1e-7F;
  values[4] = -65504.25F;
  const std::int64_t shape[] = {2, 3, 1, 2};
  write_npy((dir.path() / "f.npy").string(), DType::kFloat32, shape, 4, values.data(),
            values.size() * sizeof(float));
  expect_npy_layout(dir.path() / "f.npy", values.size() * sizeof(float));
  EXPECT_EQ(run_python(dir, R"(
a = np.load(d + '/f.npy')
assert a.dtype == np.float32, a.dtype
assert a.shape == (2, 3, 1, 2), a.shape
e = (np.arange(12, dtype=np.float32) * 0.5 - 1).astype(np.float32)
e[3] = np.float32(1e-7)
e[4] = np.float32(-65504.25)
assert (a.ravel() == e).all(), a
)"),
            0);
}

TEST(WriteNpy, EmptyArray) {
  TempDir dir;
  const std::int64_t shape[] = {0, 3};
  write_npy((dir.path() / "e.npy").string(), DType::kFloat32, shape, 2, nullptr, 0);
  expect_npy_layout(dir.path() / "e.npy", 0);
  EXPECT_EQ(run_python(dir, R"(
a = np.load(d + '/e.npy')
assert a.dtype == np.float32 and a.shape == (0, 3), (a.dtype, a.shape)
)"),
            0);
}

TEST(WriteNpy, UnwritablePathThrowsNamingIt) {
  const std::uint8_t byte = 1;
  const std::int64_t shape[] = {1};
  try {
    write_npy("/nonexistent/millrace/x.npy", DType::kUInt8, shape, 1, &byte, 1);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/millrace/x.npy"), std::string::npos)
        << e.what();
  }
}

// A batch as the batch stage leaves it in a recycled buffer: vectors may hold stale elements
// beyond `rows`, which must not reach the files.
BatchData int8_batch() {
  BatchData b;
  b.index = 0;
  b.epoch = 0;
  b.data.reshape(DType::kInt8, {3, 2, 2, 2}, "NCHW");
  for (std::size_t k = 0; k < b.data.storage.size(); ++k) {
    b.data.storage[k] =
        static_cast<std::uint8_t>(static_cast<std::int8_t>(static_cast<int>(k) - 12));
  }
  b.rows = 3;
  b.pad = 1;
  b.label_width = 1;
  b.labels = {0.0F, 1.0F, 0.0F, 99.0F, 99.0F};
  b.ids = {10, 11, 10, 99};
  b.paths = {"a/x.jpg", "b/\"quoted\" y.jpg", "a/x.jpg"};
  b.quantization.unit = {1.0F, 1.0F, 0.5F};
  b.quantization.zero_point = 0.0F;
  b.quantization.mxnet_compatible = true;
  return b;
}

BatchData uint8_batch() {
  BatchData b;
  b.index = 1;
  b.epoch = 1;
  b.data.reshape(DType::kUInt8, {2, 1, 2, 3}, "NHWC");
  for (std::size_t k = 0; k < b.data.storage.size(); ++k) {
    b.data.storage[k] = static_cast<std::uint8_t>(k * 20);
  }
  b.rows = 2;
  b.pad = 0;
  b.label_width = 2;
  b.labels = {0.5F, 1.5F, 2.5F, 3.5F};
  b.ids = {7, 8};
  b.paths = {"c\\back\tslash.jpg", "d/\xc3\xa9t\xc3\xa9.png"};
  return b;
}

StageContext npy_context() {
  StageContext context;
  context.name = "npy";
  context.type = "npy";
  return context;
}

TEST(NpySink, WritesDataLabelsAndAnIndexLinePerBatch) {
  TempDir dir;
  const fs::path out = dir.path() / "missing" / "nested" / "out";
  NpySink::Params params;
  params.dir = out.string();
  NpySink sink(npy_context(), params);
  sink.open();
  EXPECT_TRUE(fs::is_directory(out));
  sink.consume(int8_batch());
  sink.consume(uint8_batch());
  sink.finish();

  for (const char* name : {"batch_000000_data.npy", "batch_000000_label.npy",
                           "batch_000001_data.npy", "batch_000001_label.npy", "batches.jsonl"}) {
    EXPECT_TRUE(fs::is_regular_file(out / name)) << name;
  }
  expect_npy_layout(out / "batch_000000_data.npy", 24);
  expect_npy_layout(out / "batch_000000_label.npy", 3 * sizeof(float));
  expect_npy_layout(out / "batch_000001_label.npy", 4 * sizeof(float));

  EXPECT_EQ(run_python(dir, R"(
o = d + '/missing/nested/out/'
a = np.load(o + 'batch_000000_data.npy')
assert a.dtype == np.int8 and a.shape == (3, 2, 2, 2), (a.dtype, a.shape)
assert (a.ravel() == np.arange(24) - 12).all(), a
l = np.load(o + 'batch_000000_label.npy')
assert l.dtype == np.float32 and l.shape == (3,), (l.dtype, l.shape)
assert l.tolist() == [0.0, 1.0, 0.0], l
b = np.load(o + 'batch_000001_data.npy')
assert b.dtype == np.uint8 and b.shape == (2, 1, 2, 3), (b.dtype, b.shape)
assert (b.ravel() == np.arange(12) * 20).all(), b
m = np.load(o + 'batch_000001_label.npy')
assert m.dtype == np.float32 and m.shape == (2, 2), (m.dtype, m.shape)
assert m.tolist() == [[0.5, 1.5], [2.5, 3.5]], m

with open(o + 'batches.jsonl', encoding='utf-8') as f:
    text = f.read()
assert text.endswith('\n'), repr(text)
lines = text.splitlines()
assert len(lines) == 2, lines
first, second = json.loads(lines[0]), json.loads(lines[1])
assert first['index'] == 0 and first['epoch'] == 0, first
assert first['ids'] == [10, 11, 10], first
assert first['paths'] == ['a/x.jpg', 'b/"quoted" y.jpg', 'a/x.jpg'], first
assert first['pad'] == 1, first
assert first['layout'] == 'NCHW', first
assert first['dtype'] == 'int8', first
assert first['shape'] == [3, 2, 2, 2], first
q = first['quantization']
assert q['unit'] == [1.0, 1.0, 0.5] and q['zero_point'] == 0 and q['mxnet_compatible'] is True, q
assert second['index'] == 1 and second['epoch'] == 1, second
assert second['ids'] == [7, 8], second
assert second['paths'] == ['c\\back\tslash.jpg', 'd/\u00e9t\u00e9.png'], second
assert second['pad'] == 0 and second['layout'] == 'NHWC' and second['dtype'] == 'uint8', second
assert second['shape'] == [2, 1, 2, 3], second
assert 'quantization' not in second, second
)"),
            0);
}

TEST(NpySink, BatchIndexNamesTheFiles) {
  TempDir dir;
  NpySink::Params params;
  params.dir = dir.path().string();
  NpySink sink(npy_context(), params);
  sink.open();
  BatchData b = uint8_batch();
  b.index = 1234567;
  sink.consume(b);
  sink.finish();
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "batch_1234567_data.npy"));
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "batch_1234567_label.npy"));
  EXPECT_NE(read_file(dir.path() / "batches.jsonl").find("\"index\":1234567"), std::string::npos)
      << read_file(dir.path() / "batches.jsonl");
}

TEST(NpySink, ARerunReplacesTheIndex) {
  TempDir dir;
  NpySink::Params params;
  params.dir = dir.path().string();
  for (int run = 0; run < 2; ++run) {
    NpySink sink(npy_context(), params);
    sink.open();
    sink.consume(int8_batch());
    sink.finish();
  }
  const std::string index = read_file(dir.path() / "batches.jsonl");
  EXPECT_EQ(std::count(index.begin(), index.end(), '\n'), 1) << index;
}

TEST(NpySink, FolderThatCannotBeCreatedFailsInPrepare) {
  TempDir dir;
  std::ofstream(dir.path() / "file") << "x";
  NpySink::Params params;
  params.dir = (dir.path() / "file" / "sub").string();
  NpySink sink(npy_context(), params);
  try {
    sink.open();
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(params.dir), std::string::npos) << e.what();
  }
}

TEST(NpySink, ThroughTheRegistry) {
  const StageFactory* factory = Registry::builtin().find("npy");
  ASSERT_NE(factory, nullptr);
  EXPECT_EQ(factory->info().shape, StageShape::kSink);
  const std::vector<std::string> engine_keys{"type", "name", "concurrency", "queue"};
  TempDir dir;
  {
    Diagnostics d;
    ConfigNode node =
        load_config_document("type: npy\ndir: " + (dir.path() / "x").string() + "\n", "s.yaml", d);
    auto stage = factory->create(node, npy_context(), engine_keys, d);
    ASSERT_NE(stage, nullptr);
    auto* sink = dynamic_cast<SinkStage*>(stage.get());
    ASSERT_NE(sink, nullptr);
    sink->open();
    sink->consume(int8_batch());
    sink->finish();
    EXPECT_TRUE(fs::is_regular_file(dir.path() / "x" / "batch_000000_data.npy"));
  }
  {
    Diagnostics d;
    ConfigNode node = load_config_document("type: npy\n", "s.yaml", d);
    EXPECT_EQ(factory->create(node, npy_context(), engine_keys, d), nullptr);
    ASSERT_EQ(d.all().size(), 1U);
    EXPECT_EQ(d.all()[0].to_string(),
              "s.yaml:1:1: error: stage 'npy' (npy): missing required key 'dir'");
  }
}

// The files of an npy folder, sorted by name.
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Files larger than `bytes` cannot be written while it lives: a write past the limit fails with
// EFBIG, as one past the end of a full disk fails with ENOSPC, and works for root, whom permission
// bits do not stop. SIGXFSZ (whose default action kills the process) is ignored meanwhile.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*handler_)(int) = SIG_DFL;
};

std::string consume_error(NpySink& sink, const BatchData& batch) {
  try {
    sink.consume(batch);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(NpySink, TemporaryNameIsHiddenBesideTheFile) {
  EXPECT_EQ(npy_temp_path("/a/b/batch_000001_data.npy"), "/a/b/.batch_000001_data.npy.tmp");
  EXPECT_EQ(npy_temp_path("x.npy"), ".x.npy.tmp");
}

TEST(NpySink, AFailedDataWriteLeavesNeitherPartialFilesNorALine) {
  TempDir dir;
  NpySink::Params params;
  params.dir = dir.str();
  NpySink sink(npy_context(), params);
  sink.open();
  sink.consume(int8_batch());
  BatchData big = uint8_batch();
  big.data.reshape(DType::kUInt8, {2, 3, 32, 32}, "NCHW");  // 6144 bytes: past the limit
  std::string error;
  {
    FileSizeLimit limit(4096);
    error = consume_error(sink, big);
  }
  sink.finish();
  const std::string path = dir.file("batch_000001_data.npy");
  EXPECT_NE(error.find(path + ": cannot write: "), std::string::npos) << error;
  EXPECT_NE(error.find(std::strerror(EFBIG)), std::string::npos)  // NOLINT(concurrency-mt-unsafe)
      << error;
  EXPECT_EQ(listing(dir.path()),
            (std::vector<std::string>{"batch_000000_data.npy", "batch_000000_label.npy",
                                      "batches.jsonl"}));
  EXPECT_EQ(run_python(dir, R"(
lines = open(d + '/batches.jsonl').read().splitlines()
assert [json.loads(l)['index'] for l in lines] == [0], lines
assert np.load(d + '/batch_000000_data.npy').shape == (3, 2, 2, 2)
)"),
            0);
}

TEST(NpySink, AFailedLabelWriteRemovesTheBatchsDataFile) {
  TempDir dir;
  NpySink::Params params;
  params.dir = dir.str();
  NpySink sink(npy_context(), params);
  sink.open();
  BatchData wide = uint8_batch();
  wide.index = 0;
  wide.label_width = 600;  // 2 x 600 floats = 4800 bytes: the data file fits, the labels do not
  wide.labels.assign(1200, 0.5F);
  std::string error;
  {
    FileSizeLimit limit(4096);
    error = consume_error(sink, wide);
  }
  sink.finish();
  EXPECT_NE(error.find(dir.file("batch_000000_label.npy") + ": cannot write: "), std::string::npos)
      << error;
  EXPECT_EQ(listing(dir.path()), std::vector<std::string>{"batches.jsonl"});
  EXPECT_EQ(fs::file_size(dir.path() / "batches.jsonl"), 0U);
}

TEST(NpySink, AnIndexLineCutShortIsCutBackAndItsBatchRemoved) {
  TempDir dir;
  NpySink::Params params;
  params.dir = dir.str();
  NpySink sink(npy_context(), params);
  sink.open();
  sink.consume(int8_batch());
  const auto first_line = fs::file_size(dir.path() / "batches.jsonl");
  ASSERT_GT(first_line, 0U);
  std::string error;
  {
    // Room for 20 bytes of the second line; its .npy files (under 200 bytes each) fit.
    FileSizeLimit limit(first_line + 20);
    error = consume_error(sink, uint8_batch());
  }
  EXPECT_NE(error.find(dir.file("batches.jsonl") + ": cannot write: "), std::string::npos) << error;
  EXPECT_EQ(fs::file_size(dir.path() / "batches.jsonl"), first_line);
  EXPECT_EQ(listing(dir.path()),
            (std::vector<std::string>{"batch_000000_data.npy", "batch_000000_label.npy",
                                      "batches.jsonl"}));
  // A later line starts where the whole ones end, not after the cut-off bytes.
  BatchData later = uint8_batch();
  later.index = 2;
  EXPECT_EQ(consume_error(sink, later), "");
  sink.finish();
  EXPECT_EQ(run_python(dir, R"(
lines = open(d + '/batches.jsonl').read().splitlines()
assert [json.loads(l)['index'] for l in lines] == [0, 2], lines
)"),
            0);
}

TEST(NpySink, AFolderRemovedMidRunFailsTheNextBatchNamingIt) {
  TempDir dir;
  const fs::path out = dir.path() / "out";
  NpySink::Params params;
  params.dir = out.string();
  NpySink sink(npy_context(), params);
  sink.open();
  sink.consume(int8_batch());
  fs::remove_all(out);
  const std::string error = consume_error(sink, uint8_batch());
  EXPECT_NE(error.find((out / "batch_000001_data.npy").string() + ": cannot create: " +
                       std::strerror(ENOENT)),  // NOLINT(concurrency-mt-unsafe)
            std::string::npos)
      << error;
  sink.finish();
  EXPECT_FALSE(fs::exists(out));
}

TEST(NpySink, OpeningRemovesTemporaryFilesAKilledRunLeft) {
  TempDir dir;
  dir.write(".batch_000003_data.npy.tmp", "partial");
  dir.write(".hidden_of_the_user.tmp", "kept");
  dir.write("notes.txt", "kept");
  NpySink::Params params;
  params.dir = dir.str();
  NpySink sink(npy_context(), params);
  sink.open();
  sink.finish();
  EXPECT_EQ(listing(dir.path()),
            (std::vector<std::string>{".hidden_of_the_user.tmp", "batches.jsonl", "notes.txt"}));
}

TEST(NpySink, EveryFsyncModeWritesTheSameFiles) {
  std::vector<std::string> contents;
  for (const auto mode : {NpySink::Sync::kEnd, NpySink::Sync::kBatch, NpySink::Sync::kNone}) {
    TempDir dir;
    NpySink::Params params;
    params.dir = dir.str();
    params.fsync = mode;
    NpySink sink(npy_context(), params);
    sink.open();
    sink.consume(int8_batch());
    sink.consume(uint8_batch());
    sink.finish();
    std::string all;
    for (const auto& name : listing(dir.path())) all += name + ":" + read_file(dir / name) + "\n";
    contents.push_back(all);
  }
  EXPECT_EQ(contents[0], contents[1]);
  EXPECT_EQ(contents[0], contents[2]);
  EXPECT_NE(contents[0].find("batch_000001_label.npy"), std::string::npos);
}

TEST(PredictionsSink, ABatchsLinesAreAppendedWholeOrNotAtAll) {
  TempDir dir;
  StageContext context;
  context.name = "predictions";
  context.type = "predictions";
  PredictionsSink::Params params;
  params.path = dir.file("p.jsonl");
  params.top_k = 2;
  PredictionsSink sink(context, params);
  sink.open();
  BatchData b = uint8_batch();
  b.output_width = 3;
  b.outputs = {0.0F, 2.0F, 1.0F, 5.0F, 4.0F, 3.0F};
  sink.consume(b);
  const auto whole = fs::file_size(params.path);
  std::string error;
  {
    FileSizeLimit limit(whole + 30);  // room for part of the next batch's first line only
    try {
      sink.consume(b);
    } catch (const std::runtime_error& e) {
      error = e.what();
    }
  }
  sink.finish();
  EXPECT_NE(error.find(params.path + ": cannot write: "), std::string::npos) << error;
  EXPECT_EQ(fs::file_size(params.path), whole);
  EXPECT_EQ(run_python(dir, R"(
lines = open(d + '/p.jsonl').read().splitlines()
assert len(lines) == 2, lines
first, second = (json.loads(l) for l in lines)
assert first['id'] == 7 and [c for c, _ in first['top_k']] == [1, 2], first
assert second['id'] == 8 and [c for c, _ in second['top_k']] == [0, 1], second
)"),
            0);
}

TEST(DiscardSink, CountsBatches) {
  StageContext context;
  context.name = "discard";
  context.type = "discard";
  DiscardSink sink(context, {});
  EXPECT_EQ(sink.batches(), 0U);
  sink.consume(int8_batch());
  sink.consume(uint8_batch());
  EXPECT_EQ(sink.batches(), 2U);
  EXPECT_TRUE(Registry::builtin().find("discard")->schema().docs().empty());
}

}  // namespace
}  // namespace millrace
