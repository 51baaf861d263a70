#include "cli/progress.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>

namespace millrace::cli {

namespace {

std::atomic<bool> g_interrupted{false};

void on_sigint(int) { g_interrupted.store(true); }

}  // namespace

bool ProgressReporter::interrupted() { return g_interrupted.load(); }

ProgressReporter::ProgressReporter(Pipeline& pipeline, bool quiet)
    : pipeline_(pipeline), quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1) {
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  thread_ = std::thread([this] { loop(); });
}

ProgressReporter::~ProgressReporter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  if (!quiet_ && tty_) draw(true);
  signal(SIGINT, SIG_DFL);
}

void ProgressReporter::loop() {
  using namespace std::chrono_literals;
  auto last_plain = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, 100ms);
    if (stop_) break;
    if (g_interrupted.load()) pipeline_.cancel();
    if (quiet_) continue;
    const auto now = std::chrono::steady_clock::now();
    if (tty_) {
      draw(false);
    } else if (now - last_plain >= 2s) {
      draw(false);
      last_plain = now;
    }
  }
}

void ProgressReporter::draw(bool final_line) {
  const RunStats s = pipeline_.stats();
  const double elapsed = s.seconds;
  const double run = std::max(1e-9, elapsed - s.startup_seconds);
  const double rate =
      s.images_per_second > 0 ? s.images_per_second : static_cast<double>(s.images) / run;
  char eta[64] = "";
  if (s.expected_samples && rate > 0 && *s.expected_samples >= s.images) {
    std::snprintf(eta, sizeof eta, "  ETA %.1f s",
                  static_cast<double>(*s.expected_samples - s.images) / rate);
  }
  char total[32] = "";
  if (s.expected_samples) {
    std::snprintf(total, sizeof total, "/%llu",
                  static_cast<unsigned long long>(*s.expected_samples));
  }
  std::fprintf(stderr, "%s%s: %llu%s images  %.1f images/s  elapsed %.1f s%s  skipped %zu%s",
               tty_ ? "\r\033[K" : "", pipeline_.name().c_str(),
               static_cast<unsigned long long>(s.images), total, rate, elapsed, eta,
               s.skipped.size(), tty_ && !final_line ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace millrace::cli
