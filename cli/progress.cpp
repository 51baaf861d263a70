#include "cli/progress.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>

namespace millrace::cli {

namespace {

// The first stop signal received (0: none).
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "used in a signal handler");

// The first signal asks for a clean stop. A second one means the user will not wait for it: the
// process ends at once, by that signal, as if it had no handler (files already in place stay
// whole; a batch being written is left as a hidden temporary file, which the next run removes).
void on_stop_signal(int signal) {
  int none = 0;
  if (g_signal.compare_exchange_strong(none, signal)) return;
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

}  // namespace

int ProgressReporter::stop_signal() { return g_signal.load(); }

void ProgressReporter::catch_stop_signals() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

ProgressReporter::ProgressReporter(Pipeline& pipeline, bool quiet)
    : pipeline_(pipeline), quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1) {
  catch_stop_signals();
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
  signal(SIGTERM, SIG_DFL);
}

void ProgressReporter::loop() {
  using namespace std::chrono_literals;
  auto last_plain = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, 100ms);
    if (stop_) break;
    if (g_signal.load() != 0) pipeline_.cancel();
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
