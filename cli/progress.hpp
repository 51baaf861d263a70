// Live progress of a CLI run on stderr, and Ctrl-C handling.
//
// Contract: a ProgressReporter owns one background thread that wakes every 100 ms; it redraws a
// status line when stderr is a terminal and prints a plain line every few seconds otherwise. It
// also turns SIGINT (Ctrl-C) and SIGTERM (what `kill`, timeout and job schedulers send) into
// Pipeline::cancel(), so a run stops within a second: the batch in the sink is finished, none after
// it starts, and the sinks close what they wrote. A second signal ends the process at once.
// Destroy it before printing the summary.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "millrace/pipeline.hpp"

namespace millrace::cli {

class ProgressReporter {
 public:
  ProgressReporter(Pipeline& pipeline, bool quiet);
  ~ProgressReporter();
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // The signal that stopped the run (SIGINT or SIGTERM), 0 when none did.
  static int stop_signal();
  // Catches the stop signals from now on (a reporter does it too): one that comes while the
  // pipeline is still being built stops the run as soon as it starts, with its summary.
  static void catch_stop_signals();

 private:
  void loop();
  void draw(bool final_line);

  Pipeline& pipeline_;
  bool quiet_;
  bool tty_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace millrace::cli
