#include "cli/commands.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli/progress.hpp"
#include "datasets/make_dataset.hpp"
#include "engine/file_io.hpp"
#include "millrace/distributed.hpp"
#include "millrace/pipeline.hpp"
#include "millrace/report.hpp"
#include "stages/recordio/pack.hpp"
#include "stages/recordio/prepare.hpp"

namespace millrace::cli {

namespace {

constexpr int kOk = 0;
constexpr int kRunFailed = 1;
constexpr int kConfigError = 2;
// A run stopped by a signal exits as shells report a command killed by it: 128 + the signal's
// number (130 for SIGINT, 143 for SIGTERM), after its summary.
constexpr int kSignalled = 128;

const char* const kUsage = R"(usage: millrace <command> [options]

commands:
  run CONFIG [--set NAME.key=value]... [--json FILE] [--trace FILE] [--quiet]
      run a pipeline: live progress on stderr, then a summary (per stage: busy time, time
      waiting for input, blocked on output, queue occupancy); --trace writes a Chrome trace
      (Perfetto, chrome://tracing): a span per stage invocation, queue occupancy counters
  validate CONFIG [--set ...]
      check a config without running it; errors as file:line:col (exit 2)
  stages [--markdown]
      every stage type with its keys, types, defaults and docs
  graph CONFIG [--set ...]
      the lowered oneTBB flow graph as Graphviz DOT
  bench CONFIG [--set ...] [--repeats N] [--warmup N] [--json FILE] [--trace FILE]
      repeated runs: median images/s, batch latency percentiles and which stage limits
      throughput, with what to change; --trace: of the last run
  make-dataset DIR [--count N] [--seed S] [--classes K] [--size imagenet|large]
      write an ImageNet-like JPEG set with class folders and labels.lst
  pack (--list LIST [--root DIR] | --folder DIR) OUT.rec [--resize N] [--quality Q]
       [--restart auto|N]
      write an MXNet RecordIO OUT.rec and OUT.idx (as im2rec does); the original file bytes
      unless --resize (shorter side, INTER_AREA) or --quality (JPEG) re-encode them; --restart
      rewrites each JPEG losslessly with a restart marker every N MCUs (auto: per image), so
      that `decode.reduce: auto` decodes only each crop's window
  prepare SRC DST [--restart auto|N] [--threads N]
      copy a folder tree of images (layout and lists kept), each JPEG rewritten losslessly with
      a restart grid as by pack --restart; other files copied unchanged

NAME is `pipeline`, a stage name (a stage's name defaults to its type) or stages.INDEX; a key may
be a path: --set stages.infer.winograd=false, --set infer.calibration.mode=mse,
--set normalize.mean.0=124 (a list element by index, or by name when the elements are named).
exit codes: 0 success, 1 run failed, 2 config or usage error, 130 interrupted (SIGINT),
  143 terminated (SIGTERM)
)";

struct Args {
  std::vector<std::string> positional;
  std::vector<std::string> overrides;
  std::string json;
  std::string trace;
  bool quiet = false;
  bool markdown = false;
  int repeats = 3;
  int warmup = 1;
  int count = 2000;
  int classes = 10;
  long long seed = 0;
  std::string size = "imagenet";
  std::string list;
  std::string root;
  std::string folder;
  int resize = -1;   // -1: not given
  int quality = -1;  // -1: not given
  int restart = -1;  // -1: not given; 0: auto; N: MCUs per restart interval
  int threads = 0;   // 0: one per hardware thread
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

int to_int(const std::string& flag, const std::string& text) {
  try {
    std::size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used != text.size() || v < 0 || v > 1'000'000'000) throw std::out_of_range(text);
    return static_cast<int>(v);
  } catch (const std::logic_error&) {
    throw UsageError(flag + " expects a non-negative integer, got '" + text + "'");
  }
}

// A count that must be at least one: 0 is refused, not quietly taken as 1.
int to_positive_int(const std::string& flag, const std::string& text) {
  const int v = to_int(flag, text);
  if (v == 0) throw UsageError(flag + " expects a positive integer, got '" + text + "'");
  return v;
}

Args parse_args(int argc, char** argv, int first) {
  Args a;
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--set") {
      a.overrides.push_back(value());
    } else if (arg.rfind("--set=", 0) == 0) {
      a.overrides.push_back(arg.substr(6));
    } else if (arg == "--json") {
      a.json = value();
    } else if (arg == "--trace") {
      a.trace = value();
    } else if (arg == "--quiet" || arg == "-q") {
      a.quiet = true;
    } else if (arg == "--markdown") {
      a.markdown = true;
    } else if (arg == "--repeats") {
      a.repeats = to_positive_int(arg, value());
    } else if (arg == "--warmup") {
      a.warmup = to_int(arg, value());
    } else if (arg == "--count") {
      a.count = to_int(arg, value());
    } else if (arg == "--classes") {
      a.classes = to_positive_int(arg, value());
    } else if (arg == "--seed") {
      a.seed = to_int(arg, value());
    } else if (arg == "--size") {
      a.size = value();
    } else if (arg == "--list") {
      a.list = value();
    } else if (arg == "--root") {
      a.root = value();
    } else if (arg == "--folder") {
      a.folder = value();
    } else if (arg == "--resize") {
      a.resize = to_int(arg, value());
    } else if (arg == "--quality") {
      a.quality = to_int(arg, value());
    } else if (arg == "--restart") {
      const std::string v = value();
      a.restart = v == "auto" ? 0 : to_int(arg, v);
      if (a.restart == 0 && v != "auto") {
        throw UsageError("--restart expects auto or a number of MCUs, got '0'");
      }
    } else if (arg == "--threads") {
      a.threads = std::max(1, to_int(arg, value()));
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option '" + arg + "'");
    } else {
      a.positional.push_back(arg);
    }
  }
  return a;
}

// Through a temporary file renamed into place: a summary is whole or absent, never cut off by a
// full disk or a second signal.
void write_file(const std::string& path, const std::string& text) {
  write_file_atomically(path, text, "summary");
}

// An output named on the command line that cannot be written is an error before the run (exit
// 2), not a failure after it (a FIFO there would also block the write).
void check_output(const std::string& path, const char* what) {
  if (path.empty()) return;
  const std::string problem = output_file_problem(path);
  if (!problem.empty()) {
    throw ConfigError({{path, 0, 0, std::string("cannot write the ") + what + ": " + problem}});
  }
}

const std::string& config_arg(const Args& a, const char* command) {
  if (a.positional.size() != 1) {
    throw UsageError(std::string(command) + " takes one CONFIG file");
  }
  return a.positional.front();
}

void print_diagnostics(const std::vector<Diagnostic>& diagnostics) {
  for (const auto& d : diagnostics) std::cerr << d.to_string() << "\n";
}

// `--trace FILE` as the override it stands for; under MPI each rank writes FILE.rank<k>.
std::string trace_override(const std::string& path, const ProcessGroup& group) {
  std::string file = group.world > 1 ? path + ".rank" + std::to_string(group.rank) : path;
  for (std::size_t i = file.find('\''); i != std::string::npos; i = file.find('\'', i + 2)) {
    file.insert(i, "'");
  }
  return "pipeline.trace='" + file + "'";
}

int cmd_run(const Args& a) {
  check_output(a.json, "summary");
  check_output(a.trace, "trace file");
  ProgressReporter::catch_stop_signals();
  const ProcessGroup& group = process_group();
  const bool leader = group.rank == 0;
  std::vector<std::string> overrides = a.overrides;
  if (!a.trace.empty()) overrides.push_back(trace_override(a.trace, group));
  Pipeline p = Pipeline::from_file(config_arg(a, "run"), overrides);
  if (leader) print_diagnostics(p.warnings());
  std::string failure;
  {
    // Under MPI only rank 0 draws progress, so that the ranks' lines do not interleave.
    ProgressReporter progress(p, a.quiet || !leader);
    try {
      while (auto batch = p.next()) {
      }
    } catch (const RunError& e) {
      failure = e.what();
    }
  }
  RunStats stats = p.stats();
  if (stats.has_sink) {
    // This consumer only drains: what the run delivered is what its sinks wrote, which a run
    // stopped early can have done for a batch that never reached the drain.
    stats.images = stats.sink_images;
    stats.batches = stats.sink_batches;
  }
  if (group.world > 1) {
    const std::vector<RunStats> ranks = gather_run_stats(stats);
    if (leader) {
      std::cout << format_summary(
          p.name() + " (" + std::to_string(group.world) + " ranks; the stage table is rank 0's)",
          combine_run_stats(ranks));
      for (const auto& r : ranks) {
        std::printf("  rank %d: part %d/%d, %llu images, %.1f images/s%s%s\n", r.rank, r.part_index,
                    r.num_parts, static_cast<unsigned long long>(r.images), r.images_per_second,
                    r.error.empty() ? "" : ", failed: ", r.error.c_str());
      }
      if (!a.json.empty()) write_file(a.json, ranks_summary_json(p.name(), ranks));
    }
  } else {
    std::cout << format_summary(p.name(), stats);
    if (!a.json.empty()) write_file(a.json, summary_json(p.name(), stats));
  }
  if (!failure.empty()) {
    std::cerr << "millrace: run failed"
              << (group.world > 1 ? " on rank " + std::to_string(group.rank) : std::string())
              << ": " << failure << "\n";
    return kRunFailed;
  }
  const int signal = ProgressReporter::stop_signal();
  return signal != 0 ? kSignalled + signal : kOk;
}

int cmd_validate(const Args& a) {
  const std::string& path = config_arg(a, "validate");
  const auto diagnostics = validate_file(path, a.overrides);
  print_diagnostics(diagnostics);
  std::size_t errors = 0;
  for (const auto& d : diagnostics) errors += d.warning ? 0 : 1;
  if (errors > 0) {
    std::cerr << errors << " error(s) in " << path << "\n";
    return kConfigError;
  }
  std::cout << path << ": ok\n";
  return kOk;
}

int cmd_graph(const Args& a) {
  Pipeline p = Pipeline::from_file(config_arg(a, "graph"), a.overrides);
  std::cout << p.graph_dot();
  return kOk;
}

int cmd_bench(const Args& a) {
  const std::string& path = config_arg(a, "bench");
  check_output(a.json, "summary");
  check_output(a.trace, "trace file");
  BenchResult r = bench(path, a.overrides, a.repeats, a.warmup, a.trace);
  const std::string name = std::filesystem::path(path).stem().string();
  std::cout << format_summary(name, r.last);
  const auto& lat = r.batch_latency_ms;
  std::printf("bench %s: median %.1f images/s over %zu runs (", name.c_str(),
              r.median_images_per_second, r.images_per_second.size());
  for (std::size_t i = 0; i < r.images_per_second.size(); ++i) {
    std::printf("%s%.1f", i > 0 ? ", " : "", r.images_per_second[i]);
  }
  std::printf("); batch latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms\n", percentile(lat, 0.5),
              percentile(lat, 0.9), percentile(lat, 0.99));
  std::printf("bottleneck: %s\n", find_bottleneck(r.last).report.c_str());
  if (!a.json.empty()) write_file(a.json, bench_json(name, r));
  return r.last.error.empty() ? kOk : kRunFailed;
}

int cmd_make_dataset(const Args& a) {
  if (a.positional.size() != 1) throw UsageError("make-dataset takes one DIR");
  datasets::DatasetSpec spec;
  spec.dir = a.positional.front();
  spec.count = a.count;
  spec.classes = a.classes;
  spec.seed = static_cast<std::uint64_t>(a.seed);
  if (a.size == "imagenet") {
    spec.size = datasets::DatasetSpec::Size::kImageNet;
  } else if (a.size == "large") {
    spec.size = datasets::DatasetSpec::Size::kLarge;
  } else {
    throw UsageError("--size expects imagenet or large, got '" + a.size + "'");
  }
  const bool tty = isatty(STDERR_FILENO) == 1;
  datasets::DatasetReport report;
  try {
    report = datasets::make_dataset(spec, [&](int done, int total) {
      if (tty && (done % 20 == 0 || done == total)) {
        std::fprintf(stderr, "\r\033[Kmake-dataset: %d/%d images", done, total);
        if (done == total) std::fprintf(stderr, "\n");
      }
    });
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("make-dataset: ") + e.what());
  }
  std::printf("%s: %d images (%d from photos, %d procedural), %.1f MB, list %s\n", spec.dir.c_str(),
              report.images, report.from_photos, report.procedural,
              static_cast<double>(report.bytes) / 1e6, report.list_path.c_str());
  return kOk;
}

int cmd_pack(const Args& a) {
  if (a.positional.size() != 1) throw UsageError("pack takes one OUT.rec");
  if (a.list.empty() == a.folder.empty()) {
    throw UsageError("pack takes either --list LIST or --folder DIR");
  }
  if (!a.root.empty() && a.list.empty()) throw UsageError("--root goes with --list");
  if (a.resize == 0) throw UsageError("--resize expects a positive integer, got '0'");
  if (a.quality == 0 || a.quality > 100) {
    throw UsageError("--quality expects 1..100, got '" + std::to_string(a.quality) + "'");
  }
  recordio::PackOptions options;
  options.list = a.list;
  options.root = a.root;
  options.folder = a.folder;
  options.output = a.positional.front();
  options.resize = std::max(0, a.resize);
  options.quality = std::max(0, a.quality);
  options.restart = a.restart;
  const bool tty = isatty(STDERR_FILENO) == 1;
  recordio::PackReport report;
  try {
    report = recordio::pack(options, [&](std::size_t done, std::size_t total) {
      if (tty && (done % 20 == 0 || done == total)) {
        std::fprintf(stderr, "\r\033[Kpack: %zu/%zu images", done, total);
        if (done == total) std::fprintf(stderr, "\n");
      }
    });
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("pack: ") + e.what());
  }
  for (const auto& s : report.skipped) {
    std::fprintf(stderr, "pack: skipped %s\n", without_controls(s).c_str());
  }
  std::printf("%s: %llu records, %.1f MB of images, %.1f MB file, index %s\n",
              report.rec_path.c_str(), static_cast<unsigned long long>(report.records),
              static_cast<double>(report.image_bytes) / 1e6,
              static_cast<double>(report.file_bytes) / 1e6, report.idx_path.c_str());
  if (a.restart >= 0) {
    std::printf(
        "restart grid: %llu JPEGs rewritten, %llu JPEGs libjpeg could not read stored as "
        "they were, %llu other images stored as they were\n",
        static_cast<unsigned long long>(report.restart_rewritten),
        static_cast<unsigned long long>(report.restart_unreadable),
        static_cast<unsigned long long>(report.records - report.restart_rewritten -
                                        report.restart_unreadable));
  }
  return kOk;
}

int cmd_prepare(const Args& a) {
  if (a.positional.size() != 2) throw UsageError("prepare takes SRC and DST folders");
  recordio::PrepareOptions options;
  options.source = a.positional[0];
  options.destination = a.positional[1];
  options.interval = std::max(0, a.restart);
  options.threads = a.threads;
  const bool tty = isatty(STDERR_FILENO) == 1;
  recordio::PrepareReport report;
  try {
    report = recordio::prepare_tree(options, [&](std::size_t done, std::size_t total) {
      if (tty && (done % 20 == 0 || done == total)) {
        std::fprintf(stderr, "\r\033[Kprepare: %zu/%zu files", done, total);
        if (done == total) std::fprintf(stderr, "\n");
      }
    });
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("prepare: ") + e.what());
  }
  const double in = static_cast<double>(report.jpeg_bytes_in);
  const double out = static_cast<double>(report.jpeg_bytes_out);
  std::printf(
      "%s: %llu files: %llu JPEGs rewritten with a restart grid (%.1f MB -> %.1f MB, "
      "%+.1f %%), %llu other files copied, %llu unreadable JPEGs copied as they were\n",
      options.destination.c_str(), static_cast<unsigned long long>(report.files),
      static_cast<unsigned long long>(report.rewritten), in / 1e6, out / 1e6,
      in > 0 ? (out / in - 1) * 100 : 0.0, static_cast<unsigned long long>(report.copied),
      static_cast<unsigned long long>(report.unreadable));
  for (const std::string& p : report.problems) std::fprintf(stderr, "prepare: %s\n", p.c_str());
  return kOk;
}

}  // namespace

// Every command; main() wraps it so that MPI, when a launcher started us, is finalised on return.
int run_command(int argc, char** argv);

int main(int argc, char** argv) {
  const int code = run_command(argc, argv);
  shutdown_process_group();
  return code;
}

int run_command(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    std::cout << kUsage;
    return argc < 2 ? kConfigError : kOk;
  }
  const std::string command = argv[1];
  try {
    const Args args = parse_args(argc, argv, 2);
    if (command == "run") return cmd_run(args);
    if (command == "validate") return cmd_validate(args);
    if (command == "stages") {
      std::cout << stage_reference(args.markdown);
      return kOk;
    }
    if (command == "graph") return cmd_graph(args);
    if (command == "bench") return cmd_bench(args);
    if (command == "make-dataset") return cmd_make_dataset(args);
    if (command == "pack") return cmd_pack(args);
    if (command == "prepare") return cmd_prepare(args);
    throw UsageError("unknown command '" + command + "'");
  } catch (const UsageError& e) {
    std::cerr << "millrace: " << e.what() << "\n\n" << kUsage;
    return kConfigError;
  } catch (const ConfigError& e) {
    print_diagnostics(e.diagnostics());
    return kConfigError;
  } catch (const std::exception& e) {
    std::cerr << "millrace: " << e.what() << "\n";
    return kRunFailed;
  }
}

}  // namespace millrace::cli
