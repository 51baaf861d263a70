// Builds a pipeline through the installed millrace package and checks what comes out of it.
//
//   millrace_consumer DATASET_DIR
//
// DATASET_DIR holds class folders of JPEGs (as `millrace make-dataset` writes them). The expected
// output is derived from the folder itself, independently of the library: one sample per image
// file, labels = index of the sorted class folder, batches of 4 with the last one padded.
// Exit status 0 when every check passes, 1 when one fails (each failure is printed), 2 on usage
// or configuration errors.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "millrace/millrace.hpp"

namespace {

constexpr int kBatch = 4;
constexpr int kSide = 32;

struct Expected {
  int images = 0;
  int classes = 0;
};

Expected scan(const std::filesystem::path& root) {
  Expected e;
  std::vector<std::filesystem::path> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    if (entry.is_directory()) dirs.push_back(entry.path());
  }
  e.classes = static_cast<int>(dirs.size());
  for (const auto& dir : dirs) {
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      if (entry.is_regular_file() && entry.path().extension() == ".jpg") ++e.images;
    }
  }
  return e;
}

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DATASET_DIR\n", argv[0]);
    return 2;
  }
  const Expected expected = scan(argv[1]);
  if (expected.images == 0) {
    std::fprintf(stderr, "no .jpg files under %s\n", argv[1]);
    return 2;
  }
  const int expected_batches = (expected.images + kBatch - 1) / kBatch;
  const int expected_pad = expected_batches * kBatch - expected.images;
  const std::size_t sample_values = std::size_t{3} * kSide * kSide;

  try {
    millrace::Pipeline pipeline =
        millrace::PipelineBuilder("consumer")
            .set("threads", "2")
            .stage("files", {{"root", argv[1]}})
            .stage("decode")
            .stage("augment", {{"resize", "40"}, {"size", std::to_string(kSide)}})
            .stage("normalize", {{"dtype", "int8"}, {"mean", "[123.68, 116.779, 103.939]"}})
            .stage("batch", {{"size", std::to_string(kBatch)}})
            .build();

    int batches = 0;
    int pad_rows = 0;
    std::set<std::uint64_t> ids;
    while (auto batch = pipeline.next()) {
      const std::string where = "batch " + std::to_string(batches) + ": ";
      const auto shape = batch->shape();
      const std::vector<std::int64_t> want_shape{kBatch, 3, kSide, kSide};
      check(std::equal(shape.begin(), shape.end(), want_shape.begin(), want_shape.end()),
            where + "shape is not 4x3x32x32");
      check(batch->index() == static_cast<std::uint64_t>(batches), where + "index out of order");
      check(batch->dtype() == millrace::DType::kInt8, where + "dtype is not int8");
      check(batch->layout() == "NCHW", where + "layout is " + std::string(batch->layout()));
      check(batch->size() == kBatch, where + "size is " + std::to_string(batch->size()));
      check(batch->bytes() == kBatch * sample_values, where + "wrong byte count");
      check(batch->values<std::int8_t>().size() == kBatch * sample_values,
            where + "wrong value count");
      check(batch->label_width() == 1, where + "label width is not 1");
      check(batch->labels().size() == kBatch, where + "wrong label count");
      check(batch->ids().size() == kBatch, where + "wrong id count");
      check(batch->paths().size() == kBatch, where + "wrong path count");
      for (float label : batch->labels()) {
        check(label >= 0 && label < static_cast<float>(expected.classes) &&
                  label == static_cast<float>(static_cast<int>(label)),
              where + "label " + std::to_string(label) + " is not a class index");
      }
      // MXNet-compatible int8: mean subtracted, one integer unit per pixel level, zero point 0.
      const millrace::Quantization& q = batch->quantization();
      check(q.mxnet_compatible && q.zero_point == 0.0F && q.unit.size() == 3 &&
                std::all_of(q.unit.begin(), q.unit.end(), [](float u) { return u == 1.0F; }),
            where + "quantization is not MXNet-compatible int8");
      const int real_rows = kBatch - batch->pad();
      for (int r = 0; r < real_rows; ++r) ids.insert(batch->ids()[static_cast<std::size_t>(r)]);
      pad_rows += batch->pad();
      ++batches;
    }

    const millrace::RunStats stats = pipeline.stats();
    check(batches == expected_batches, "got " + std::to_string(batches) + " batches, expected " +
                                           std::to_string(expected_batches));
    check(pad_rows == expected_pad, "got " + std::to_string(pad_rows) + " pad rows, expected " +
                                        std::to_string(expected_pad));
    check(static_cast<int>(ids.size()) == expected.images, "got " + std::to_string(ids.size()) +
                                                               " distinct samples, expected " +
                                                               std::to_string(expected.images));
    check(stats.finished && !stats.cancelled && stats.error.empty(), "run did not finish cleanly");
    check(stats.images == static_cast<std::uint64_t>(expected.images),
          "stats count " + std::to_string(stats.images) + " images");
    check(stats.batches == static_cast<std::uint64_t>(expected_batches),
          "stats count " + std::to_string(stats.batches) + " batches");
    check(stats.skipped.empty(), "samples were skipped");

    std::printf("%d images in %d classes -> %d batches of %dx3x%dx%d int8 (%d pad rows): %s\n",
                expected.images, expected.classes, batches, kBatch, kSide, kSide, pad_rows,
                failures == 0 ? "ok" : "FAILED");
  } catch (const millrace::ConfigError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
