// Embedding millrace: build a pipeline in code, pull int8 batches on this thread, read the stats.
//
//   millrace_example DATASET_ROOT [BATCHES]
//
// Prints each batch's shape, quantization and a checksum, then the run summary.
#include <cstdint>
#include <cstdio>
#include <string>

#include "millrace/millrace.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DATASET_ROOT [BATCHES]\n", argv[0]);
    return 2;
  }
  const int max_batches = argc > 2 ? std::stoi(argv[2]) : 4;
  try {
    millrace::Pipeline pipeline = millrace::PipelineBuilder("embedded")
                                      .set("threads", "2")
                                      .stage("files", {{"root", argv[1]}, {"limit", "64"}})
                                      .stage("decode")
                                      .stage("augment", {{"resize", "256"}, {"size", "[224, 224]"}})
                                      .stage("normalize", {{"mean", "[123.68, 116.779, 103.939]"}})
                                      .stage("batch", {{"size", "16"}, {"last", "pad"}})
                                      .build();
    int seen = 0;
    // The pull API: batches arrive in source order; each is a view on a pooled buffer that goes
    // back to the pipeline when `batch` goes out of scope.
    while (auto batch = pipeline.next()) {
      std::uint64_t checksum = 0;
      for (std::int8_t v : batch->values<std::int8_t>())
        checksum = checksum * 31 + static_cast<std::uint8_t>(v);
      const auto shape = batch->shape();
      std::printf(
          "batch %llu: %s %lldx%lldx%lldx%lld %s, pad %d, first id %llu, unit %.1f, checksum "
          "%016llx\n",
          static_cast<unsigned long long>(batch->index()),
          std::string(millrace::dtype_name(batch->dtype())).c_str(),
          static_cast<long long>(shape[0]), static_cast<long long>(shape[1]),
          static_cast<long long>(shape[2]), static_cast<long long>(shape[3]),
          std::string(batch->layout()).c_str(), batch->pad(),
          static_cast<unsigned long long>(batch->ids()[0]),
          static_cast<double>(batch->quantization().unit.at(0)),
          static_cast<unsigned long long>(checksum));
      if (++seen == max_batches) {
        pipeline.cancel();  // stopping early is allowed: the rest is dropped promptly
        break;
      }
    }
    const millrace::RunStats stats = pipeline.stats();
    std::printf("%s", millrace::format_summary(pipeline.name(), stats).c_str());
    return 0;
  } catch (const millrace::ConfigError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
