// RecordIO throughput: framing records in memory, writing a .rec, and reading it back
// sequentially (the buffered reader) and by index (one pread per record, as the source's load()
// does). Items are records; bytes are payload bytes.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "stages/recordio/recordio_kernel.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace::recordio {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kRecords = 512;
constexpr std::size_t kPayload = std::size_t{110} * 1024;  // a typical ImageNet JPEG

std::vector<std::uint8_t> payload(std::size_t i) {
  std::vector<std::uint8_t> p(kPayload + i % 97);
  std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761U + 7U;
  for (auto& b : p) {
    x = x * 1664525U + 1013904223U;
    b = static_cast<std::uint8_t>(x >> 24U);
  }
  return p;
}

// A .rec of kRecords records in the temp folder, written once per process.
struct Corpus {
  millrace::testing::TempDir dir{"millrace_recordio_bench"};
  std::string path = dir.file("bench.rec");
  std::vector<IndexEntry> index;
  std::uint64_t payload_bytes = 0;
  Corpus() {
    RecordWriter writer(path);
    std::vector<std::pair<std::uint64_t, std::uint64_t>> keys;
    for (std::size_t i = 0; i < kRecords; ++i) {
      const auto p = payload(i);
      payload_bytes += p.size();
      keys.emplace_back(i, writer.write(p));
    }
    writer.close();
    write_index(dir.file("bench.idx"), keys);
    index = read_index(dir.file("bench.idx"), fs::file_size(path));
  }
};

const Corpus& corpus() {
  static const Corpus c;
  return c;
}

void BM_FrameRecord(benchmark::State& state) {
  const auto p = payload(1);
  std::vector<std::uint8_t> out;
  for (auto _ : state) {
    out.clear();
    frame_record(p, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * p.size()));
}
BENCHMARK(BM_FrameRecord);

void BM_ReadSequential(benchmark::State& state) {
  const Corpus& c = corpus();
  std::vector<std::uint8_t> buffer;
  for (auto _ : state) {
    RecordReader reader(c.path);
    std::size_t n = 0;
    while (reader.next(buffer).status == ReadStatus::kRecord) ++n;
    if (n != kRecords) state.SkipWithError("wrong record count");
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRecords));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * c.payload_bytes));
}
BENCHMARK(BM_ReadSequential)->Unit(benchmark::kMillisecond);

void BM_ReadByIndex(benchmark::State& state) {
  const Corpus& c = corpus();
  const int fd = ::open(c.path.c_str(), O_RDONLY | O_CLOEXEC);
  std::vector<std::uint8_t> buffer;
  for (auto _ : state) {
    for (const auto& e : c.index) {
      buffer.resize(e.size);
      if (::pread(fd, buffer.data(), e.size, static_cast<off_t>(e.offset)) !=
          static_cast<ssize_t>(e.size)) {
        state.SkipWithError("short read");
        break;
      }
      unframe_in_place(buffer, e.offset);
      benchmark::DoNotOptimize(buffer.data());
    }
  }
  ::close(fd);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRecords));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * c.payload_bytes));
}
BENCHMARK(BM_ReadByIndex)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace millrace::recordio
