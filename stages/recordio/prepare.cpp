#include "stages/recordio/prepare.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "stages/common/jpeg/jpeg_restart.hpp"

namespace millrace::recordio {

namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::error_code(errno, std::generic_category()).message(); }

void read_whole(const fs::path& path, std::vector<std::uint8_t>& out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error(path.string() + ": cannot open: " + errno_text());
  out.clear();
  std::uint8_t chunk[1 << 16];
  while (true) {
    const std::size_t got = std::fread(chunk, 1, sizeof chunk, f);
    out.insert(out.end(), chunk, chunk + got);
    if (got < sizeof chunk) break;
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw std::runtime_error(path.string() + ": cannot read");
}

// Writes under a temporary name beside `path`, then renames: a reader never sees half a file.
void write_whole(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  fs::path temporary = path;
  temporary += ".millrace-partial";
  std::FILE* f = std::fopen(temporary.c_str(), "wb");
  if (f == nullptr) throw std::runtime_error(path.string() + ": cannot create: " + errno_text());
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const int saved_errno = errno;
  if (std::fclose(f) != 0 || !written) {
    errno = written ? errno : saved_errno;
    const std::string why = errno_text();
    std::error_code ec;
    fs::remove(temporary, ec);
    throw std::runtime_error(path.string() + ": cannot write: " + why);
  }
  std::error_code ec;
  fs::rename(temporary, path, ec);
  if (ec) {
    fs::remove(temporary, ec);
    throw std::runtime_error(path.string() + ": cannot rename into place: " + ec.message());
  }
}

bool inside(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

}  // namespace

PrepareReport prepare_tree(const PrepareOptions& o, const PrepareProgress& progress) {
  std::error_code ec;
  if (!fs::is_directory(o.source, ec)) {
    throw std::invalid_argument(o.source + ": not a folder");
  }
  if (o.destination.empty()) throw std::invalid_argument("prepare needs a destination folder");
  if (o.interval < 0 || o.interval > 65535) {
    throw std::invalid_argument("the restart interval must be in 0..65535 MCUs");
  }
  const fs::path source = fs::weakly_canonical(o.source);
  const fs::path destination = fs::weakly_canonical(o.destination);
  if (inside(destination, source)) {
    throw std::invalid_argument("the destination '" + o.destination + "' lies inside the source '" +
                                o.source + "'");
  }

  // Sorted, so that the progress and the report's lists do not depend on the file system.
  std::vector<fs::path> files;
  try {
    for (const fs::directory_entry& e : fs::recursive_directory_iterator(source)) {
      if (e.is_regular_file()) files.push_back(fs::relative(e.path(), source));
    }
  } catch (const fs::filesystem_error& e) {
    throw std::runtime_error(o.source + ": cannot scan: " + e.code().message());
  }
  std::sort(files.begin(), files.end());
  fs::create_directories(destination);
  for (const fs::path& f : files) {
    if (f.has_parent_path()) fs::create_directories(destination / f.parent_path());
  }

  PrepareReport report;
  report.files = files.size();
  std::vector<std::string> problems(files.size());
  std::vector<RestartOutcome> outcomes(files.size(), RestartOutcome::kNotJpeg);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> sizes(files.size());
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;  // guards `error`, `done` and the progress callback
  std::string error;
  std::size_t done = 0;

  const auto work = [&] {
    std::vector<std::uint8_t> bytes;
    std::vector<std::uint8_t> rewritten;
    while (!failed.load(std::memory_order_relaxed)) {
      const std::size_t i = next.fetch_add(1);
      if (i >= files.size()) return;
      try {
        read_whole(source / files[i], bytes);
        const RestartResult r = add_restart_grid(bytes.data(), bytes.size(), o.interval, rewritten);
        outcomes[i] = r.outcome;
        if (r.outcome == RestartOutcome::kRewritten) {
          sizes[i] = {bytes.size(), rewritten.size()};
          write_whole(destination / files[i], rewritten);
        } else {
          if (r.outcome == RestartOutcome::kUnreadable) {
            problems[i] = files[i].string() + ": " + r.message;
          }
          write_whole(destination / files[i], bytes);
        }
      } catch (const std::exception& e) {
        const std::lock_guard<std::mutex> lock(mutex);
        if (!failed.exchange(true)) error = e.what();
        return;
      }
      const std::lock_guard<std::mutex> lock(mutex);
      ++done;
      if (progress) progress(done, files.size());
    }
  };
  const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t threads = std::min<std::size_t>(
      files.size(), o.threads > 0 ? static_cast<std::size_t>(o.threads) : hardware);
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  if (failed) throw std::runtime_error(error);

  for (std::size_t i = 0; i < files.size(); ++i) {
    switch (outcomes[i]) {
      case RestartOutcome::kRewritten:
        ++report.rewritten;
        report.jpeg_bytes_in += sizes[i].first;
        report.jpeg_bytes_out += sizes[i].second;
        break;
      case RestartOutcome::kNotJpeg:
        ++report.copied;
        break;
      case RestartOutcome::kUnreadable:
        ++report.unreadable;
        report.problems.push_back(std::move(problems[i]));
        break;
    }
  }
  return report;
}

}  // namespace millrace::recordio
