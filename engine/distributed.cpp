#include "millrace/distributed.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "engine/json.hpp"

#ifdef MILLRACE_WITH_MPI
#include <mpi.h>
#endif

namespace millrace {

namespace {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;  // NOLINT(concurrency-mt-unsafe): main thread
  }
  return false;
}

ProcessGroup& group() {
  static ProcessGroup g;
  return g;
}

// A launcher's RANK / WORLD_SIZE (torchrun, torch.distributed's env:// rendezvous), when both are
// set and consistent; otherwise nothing.
bool rank_from_environment(ProcessGroup& g) {
  const char* rank = std::getenv("RANK");         // NOLINT(concurrency-mt-unsafe): main thread
  const char* world = std::getenv("WORLD_SIZE");  // NOLINT(concurrency-mt-unsafe)
  if (rank == nullptr || world == nullptr) return false;
  int r = -1;
  int w = 0;
  const auto parse = [](const char* text, int& out) {
    const char* end = text + std::strlen(text);
    const auto [p, ec] = std::from_chars(text, end, out);
    return ec == std::errc() && p == end && p != text;
  };
  if (!parse(rank, r) || !parse(world, w) || w < 1 || r < 0 || r >= w) {
    throw std::runtime_error(std::string("millrace: RANK '") + rank + "' and WORLD_SIZE '" + world +
                             "' do not name a process of a run (0 <= RANK < WORLD_SIZE)");
  }
  g.rank = r;
  g.world = w;
  return true;
}

// The numbers of one rank's statistics, in a fixed order, for MPI_Gather.
constexpr int kFields = 10;
void pack(const RunStats& s, double* out) {
  out[0] = static_cast<double>(s.images);
  out[1] = static_cast<double>(s.batches);
  out[2] = static_cast<double>(s.samples_read);
  out[3] = s.seconds;
  out[4] = s.startup_seconds;
  out[5] = s.images_per_second;
  out[6] = s.part_index;
  out[7] = s.num_parts;
  out[8] = s.cancelled ? 1 : 0;
  out[9] = s.threads;
}
void unpack(const double* in, RunStats& s) {
  s.images = static_cast<std::uint64_t>(in[0]);
  s.batches = static_cast<std::uint64_t>(in[1]);
  s.samples_read = static_cast<std::uint64_t>(in[2]);
  s.seconds = in[3];
  s.startup_seconds = in[4];
  s.images_per_second = in[5];
  s.part_index = static_cast<int>(in[6]);
  s.num_parts = static_cast<int>(in[7]);
  s.cancelled = in[8] != 0;
  s.threads = static_cast<int>(in[9]);
}

// Skipped samples and the error travel as text: one `path\tid\tstage\terror` line each, and a
// first line with the run's error.
std::string pack_text(const RunStats& s) {
  std::string out = s.error;
  std::replace(out.begin(), out.end(), '\n', ' ');
  out += '\n';
  for (const auto& k : s.skipped) {
    out += k.path + '\t' + std::to_string(k.id) + '\t' + k.stage + '\t' + k.error + '\n';
  }
  return out;
}
void unpack_text(const std::string& text, RunStats& s) {
  std::size_t start = 0;
  bool first = true;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (first) {
      s.error = line;
      first = false;
      continue;
    }
    SkippedSample k;
    std::size_t a = line.find('\t');
    std::size_t b = line.find('\t', a + 1);
    std::size_t c = line.find('\t', b + 1);
    if (a == std::string::npos || b == std::string::npos || c == std::string::npos) continue;
    k.path = line.substr(0, a);
    k.id = std::stoull(line.substr(a + 1, b - a - 1));
    k.stage = line.substr(b + 1, c - b - 1);
    k.error = line.substr(c + 1);
    s.skipped.push_back(std::move(k));
  }
}

}  // namespace

const ProcessGroup& process_group() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef MILLRACE_WITH_MPI
    if (!launched_by_mpi()) {
      rank_from_environment(group());
      return;
    }
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized == 0) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      std::atexit(shutdown_process_group);
    }
    ProcessGroup& g = group();
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.world);
    g.mpi = true;
#else
    (void)launched_by_mpi;
    rank_from_environment(group());
#endif
  });
  return group();
}

void set_process_group(int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw std::invalid_argument("millrace: rank " + std::to_string(rank) + " of world size " +
                                std::to_string(world) + " is not a process of a run");
  }
  process_group();
  ProcessGroup& g = group();
  if (g.mpi) return;  // MPI's own numbering stands
  g.rank = rank;
  g.world = world;
}

void shutdown_process_group() {
#ifdef MILLRACE_WITH_MPI
  if (!group().mpi) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized == 0) MPI_Finalize();
#endif
}

std::vector<RunStats> gather_run_stats(const RunStats& mine) {
  const ProcessGroup& g = process_group();
  if (!g.mpi || g.world == 1) return {mine};
#ifdef MILLRACE_WITH_MPI
  std::vector<double> numbers(static_cast<std::size_t>(kFields) *
                              static_cast<std::size_t>(g.world));
  double local[kFields];
  pack(mine, local);
  MPI_Gather(local, kFields, MPI_DOUBLE, numbers.data(), kFields, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  const std::string text = pack_text(mine);
  int length = static_cast<int>(text.size());
  std::vector<int> lengths(static_cast<std::size_t>(g.world));
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::vector<int> offsets(static_cast<std::size_t>(g.world), 0);
  int total = 0;
  for (int r = 0; r < g.world; ++r) {
    offsets[static_cast<std::size_t>(r)] = total;
    total += lengths[static_cast<std::size_t>(r)];
  }
  std::string all(static_cast<std::size_t>(g.rank == 0 ? total : 0), '\0');
  MPI_Gatherv(text.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
              0, MPI_COMM_WORLD);
  if (g.rank != 0) return {};
  std::vector<RunStats> out(static_cast<std::size_t>(g.world));
  for (int r = 0; r < g.world; ++r) {
    RunStats& s = out[static_cast<std::size_t>(r)];
    if (r == 0) s = mine;  // rank 0 keeps its full statistics (per-stage figures included)
    unpack(numbers.data() + static_cast<std::size_t>(r) * kFields, s);
    s.rank = r;
    s.skipped.clear();
    unpack_text(all.substr(static_cast<std::size_t>(offsets[static_cast<std::size_t>(r)]),
                           static_cast<std::size_t>(lengths[static_cast<std::size_t>(r)])),
                s);
    s.finished = true;
  }
  return out;
#else
  return {mine};
#endif
}

RunStats combine_run_stats(const std::vector<RunStats>& ranks) {
  RunStats total;
  if (ranks.empty()) return total;
  total = ranks.front();
  total.skipped.clear();
  total.images = total.batches = total.samples_read = 0;
  total.images_per_second = 0;
  total.seconds = total.startup_seconds = 0;
  total.expected_samples.reset();
  for (const auto& r : ranks) {
    total.images += r.images;
    total.batches += r.batches;
    total.samples_read += r.samples_read;
    total.images_per_second += r.images_per_second;
    total.seconds = std::max(total.seconds, r.seconds);
    total.startup_seconds = std::max(total.startup_seconds, r.startup_seconds);
    total.cancelled = total.cancelled || r.cancelled;
    if (total.error.empty() && !r.error.empty()) {
      total.error = "rank " + std::to_string(r.rank) + ": " + r.error;
    }
    for (const auto& k : r.skipped) {
      SkippedSample s = k;
      s.path = "rank" + std::to_string(r.rank) + ": " + k.path;
      total.skipped.push_back(std::move(s));
    }
  }
  return total;
}

std::string ranks_summary_json(const std::string& name, const std::vector<RunStats>& ranks) {
  const RunStats t = combine_run_stats(ranks);
  JsonWriter j;
  j.begin_object().key("name").value(name);
  j.key("ranks_count").value(static_cast<std::uint64_t>(ranks.size()));
  j.key("images").value(t.images).key("batches").value(t.batches);
  j.key("samples_read").value(t.samples_read);
  j.key("seconds").value(t.seconds).key("startup_seconds").value(t.startup_seconds);
  j.key("images_per_second").value(t.images_per_second);
  j.key("cancelled").value(t.cancelled).key("error").value(t.error);
  j.key("skipped").begin_array();
  for (const auto& k : t.skipped) {
    j.begin_object().key("path").value(k.path).key("id").value(k.id).key("stage").value(k.stage);
    j.key("error").value(k.error).end_object();
  }
  j.end_array();
  j.key("stages").begin_array();  // rank 0's per-stage figures
  for (const auto& st : t.stages) {
    j.begin_object().key("name").value(st.name).key("type").value(st.type);
    j.key("items").value(st.items).key("busy_seconds").value(st.busy_seconds);
    j.key("busy_share").value(st.busy_share).key("queue_peak").value(st.queue_peak);
    j.key("queue_capacity").value(st.queue_capacity).end_object();
  }
  j.end_array();
  j.key("ranks").begin_array();
  for (const auto& r : ranks) {
    j.begin_object().key("rank").value(r.rank).key("part_index").value(r.part_index);
    j.key("num_parts").value(r.num_parts).key("images").value(r.images);
    j.key("batches").value(r.batches).key("samples_read").value(r.samples_read);
    j.key("seconds").value(r.seconds).key("startup_seconds").value(r.startup_seconds);
    j.key("images_per_second").value(r.images_per_second);
    j.key("skipped").value(static_cast<std::uint64_t>(r.skipped.size()));
    j.key("error").value(r.error).end_object();
  }
  j.end_array().end_object();
  return j.str() + "\n";
}

}  // namespace millrace
