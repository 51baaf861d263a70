// The executor's step: the source's next(), the body every step runs for an item (token
// accounting, the stage call, errors, emitting), and the run itself (see engine/flow_graph.hpp).
#include "engine/flow_graph.hpp"

namespace millrace {

Msg FlowGraph::source_next(oneapi::tbb::flow_control& control) {
  Msg m;
  if (source_ended_ || owner_.stopping()) {
    control.stop();
    return m;
  }
  auto& source = static_cast<SourceStage&>(*plan_.stages.front().stage);
  Sample* sample = samples_->acquire();
  const std::int64_t t0 = now_ns();
  SlotCounters& counters = source_counters_[slot(nullptr)];
  try {
    SourceStatus status = source.next(*sample);
    // A resumed epoch: the samples before the resume point are passed over here, unloaded (the
    // source's next() only names them), except the ones a padding batch stage needs again.
    while (status == SourceStatus::kSample && epoch_ == range_.epoch &&
           epoch_position_ >= range_.prefix && epoch_position_ < range_.skip) {
      ++epoch_position_;
      sample->reset();
      status = source.next(*sample);
    }
    switch (status) {
      case SourceStatus::kSample:
        m.kind = Msg::Kind::kSample;
        m.sample = sample;
        sample->seq = next_seq_;
        sample->position = epoch_position_;
        sample->pad_only = epoch_ == range_.epoch && epoch_position_ < range_.prefix;
        ++epoch_position_;
        m.epoch = sample->epoch;
        ++epoch_samples_;
        owner_.note_sample_read();
        SlotCounters::add(counters.items, 1);
        break;
      case SourceStatus::kEpochEnd:
        samples_->release(sample);
        m.kind = Msg::Kind::kEpochEnd;
        m.epoch = epoch_++;
        m.count = epoch_samples_;
        epoch_samples_ = 0;
        epoch_position_ = 0;
        break;
      case SourceStatus::kEnd:
        samples_->release(sample);
        m.kind = Msg::Kind::kEnd;
        m.count = next_seq_ + 1;  // every message the source sent, this one included
        source_ended_ = true;
        break;
    }
  } catch (const std::exception& e) {
    samples_->release(sample);
    const StagePlan& s = plan_.stages.front();
    owner_.fail("stage '" + s.name + "' (" + s.where.file + ":" + std::to_string(s.where.line) +
                ") failed: " + e.what());
    control.stop();
    return m;
  }
  const std::int64_t t1 = now_ns();
  SlotCounters::add(counters.busy_ns, static_cast<std::uint64_t>(t1 - t0));
  trace(slot(nullptr), {t0, t1 - t0, 0, false});
  // The message waits in the input node until the first edge has a token (and the window one).
  source_state_.change(+1, 0, 0, [t1] { return t1; });
  m.seq = next_seq_++;
  if (m.seq == 0) owner_.note_first_item();
  return m;
}

void FlowGraph::run_step(Step& step, Step* prev, Step* next, const Msg& msg, bool own_thread) {
  const std::size_t at = slot(own_thread ? &step : nullptr);
  SlotCounters& counters = step.counters[at];
  const std::size_t index = step.index;
  std::int64_t t = -1;  // read the clock once per moment, and only when it is needed
  auto now = [&] { return t < 0 ? (t = now_ns()) : t; };
  const std::int64_t t0 = now_ns();
  t = t0;
  // The item, an output token and a slot token have left their buffers.
  {
    const auto after = step.state.change(-1, -1, -1, now);
    const std::int64_t occupied = step.state.out_capacity - after.tokens;
    counters.raise_peak(occupied);
    if (next != nullptr) trace_edge(at, index + 1, t0, occupied);
  }
  // The item has left our input edge: give its token back to the producer.
  if (msg.holds_token) {
    StepState& producer = prev != nullptr ? prev->state : source_state_;
    const auto after = producer.change(0, +1, 0, now);
    trace_edge(at, index, t0, producer.out_capacity - after.tokens);
    step.tokens->try_put(Token{});
  }
  if (step.window_end) window_->try_put(Token{});

  bool emitted = false;
  auto emit = [&](Msg out) {
    out.holds_token = !emitted;
    emitted = true;
    if (next != nullptr) {
      t = -1;
      next->state.change(+1, 0, 0, now);
      next->queue->try_put(out);
    } else {
      owner_.deliver(out);
    }
  };

  Msg m = msg;
  const bool is_data = m.kind == Msg::Kind::kSample || m.kind == Msg::Kind::kBatch;
  if (owner_.stopping()) {
    // Cancelled or failed: drain without work so that nothing waits on this item.
    if (m.sample != nullptr) samples_->release(m.sample);
    if (m.batch != nullptr) batches_->release(m.batch);
  } else {
    auto sample_failure = [&](const std::exception& e, bool data_error) {
      const StagePlan& s = *step.stage;
      std::string what =
          "stage '" + s.name + "' (" + s.where.file + ":" + std::to_string(s.where.line) + ")";
      if (m.sample != nullptr) {
        what += " failed on sample " + std::to_string(m.sample->id) + " '" + m.sample->path + "'";
      } else if (m.batch != nullptr) {
        what += " failed on batch " + std::to_string(m.batch->index);
      } else {
        what += " failed";
      }
      SlotCounters::add(counters.errors, 1);
      if (data_error && s.on_error == OnError::kSkip && m.sample != nullptr) {
        m.sample->skipped = true;
        m.sample->error = e.what();
        owner_.record_skip(*m.sample, s.name, e.what());
        return;
      }
      owner_.fail(what + ": " + e.what());
    };
    try {
      switch (step.kind) {
        case StepKind::kLoad:
        case StepKind::kTransform:
          if (m.kind == Msg::Kind::kSample && !m.sample->skipped) {
            try {
              if (step.kind == StepKind::kLoad) {
                static_cast<const SourceStage&>(*step.stage->stage).load(*m.sample);
              } else {
                static_cast<const TransformStage&>(*step.stage->stage).process(*m.sample, owner_);
              }
            } catch (const SampleError& e) {
              sample_failure(e, true);
            } catch (const std::bad_alloc& e) {
              // What one sample asked for could not be had: that sample's error, not the run's.
              sample_failure(SampleError(std::string("out of memory: ") + e.what()), true);
            }
          }
          emit(m);
          break;
        case StepKind::kBatch: {
          auto& stage = static_cast<BatchStage&>(*step.stage->stage);
          StepEmitter<FlowGraph, decltype(emit)> emitter(*this, emit, true);
          ++batch_seen_;
          if (m.kind == Msg::Kind::kSample) {
            EpochProgress& progress = epochs_[m.sample->epoch];
            progress.position = std::max(progress.position, m.sample->position + 1);
            if (!m.sample->skipped) {
              try {
                stage.push(*m.sample, emitter);
              } catch (const SampleError& e) {
                sample_failure(e, true);
              } catch (const std::bad_alloc& e) {
                sample_failure(SampleError(std::string("out of memory: ") + e.what()), true);
              }
            }
            ++progress.seen;
            samples_->release(m.sample);
          } else if (m.kind == Msg::Kind::kEpochEnd) {
            EpochProgress& p = epochs_[m.epoch];
            p.expected = m.count;
            p.marker = true;
          } else if (m.kind == Msg::Kind::kEnd) {
            end_seen_ = true;
            end_total_ = m.count;
          }
          for (auto it = epochs_.begin(); it != epochs_.end();) {
            if (it->second.marker && it->second.seen == it->second.expected) {
              finishing_epoch_ = true;
              stage.finish_epoch(it->first, emitter);
              finishing_epoch_ = false;
              it = epochs_.erase(it);
            } else {
              ++it;
            }
          }
          if (end_seen_ && batch_seen_ == end_total_) {
            stage.finish();
            step.finished = true;
            Msg end;
            end.kind = Msg::Kind::kEnd;
            emit(end);
          }
          break;
        }
        case StepKind::kBatchTransform: {
          auto& stage = static_cast<BatchTransformStage&>(*step.stage->stage);
          StepEmitter<FlowGraph, decltype(emit)> emitter(*this, emit, false);
          if (m.kind == Msg::Kind::kBatch) {
            stage.process(*m.batch, emitter);
          } else if (m.kind == Msg::Kind::kEnd) {
            stage.flush(emitter);
            stage.finish();
            step.finished = true;
            emit(m);
          } else {
            emit(m);
          }
          break;
        }
        case StepKind::kSink:
          if (m.kind == Msg::Kind::kBatch) {
            static_cast<SinkStage&>(*step.stage->stage).consume(*m.batch);
            if (next == nullptr || next->kind == StepKind::kDeliver) {
              owner_.note_sunk(static_cast<std::uint64_t>(m.batch->rows) -
                               static_cast<std::uint64_t>(m.batch->pad));
            }
          } else if (m.kind == Msg::Kind::kEnd) {
            step.stage->stage->finish();
            step.finished = true;
          }
          emit(m);
          break;
        case StepKind::kDeliver:
          emit(m);
          break;
      }
    } catch (const std::exception& e) {
      sample_failure(e, false);
      if (!emitted && m.sample != nullptr) samples_->release(m.sample);
      if (!emitted && m.batch != nullptr) batches_->release(m.batch);
    }
  }
  const std::int64_t t1 = now_ns();
  t = t1;
  if (is_data) SlotCounters::add(counters.items, 1);
  SlotCounters::add(counters.busy_ns, static_cast<std::uint64_t>(t1 - t0));
  trace(at, {t0, t1 - t0, static_cast<std::uint32_t>(index + 1), false});

  // Give back the output token when nothing used it, and the slot unless `concurrency: auto`
  // has lowered the step's concurrency and this slot is one to drop.
  int debt = step.slot_debt.load(std::memory_order_relaxed);
  while (debt > 0 &&
         !step.slot_debt.compare_exchange_weak(debt, debt - 1, std::memory_order_relaxed)) {
  }
  const bool keep_slot = debt <= 0;
  const auto after = step.state.change(0, emitted ? 0 : 1, keep_slot ? 1 : 0, now);
  if (!emitted) {
    if (next != nullptr) trace_edge(at, index + 1, t1, step.state.out_capacity - after.tokens);
    (next != nullptr ? *next->tokens : *prefetch_tokens_).try_put(Token{});
  }
  if (keep_slot) step.slots->try_put(Token{});
  if (is_data && step.concurrency_auto && auto_pending_.load(std::memory_order_relaxed) &&
      auto_items_.fetch_add(1, std::memory_order_relaxed) + 1 == auto_target_) {
    balance_concurrency();
  }
}

void FlowGraph::run() {
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    Step* step = steps_[i].get();
    if (step->kind != StepKind::kBatchTransform) continue;
    Step* prev = i > 0 ? steps_[i - 1].get() : nullptr;
    Step* next = steps_[i + 1].get();  // a deliver step always follows
    step->thread->start([this, step, prev, next, first = true](const Msg& m) mutable {
      if (first) {
        first = false;
        try {
          static_cast<BatchTransformStage&>(*step->stage->stage).thread_start();
        } catch (const std::exception& e) {
          owner_.fail("stage '" + step->stage->name + "' failed to start: " + e.what());
        }
      }
      run_step(*step, prev, next, m, true);
      graph_->release_wait();
    });
  }
  origin_ns_.store(nanos_since(owner_created_), std::memory_order_relaxed);
  arena_->execute([&] {
    source_->activate();
    graph_->wait_for_all();
  });
  run_end_ns_.store(now_ns(), std::memory_order_release);
  for (auto& step : steps_) {
    if (step->thread) step->thread->close();
  }
  // Stages not finished by the end-of-stream marker (a cancelled or failed run) finish here, so
  // that sinks still close what they wrote.
  for (auto& step : steps_) {
    if (step->stage == nullptr || step->finished) continue;
    if (step->kind == StepKind::kBatch || step->kind == StepKind::kBatchTransform ||
        step->kind == StepKind::kSink) {
      try {
        step->stage->stage->finish();
      } catch (const std::exception& e) {
        owner_.fail("stage '" + step->stage->name + "' failed to finish: " + e.what());
      }
      step->finished = true;
    }
  }
  try {
    plan_.stages.front().stage->finish();
  } catch (const std::exception& e) {
    owner_.fail("stage '" + plan_.stages.front().name + "' failed to finish: " + e.what());
  }
}

void FlowGraph::return_prefetch_token() {
  steps_.back()->state.change(0, +1, 0, [this] { return now_ns(); });
  prefetch_tokens_->try_put(Token{});
}

}  // namespace millrace
