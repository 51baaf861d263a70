#include "stages/infer/program.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace millrace::infer {

using dnnl::memory;
using Dt = memory::data_type;
using Tag = memory::format_tag;

namespace {

memory bytes(std::size_t size, const dnnl::engine& engine) {
  return memory(
      memory::desc({static_cast<memory::dim>(std::max<std::size_t>(size, 1))}, Dt::u8, Tag::x),
      engine);
}

// Ranges do not depend on the order of the elements: a layout without padding whose batch
// dimension is outermost (nhwc, or nChw16c with C a multiple of 16) is scanned as it is.
bool samples_first_and_dense(const memory::desc& md) {
  const dnnl_memory_desc_t& d = md.data;
  if (d.format_kind != dnnl_blocked || d.offset0 != 0) return false;
  std::int64_t elements = 1;
  for (int i = 0; i < d.ndims; ++i) {
    if (d.padded_dims[i] != d.dims[i]) return false;
    elements *= d.dims[i];
  }
  return md.get_size() == static_cast<std::size_t>(elements) * sizeof(float) &&
         d.format_desc.blocking.strides[0] == elements / d.dims[0];
}

}  // namespace

memory::desc plain_f32(const memory::dims& dims) {
  memory::dims strides(dims.size(), 1);
  for (int i = static_cast<int>(dims.size()) - 2; i >= 0; --i)
    strides[i] = strides[i + 1] * dims[i + 1];
  return memory::desc(dims, Dt::f32, strides);
}

void Program::set_input(const memory::desc& md, int batch, const dnnl::engine& engine) {
  tensors_.assign(1, Tensor{});  // kInputTensor: the caller's buffer, never an arena
  input_md_ = md;
  input_ = memory(md, engine, DNNL_MEMORY_NONE);
  padded_input_ = memory(md, engine);
  std::memset(padded_input_.get_data_handle(), 0, md.get_size());
  batch_ = batch;
  input_sample_bytes_ = md.get_size() / static_cast<std::size_t>(batch);
}

int Program::new_tensor(const memory::desc& md) {
  Tensor t;
  t.bytes = md.get_size();
  tensors_.push_back(t);
  return static_cast<int>(tensors_.size()) - 1;
}

void Program::use(int tensor, int step) {
  Tensor& t = tensors_[tensor];
  t.first = std::min(t.first, step);
  t.last = std::max(t.last, step);
}

Step& Program::push_step(dnnl::primitive primitive, const dnnl::primitive_desc_base& pd,
                         std::string what) {
  Step s;
  s.primitive = std::move(primitive);
  s.scratchpad = pd.scratchpad_desc();
  s.line = std::move(what) + " [" + pd.impl_info_str() + "]";
  steps_.push_back(std::move(s));
  return steps_.back();
}

void Program::bind_view(Step& step, int arg, const TensorView& view) {
  step.views.emplace_back(arg, view);
  use(view.tensor, static_cast<int>(&step - steps_.data()));
}

void Program::mark_first_convolution() {
  if (first_conv_step_ < 0) first_conv_step_ = step_count() - 1;
}

void Program::set_output(const TensorView& view, int classes) {
  tensors_[view.tensor].last = kNever;
  output_view_ = view;
  classes_ = classes;
}

void Program::finish(const dnnl::engine& engine, bool observe,
                     const std::vector<bool>& per_channel) {
  allocate(engine);
  if (observe) prepare_observations(engine, per_channel);
  stats_.primitives = steps_.size();
}

// The smallest free buffer that fits each tensor in order of first use, else the largest free
// one (which then grows).
void Program::allocate(const dnnl::engine& engine) {
  std::vector<int> order;
  for (int t = 1; t < static_cast<int>(tensors_.size()); ++t) {
    if (tensors_[t].last >= 0) order.push_back(t);
  }
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return tensors_[a].first < tensors_[b].first; });
  std::vector<std::size_t> sizes;
  std::vector<int> busy_until;
  for (int t : order) {
    Tensor& tensor = tensors_[t];
    auto better = [&](int b, int than) {
      const bool fits = sizes[b] >= tensor.bytes;
      const bool than_fits = sizes[than] >= tensor.bytes;
      if (fits != than_fits) return fits;
      return fits ? sizes[b] < sizes[than] : sizes[b] > sizes[than];
    };
    int best = -1;
    for (int b = 0; b < static_cast<int>(sizes.size()); ++b) {
      if (busy_until[b] < tensor.first && (best < 0 || better(b, best))) best = b;
    }
    if (best < 0) {
      sizes.push_back(0);
      busy_until.push_back(-1);
      best = static_cast<int>(sizes.size()) - 1;
    }
    sizes[best] = std::max(sizes[best], tensor.bytes);
    busy_until[best] = tensor.last;
    tensor.buffer = best;
  }
  for (std::size_t size : sizes) buffers_.push_back(bytes(size, engine));
  std::size_t scratch = 0;
  for (const Step& s : steps_) scratch = std::max(scratch, s.scratchpad.get_size());
  scratchpad_ = bytes(scratch, engine);
  for (Step& s : steps_) {
    for (const auto& [arg, v] : s.views) s.args[arg] = bind(v, engine);
    if (s.scratchpad.get_size() > 0) {
      s.args[DNNL_ARG_SCRATCHPAD] = memory(s.scratchpad, engine, scratchpad_.get_data_handle());
    }
  }
  output_ = bind(output_view_, engine);
}

memory Program::bind(const TensorView& v, const dnnl::engine& engine) const {
  if (v.tensor == kInputTensor) {
    if (v.md != input_.get_desc()) {
      throw std::logic_error("infer: the network input is read in a second form");
    }
    return input_;
  }
  const Tensor& t = tensors_[v.tensor];
  return memory(v.md, engine, buffers_[t.buffer].get_data_handle());
}

void Program::prepare_observations(const dnnl::engine& engine,
                                   const std::vector<bool>& per_channel) {
  std::size_t largest = 0;
  for (const Step& s : steps_) {
    if (s.observed_value < 0) continue;
    largest = std::max(largest, plain_f32(s.args.at(DNNL_ARG_DST).get_desc().dims()).get_size());
  }
  memory scratch = bytes(largest, engine);
  for (int i = 0; i < step_count(); ++i) {
    const Step& s = steps_[i];
    if (s.observed_value < 0) continue;
    Observation o;
    o.step = i;
    o.value = s.observed_value;
    o.source = s.args.at(DNNL_ARG_DST);
    const memory::desc plain = plain_f32(o.source.get_desc().dims());
    o.sample_elements = plain.get_size() / sizeof(float) / static_cast<std::size_t>(batch_);
    // Values observed channel by channel are always read in plain NCHW.
    if (o.source.get_desc() == plain ||
        (!per_channel[o.value] && samples_first_and_dense(o.source.get_desc()))) {
      o.plain = o.source;
    } else {
      o.plain = memory(plain, engine, scratch.get_data_handle());
      o.to_plain = dnnl::reorder(o.source, o.plain);
      o.needs_reorder = true;
    }
    observations_.push_back(o);
  }
  buffers_.push_back(scratch);  // keeps the scratch alive with the program
}

void Program::execute(dnnl::stream& stream, const void* input, int batch, const Observer& observe) {
  void* handle = const_cast<void*>(input);  // oneDNN only reads a source
  if (batch < batch_) {
    std::memcpy(padded_input_.get_data_handle(), input,
                input_sample_bytes_ * static_cast<std::size_t>(batch));
    handle = padded_input_.get_data_handle();
  }
  input_.set_data_handle(handle);
  std::size_t next_observation = 0;
  for (int i = 0; i < step_count(); ++i) {
    Step& s = steps_[i];
    s.primitive.execute(stream, s.args);
    if (!observe || next_observation >= observations_.size() ||
        observations_[next_observation].step != i) {
      continue;
    }
    Observation& o = observations_[next_observation++];
    if (o.needs_reorder) o.to_plain.execute(stream, o.source, o.plain);
    stream.wait();
    observe(o.value, static_cast<const float*>(o.plain.get_data_handle()),
            o.sample_elements * static_cast<std::size_t>(batch));
  }
  stream.wait();
}

const void* Program::first_source_handle() const {
  return first_conv_step_ >= 0 ? steps_[first_conv_step_].args.at(DNNL_ARG_SRC).get_data_handle()
                               : nullptr;
}

std::string Program::describe() const {
  std::string out;
  for (const Step& s : steps_) out += s.line + "\n";
  return out;
}

}  // namespace millrace::infer
