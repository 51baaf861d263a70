#include "engine/runtime.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "engine/file_io.hpp"
#include "engine/flow_graph.hpp"

namespace millrace {

namespace {

// The consumer queue holds batch pointers; this one address marks the end of the stream.
BatchData end_of_stream_marker;
BatchData* const kEndOfStream = &end_of_stream_marker;

}  // namespace

Pipeline::Impl::Impl(PipelinePlan plan, std::vector<Diagnostic> warnings, Clock::time_point created)
    : plan_(std::move(plan)),
      warnings_(std::move(warnings)),
      created_(created),
      ready_(static_cast<std::size_t>(plan_.prefetch) + 1) {
  for (auto& s : plan_.stages) s.stage->prepare();
  has_sink_ = std::any_of(plan_.stages.begin(), plan_.stages.end(), [](const StagePlan& s) {
    return s.factory != nullptr && s.factory->info().shape == StageShape::kSink;
  });
  const auto& source = static_cast<const SourceStage&>(*plan_.stages.front().stage);
  expected_samples_ = source.total_samples();
  if (!plan_.trace.empty()) {
    // A trace that cannot be written is found now, not after the run; nothing is created yet
    // (a FIFO in its place would block an open, and an empty file would pass for a trace).
    const std::string problem = output_file_problem(plan_.trace);
    if (!problem.empty()) {
      throw ConfigError(
          {{plan_.file, 0, 0,
            "pipeline: 'trace': cannot write the trace file '" + plan_.trace + "': " + problem}});
    }
    trace_.path = plan_.trace;
    trace_.events_per_thread = plan_.trace_events;
  }
  flow_ = std::make_unique<FlowGraph>(*this, plan_, created_);
  flow_->build();
  for (const StagePlan& p : plan_.stages) cheaper_.push_back(p.stage->cheaper_settings());
  built_ns_ = nanos_since(created_);
}

Pipeline::Impl::~Impl() {
  cancel();
  if (runner_.joinable()) runner_.join();
}

void Pipeline::Impl::start() {
  if (started_.exchange(true)) return;
  // Time between building and starting is the caller's, not start-up: leave it out of the clock.
  idle_ns_.store(nanos_since(created_) - built_ns_);
  runner_ = std::thread([this] { run_graph(); });
}

void Pipeline::Impl::run_graph() {
  try {
    for (auto& s : plan_.stages) s.stage->open();
    flow_->run();
  } catch (const std::exception& e) {
    fail(std::string("pipeline failed: ") + e.what());
  }
  stopped_ns_.store(nanos_since(created_), std::memory_order_relaxed);
  if (!plan_.trace.empty()) {
    try {
      flow_->write_trace(plan_.trace, plan_.name);
      std::lock_guard<std::mutex> lock(report_mutex_);
      trace_.events = flow_->trace_events();
      trace_.dropped = flow_->trace_dropped();
      trace_.written = true;
    } catch (const std::exception& e) {
      fail(std::string("trace: ") + e.what());
    }
  }
  if (!cancelled_.load() && !ended_.load()) {
    std::lock_guard<std::mutex> lock(report_mutex_);
    if (error_.empty()) error_ = "pipeline stopped before its end of stream";
  }
  done_.store(true, std::memory_order_release);
  wake_consumer();
}

void Pipeline::Impl::wake_consumer() {
  signal_.fetch_add(1, std::memory_order_release);
  signal_.notify_all();
  // A consumer in wait_for() sleeps on the condition variable instead (a timed wait that the
  // atomic cannot do); it announced itself before checking for work, so one of the two sees the
  // other (both sides order their announcement and their check with a full fence).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (timed_waiters_.load(std::memory_order_relaxed) > 0) {
    { std::lock_guard<std::mutex> lock(wait_mutex_); }
    wait_cv_.notify_all();
  }
}

bool Pipeline::Impl::ready_for_consumer() const {
  return ready_.read_available() > 0 || done_.load(std::memory_order_acquire);
}

bool Pipeline::Impl::wait_for(std::chrono::nanoseconds timeout) {
  start();
  if (ready_for_consumer()) return true;
  timed_waiters_.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool ready = false;
  {
    std::unique_lock<std::mutex> lock(wait_mutex_);
    ready = wait_cv_.wait_for(lock, timeout, [this] { return ready_for_consumer(); });
  }
  timed_waiters_.fetch_sub(1, std::memory_order_relaxed);
  return ready;
}

void Pipeline::Impl::start_at(const StreamPosition& from, std::uint32_t epochs,
                              std::uint64_t global_start) {
  if (started_.load()) throw std::logic_error("millrace: start_at() after the run started");
  if (from.first_batch_samples > from.samples) {
    throw std::invalid_argument("millrace: start_at(): first_batch_samples " +
                                std::to_string(from.first_batch_samples) + " is past samples " +
                                std::to_string(from.samples));
  }
  const StagePlan& s = plan_.stages.front();
  if (from.samples > 0 && !plan_.ordered) {
    throw ConfigError({{plan_.file, 0, 0,
                        "pipeline: resuming mid-epoch needs 'ordered: true' (batches are made in "
                        "source order only then)"}});
  }
  auto& source = static_cast<SourceStage&>(*s.stage);
  if ((from.epoch != 0 || epochs != 0) && !source.set_epochs(from.epoch, epochs)) {
    throw ConfigError({{s.where.file, s.where.line, s.where.column,
                        "stage '" + s.name + "' (" + s.type +
                            ") cannot start at another epoch or read a chosen number of epochs"}});
  }
  if (!source.set_global_start(global_start)) {
    throw ConfigError({{s.where.file, s.where.line, s.where.column,
                        "stage '" + s.name + "' (" + s.type +
                            ") cannot start its epoch at position " + std::to_string(global_start) +
                            " of a global order (it has none, or the epoch is shorter)"}});
  }
  const BatchStage* batch = batch_stage();
  flow_->set_range(from, batch != nullptr && batch->pads_from_epoch_start());
  expected_samples_ = source.total_samples();
}

const BatchStage* Pipeline::Impl::batch_stage() const {
  for (const StagePlan& p : plan_.stages) {
    if (p.factory->info().shape == StageShape::kBatch) {
      return static_cast<const BatchStage*>(p.stage.get());
    }
  }
  return nullptr;
}

StreamIdentity Pipeline::Impl::identity() const {
  const auto& source = static_cast<const SourceStage&>(*plan_.stages.front().stage);
  StreamIdentity id;
  id.seed = plan_.seed;
  id.config = plan_.config_digest;
  if (const BatchStage* batch = batch_stage()) id.batch_size = batch->batch_size();
  const SourceStage::Split split = source.split();
  id.dataset = split.dataset;
  id.dataset_samples = split.dataset_samples;
  id.global = split.global;
  std::tie(id.part_index, id.num_parts) = source.part();
  return id;
}

std::optional<std::uint64_t> Pipeline::Impl::batches_per_epoch() const {
  const auto& source = static_cast<const SourceStage&>(*plan_.stages.front().stage);
  const std::optional<std::uint64_t> samples = source.samples_per_epoch();
  const BatchStage* batch = batch_stage();
  if (!samples || batch == nullptr) return std::nullopt;
  return batch->batches_for(*samples);
}

void Pipeline::Impl::note_concurrency(const std::string& note) {
  std::lock_guard<std::mutex> lock(report_mutex_);
  concurrency_note_ = note;
}

void Pipeline::Impl::note_sunk(std::uint64_t rows) {
  sunk_images_.fetch_add(rows, std::memory_order_relaxed);
  sunk_batches_.fetch_add(1, std::memory_order_relaxed);
}

void Pipeline::Impl::note_first_item() {
  first_item_ns_.store(nanos_since(created_), std::memory_order_relaxed);
}

void Pipeline::Impl::deliver(const Msg& msg) {
  if (msg.kind == Msg::Kind::kBatch) {
    if (!ready_.push(msg.batch)) throw std::logic_error("millrace: prefetch queue overflow");
  } else if (msg.kind == Msg::Kind::kEnd) {
    // Checked here, once every sample has been counted: a fraction needs the final total.
    const auto read = samples_read_.load();
    const auto skipped = skipped_count_.load();
    if (plan_.max_error_fraction >= 0 && read > 0 &&
        static_cast<double>(skipped) > plan_.max_error_fraction * static_cast<double>(read)) {
      fail(std::to_string(skipped) + " of " + std::to_string(read) +
           " samples skipped, above pipeline.max_errors " +
           format_number(plan_.max_error_fraction));
    }
    ready_.push(kEndOfStream);
    ended_.store(true, std::memory_order_release);
    if (!wait_released_.exchange(true)) flow_->release_wait();
  } else {
    // Markers that reach the end are not the consumer's business; their token goes back now.
    flow_->return_prefetch_token();
    return;
  }
  wake_consumer();
}

std::optional<Batch> Pipeline::Impl::next() {
  start();
  for (;;) {
    BatchData* b = nullptr;
    if (ready_.pop(b)) {
      if (b == kEndOfStream) {
        // The end of stream arrives just before the graph winds down: wait for that, so that
        // stats() taken after the last next() are final (and the sinks have finished).
        for (;;) {
          const std::uint64_t seen = signal_.load(std::memory_order_acquire);
          if (done_.load(std::memory_order_acquire)) break;
          signal_.wait(seen, std::memory_order_acquire);
        }
        std::lock_guard<std::mutex> lock(report_mutex_);
        if (!error_.empty()) throw RunError(error_);
        return std::nullopt;
      }
      const std::int64_t now = nanos_since(created_);
      const auto rows = static_cast<std::uint64_t>(b->rows) - static_cast<std::uint64_t>(b->pad);
      images_.fetch_add(rows, std::memory_order_relaxed);
      if (batches_.fetch_add(1, std::memory_order_relaxed) == 0) {
        first_batch_ns_.store(now, std::memory_order_relaxed);
      } else {
        images_after_first_.fetch_add(rows, std::memory_order_relaxed);
      }
      last_batch_ns_.store(now, std::memory_order_relaxed);
      return Batch(b, this);
    }
    const std::uint64_t seen = signal_.load(std::memory_order_acquire);
    if (ready_.read_available() > 0) continue;
    if (done_.load(std::memory_order_acquire)) {
      if (ready_.read_available() > 0) continue;
      std::lock_guard<std::mutex> lock(report_mutex_);
      if (!error_.empty() && !cancelled_.load()) throw RunError(error_);
      return std::nullopt;
    }
    signal_.wait(seen, std::memory_order_acquire);
  }
}

void Pipeline::Impl::release(BatchData* batch) {
  flow_->release_batch(batch);
  if (!ended_.load(std::memory_order_acquire)) flow_->return_prefetch_token();
}

void Pipeline::Impl::cancel() {
  cancelled_.store(true);
  stopping_.store(true);
  if (flow_ && flow_->built()) {
    flow_->cancel();
    if (!wait_released_.exchange(true)) flow_->release_wait();
  }
  wake_consumer();
}

void Pipeline::Impl::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(report_mutex_);
    if (!error_.empty()) return;  // the first failure is the cause; later ones are its echoes
    error_ = message;
  }
  stopping_.store(true);
  if (flow_ && flow_->built()) {
    flow_->cancel();
    if (!wait_released_.exchange(true)) flow_->release_wait();
  }
}

void Pipeline::Impl::record_skip(const Sample& sample, const std::string& stage,
                                 const std::string& error) {
  const auto skipped = skipped_count_.fetch_add(1, std::memory_order_relaxed) + 1;
  {
    std::lock_guard<std::mutex> lock(report_mutex_);
    skipped_.push_back({sample.path, sample.id, stage, error});
  }
  if (plan_.max_error_count >= 0 && skipped > static_cast<std::uint64_t>(plan_.max_error_count)) {
    fail(std::to_string(skipped) + " samples skipped, above pipeline.max_errors " +
         std::to_string(plan_.max_error_count) + " (last: '" + sample.path + "': " + error + ")");
  } else if (plan_.max_error_fraction >= 0 && expected_samples_ &&
             static_cast<double>(skipped) >
                 plan_.max_error_fraction * static_cast<double>(*expected_samples_)) {
    fail(std::to_string(skipped) + " of " + std::to_string(*expected_samples_) +
         " samples skipped, above pipeline.max_errors " + format_number(plan_.max_error_fraction) +
         " (last: '" + sample.path + "': " + error + ")");
  }
}

void Pipeline::Impl::warn(const Sample& sample, const std::string& stage,
                          const std::string& message) {
  std::lock_guard<std::mutex> lock(report_mutex_);
  constexpr std::size_t kMaxWarnings = 1000;  // a bounded list: counts keep the rest
  if (warning_list_.size() >= kMaxWarnings) {
    ++warnings_dropped_;
    return;
  }
  warning_list_.push_back("stage '" + stage + "': sample " + std::to_string(sample.id) + " '" +
                          sample.path + "': " + message);
}

RunStats Pipeline::Impl::stats() const { return build_stats(done_.load()); }

std::string Pipeline::Impl::graph_dot() const { return flow_->dot(); }

std::size_t Pipeline::Impl::samples_created() const { return flow_->samples_created(); }
std::size_t Pipeline::Impl::samples_limit() const { return flow_->samples_limit(); }

}  // namespace millrace
