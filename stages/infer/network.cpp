#include "stages/infer/network.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "stages/infer/builder.hpp"
#include "stages/infer/calibration.hpp"
#include "stages/infer/calibrator.hpp"
#include "stages/infer/graph_analysis.hpp"
#include "stages/infer/planner.hpp"
#include "stages/infer/program.hpp"

namespace millrace::infer {

// One part of the batch under Parallelism::kSamples (the whole batch under kLayers): its own
// stream and program, built for its size, so that parts never share a buffer.
struct Part {
  int first = 0;  // its first sample in the batch
  int batch = 0;  // its samples in a whole batch
  dnnl::stream stream;
  std::unique_ptr<Program> program;
};

struct Network::Impl {
  Impl(const Model& m, NetworkOptions o)
      : model(m),
        options(o),
        engine(dnnl::engine::kind::cpu, 0),
        stream(engine),
        graph(analyze(model, options.input.type)) {
    if (model.digest == 0) model.digest = model_digest(model);
  }

  void set_threads() const { omp_set_num_threads(options.threads); }

  int part_count() const {
    return options.parallel == Parallelism::kSamples ? std::min(options.threads, options.batch) : 1;
  }

  // Builds what run() executes. Parts' primitives are created while the team size is 1, so that
  // oneDNN plans each of them for the one thread that will run it.
  void build_parts(Precision precision, const CalibrationTable* t) {
    const ScalePlan plan(model, graph, options.input, precision, options.channel_ranges, t);
    const int count = part_count();
    std::vector<Part> built(static_cast<std::size_t>(count));
    if (count > 1) omp_set_num_threads(1);
    int first = 0;
    for (int k = 0; k < count; ++k) {
      Part& part = built[static_cast<std::size_t>(k)];
      NetworkOptions own = options;
      own.batch = options.batch / count + (k < options.batch % count ? 1 : 0);
      own.threads = count > 1 ? 1 : options.threads;
      part.first = first;
      part.batch = own.batch;
      first += own.batch;
      part.stream = dnnl::stream(engine);
      part.program = build_program(model, graph, plan, own, engine, part.stream, false);
    }
    set_threads();
    parts = std::move(built);
    part_errors.assign(parts.size(), nullptr);
  }

  void build_int8(CalibrationTable t) {
    build_parts(Precision::kInt8, &t);
    table = std::move(t);
    calibration_program.reset();
    calibrator.reset();
  }

  // Runs part k's share of a batch of `batch` samples (nothing when the batch ends before it).
  void run_part(std::size_t k, const void* input, int batch, float* logits) {
    Part& part = parts[k];
    Program& p = *part.program;
    const int count = std::min(batch - part.first, part.batch);
    if (count <= 0) return;
    p.execute(part.stream,
              static_cast<const std::uint8_t*>(input) +
                  p.input_sample_bytes() * static_cast<std::size_t>(part.first),
              count, nullptr);
    const auto classes = static_cast<std::size_t>(p.classes());
    std::memcpy(logits + classes * static_cast<std::size_t>(part.first), p.logits(),
                sizeof(float) * classes * static_cast<std::size_t>(count));
  }

  Model model;
  NetworkOptions options;
  dnnl::engine engine;
  dnnl::stream stream;
  Graph graph;
  Layout preferred = Layout::kNHWC;
  std::vector<Part> parts;                       // what run() executes; empty until built
  std::vector<std::exception_ptr> part_errors;   // one per part, for the parallel region
  std::unique_ptr<Program> calibration_program;  // int8 only: the fp32 graph that observe() runs
  std::unique_ptr<Calibrator> calibrator;        // int8 only, from the first observe()
  std::optional<CalibrationTable> table;
  const void* last_source = nullptr;
};

Network::Network(const Model& model, NetworkOptions options) {
  if (options.batch < 1) throw std::invalid_argument("infer: batch must be at least 1");
  if (options.threads < 1) throw std::invalid_argument("infer: threads must be at least 1");
  if (options.input.layout != Layout::kNCHW && options.input.layout != Layout::kNHWC) {
    throw std::invalid_argument("infer: the input layout must be NCHW or NHWC");
  }
  impl_ = std::make_unique<Impl>(model, options);
  impl_->set_threads();
  (void)fold_factors(impl_->model, options.input);  // the input's unit and std, checked first
  impl_->preferred = probe_input_layout(impl_->model, impl_->graph, options, impl_->engine);
  if (options.precision == Precision::kFp32) impl_->build_parts(Precision::kFp32, nullptr);
}

Network::~Network() = default;

bool Network::needs_calibration() const { return impl_->parts.empty(); }

void Network::observe(const void* input, int batch) {
  Impl& m = *impl_;
  if (m.options.precision != Precision::kInt8) {
    throw std::logic_error("infer: observe() calibrates an int8 network; this one is fp32");
  }
  if (!m.parts.empty()) throw std::logic_error("infer: the network is already calibrated");
  if (batch < 1 || batch > m.options.batch) {
    throw std::invalid_argument("infer: batch " + std::to_string(batch) + " outside 1.." +
                                std::to_string(m.options.batch));
  }
  m.set_threads();
  if (!m.calibration_program) {
    const ScalePlan plan(m.model, m.graph, m.options.input, Precision::kFp32,
                         m.options.channel_ranges, nullptr);
    m.calibration_program = build_program(m.model, m.graph, plan, m.options, m.engine, m.stream,
                                          /*observe=*/true);
  }
  if (!m.calibrator) {
    m.calibrator = std::make_unique<Calibrator>(m.model, m.graph, m.options.calibration);
  }
  Calibrator& c = *m.calibrator;
  if (m.options.input.type == DType::kFloat32) {
    c.add(m.model.input, static_cast<const float*>(input),
          m.calibration_program->input_sample_bytes() / sizeof(float) *
              static_cast<std::size_t>(batch));
  }
  m.calibration_program->execute(
      m.stream, input, batch,
      [&c](int value, const float* data, std::size_t count) { c.add(value, data, count); });
  c.end_batch();
}

void Network::finalize_calibration() {
  Impl& m = *impl_;
  if (m.options.precision != Precision::kInt8) {
    throw std::logic_error("infer: only an int8 network is calibrated");
  }
  if (!m.parts.empty()) throw std::logic_error("infer: the network is already calibrated");
  if (!m.calibrator || m.calibrator->batches() == 0) {
    throw std::logic_error("infer: finalize_calibration() before any observe()");
  }
  m.set_threads();
  m.build_int8(m.calibrator->finish());
}

void Network::save_calibration(const std::string& path) const {
  if (!impl_->table) {
    throw std::logic_error(
        "infer: there is no calibration table to save (fp32, or not calibrated)");
  }
  CalibrationTable table = *impl_->table;
  table.fingerprint = calibration_fingerprint(impl_->model, impl_->options.input);
  save_calibration_table(table, path);
}

namespace {

void require_int8_for_table(const NetworkOptions& options) {
  if (options.precision != Precision::kInt8) {
    throw std::logic_error("infer: only an int8 network takes a calibration table");
  }
}

}  // namespace

void Network::load_calibration(const std::string& path) {
  require_int8_for_table(impl_->options);  // before reading: an fp32 network has no use for it
  load_calibration(load_calibration_table(path), path);
}

void Network::load_calibration(CalibrationTable t, const std::string& path) {
  Impl& m = *impl_;
  require_int8_for_table(m.options);
  m.set_threads();
  check_table(t, m.model, m.options.input, path);
  m.build_int8(std::move(t));
}

void Network::run(const void* input, int batch, float* logits) {
  Impl& m = *impl_;
  if (m.parts.empty()) throw std::logic_error("infer: run() before the int8 network is calibrated");
  if (batch < 1 || batch > m.options.batch) {
    throw std::invalid_argument("infer: batch " + std::to_string(batch) + " outside 1.." +
                                std::to_string(m.options.batch));
  }
  m.set_threads();
  const std::size_t count = m.parts.size();
  if (count == 1) {
    m.run_part(0, input, batch, logits);
  } else {
    // One fork and join per batch. The loop covers every part even if libgomp gives the region
    // fewer threads than asked for; exceptions must not leave the region, so each part keeps its
    // own and the first is rethrown after the join.
    const int team = static_cast<int>(count);
#pragma omp parallel num_threads(team)
    for (auto k = static_cast<std::size_t>(omp_get_thread_num()); k < count;
         k += static_cast<std::size_t>(omp_get_num_threads())) {
      try {
        m.run_part(k, input, batch, logits);
      } catch (...) {
        m.part_errors[k] = std::current_exception();
      }
    }
    std::exception_ptr first;
    for (std::exception_ptr& e : m.part_errors) {
      if (!first) first = e;
      e = nullptr;  // none may outlive this batch
    }
    if (first) std::rethrow_exception(first);
  }
  m.last_source = m.parts.front().program->first_source_handle();
}

int Network::parts() const { return impl_->part_count(); }

int Network::classes() const {
  const auto& shape = impl_->model.value_shapes.at(impl_->model.output);
  std::int64_t classes = 1;
  for (std::size_t i = 1; i < shape.size(); ++i) classes *= shape[i];
  return static_cast<int>(classes);
}

Layout Network::preferred_layout() const { return impl_->preferred; }

NetworkStats Network::stats() const {
  return impl_->parts.empty() ? NetworkStats{} : impl_->parts.front().program->stats();
}

const void* Network::last_source_handle() const { return impl_->last_source; }

std::string Network::describe() const {
  return impl_->parts.empty() ? std::string() : impl_->parts.front().program->describe();
}

}  // namespace millrace::infer
