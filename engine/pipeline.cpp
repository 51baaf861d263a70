#include "millrace/pipeline.hpp"

#include <fstream>
#include <sstream>

#include "engine/config.hpp"
#include "engine/file_io.hpp"
#include "engine/pipeline_access.hpp"
#include "engine/runtime.hpp"
#include "millrace/distributed.hpp"

namespace millrace {

std::string_view dtype_name(DType type) {
  switch (type) {
    case DType::kUInt8:
      return "uint8";
    case DType::kInt8:
      return "int8";
    case DType::kFloat32:
      return "float32";
  }
  return "?";
}

std::size_t dtype_size(DType type) { return type == DType::kFloat32 ? 4 : 1; }

// ---- Batch -------------------------------------------------------------------------------------

Batch::Batch(Batch&& other) noexcept : data_(other.data_), owner_(other.owner_) {
  other.data_ = nullptr;
}

Batch& Batch::operator=(Batch&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    owner_ = other.owner_;
    other.data_ = nullptr;
  }
  return *this;
}

Batch::~Batch() { release(); }

void Batch::release() {
  if (data_ != nullptr && owner_ != nullptr) owner_->release(data_);
  data_ = nullptr;
}

std::uint64_t Batch::index() const { return data_->index; }
std::uint32_t Batch::epoch() const { return data_->epoch; }
DType Batch::dtype() const { return data_->data.dtype; }
std::span<const std::int64_t> Batch::shape() const {
  return {data_->data.shape.data(), static_cast<std::size_t>(data_->data.rank)};
}
std::string_view Batch::layout() const { return data_->data.layout; }
const void* Batch::data() const { return data_->data.storage.data(); }
std::size_t Batch::bytes() const { return data_->data.bytes(); }
std::size_t Batch::size() const { return data_->rows; }
int Batch::pad() const { return data_->pad; }
int Batch::label_width() const { return data_->label_width; }
std::span<const float> Batch::labels() const {
  return {data_->labels.data(), data_->rows * static_cast<std::size_t>(data_->label_width)};
}
std::span<const std::uint64_t> Batch::ids() const { return {data_->ids.data(), data_->rows}; }
const std::vector<std::string>& Batch::paths() const { return data_->paths; }
const Quantization& Batch::quantization() const { return data_->quantization; }
StreamPosition Batch::position() const { return data_->position; }
bool Batch::last_in_epoch() const { return data_->last_in_epoch; }
std::span<const float> Batch::outputs() const {
  return {data_->outputs.data(), data_->rows * static_cast<std::size_t>(data_->output_width)};
}
int Batch::output_width() const { return data_->output_width; }

// ---- Pipeline ----------------------------------------------------------------------------------

namespace {

std::unique_ptr<Pipeline::Impl> build(std::string_view yaml, const std::string& source_name,
                                      const std::vector<std::string>& overrides,
                                      std::chrono::steady_clock::time_point created,
                                      const Registry& registry = Registry::builtin(),
                                      ConfigOrigin origin = ConfigOrigin::kText) {
  Diagnostics diagnostics;
  ConfigNode root = load_config_document(yaml, source_name, diagnostics, origin);
  PipelinePlan plan;
  if (!diagnostics.has_errors()) {
    const ProcessGroup& group = process_group();
    plan =
        parse_pipeline(std::move(root), overrides, registry, diagnostics, group.rank, group.world);
  }
  diagnostics.throw_if_errors();
  return std::make_unique<Pipeline::Impl>(std::move(plan), diagnostics.warnings(), created);
}

}  // namespace

Pipeline::Pipeline(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Pipeline PipelineAccess::from_string(std::string_view yaml, const Registry& registry,
                                     const std::vector<std::string>& overrides) {
  return Pipeline(build(yaml, "<string>", overrides, std::chrono::steady_clock::now(), registry));
}
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;
Pipeline::~Pipeline() = default;

Pipeline Pipeline::from_file(const std::string& path, const std::vector<std::string>& overrides) {
  const auto created = std::chrono::steady_clock::now();
  std::string text;
  try {
    text = read_regular_file(path, kMaxConfigFileBytes, "config file");
  } catch (const FileError& e) {
    throw ConfigError({{path, 0, 0, e.detail()}});
  }
  return Pipeline(build(text, path, overrides, created, Registry::builtin(), ConfigOrigin::kFile));
}

Pipeline Pipeline::from_string(std::string_view yaml, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  return Pipeline(build(yaml, source_name, overrides, std::chrono::steady_clock::now()));
}

void Pipeline::start_at(const StreamPosition& from, std::uint32_t epochs,
                        std::uint64_t global_start) {
  impl_->start_at(from, epochs, global_start);
}
void Pipeline::start() { impl_->start(); }
std::optional<Batch> Pipeline::next() { return impl_->next(); }
bool Pipeline::wait_for(std::chrono::nanoseconds timeout) { return impl_->wait_for(timeout); }
std::optional<std::uint64_t> Pipeline::batches_per_epoch() const {
  return impl_->batches_per_epoch();
}
int Pipeline::prefetch() const { return impl_->plan().prefetch; }
StreamIdentity Pipeline::identity() const { return impl_->identity(); }
void Pipeline::cancel() { impl_->cancel(); }
RunStats Pipeline::stats() const { return impl_->stats(); }
const std::string& Pipeline::name() const { return impl_->plan().name; }
std::string Pipeline::graph_dot() const { return impl_->graph_dot(); }
const std::vector<Diagnostic>& Pipeline::warnings() const { return impl_->warnings(); }

RunStats Pipeline::run(const std::function<void(const Batch&)>& on_batch) {
  while (auto batch = next()) on_batch(*batch);
  return stats();
}

// ---- PipelineBuilder ---------------------------------------------------------------------------

PipelineBuilder::PipelineBuilder(std::string name) : name_(std::move(name)) {}

PipelineBuilder& PipelineBuilder::set(const std::string& pipeline_key, const std::string& value) {
  pipeline_.emplace_back(pipeline_key, value);
  return *this;
}

PipelineBuilder& PipelineBuilder::stage(
    const std::string& type, const std::vector<std::pair<std::string, std::string>>& params) {
  stages_.emplace_back(type, params);
  return *this;
}

std::string PipelineBuilder::yaml() const {
  // Values are YAML flow text already; keys are plain identifiers. One line per key, so that a
  // validation error points at the parameter it is about.
  std::ostringstream out;
  out << "pipeline:\n  name: \"" << name_ << "\"\n";
  for (const auto& [key, value] : pipeline_) out << "  " << key << ": " << value << "\n";
  out << "stages:\n";
  for (const auto& [type, params] : stages_) {
    out << "  - type: " << type << "\n";
    for (const auto& [key, value] : params) out << "    " << key << ": " << value << "\n";
  }
  return out.str();
}

Pipeline PipelineBuilder::build() const {
  return Pipeline::from_string(yaml(), "<builder:" + name_ + ">");
}

}  // namespace millrace
