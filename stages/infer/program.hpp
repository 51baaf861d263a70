// The executable form of a network for one batch size: oneDNN primitives in execution order, each
// with its complete argument list, and the memory they run in. The builder (builder.hpp) assembles
// a Program step by step; finish() then lays out its memory; execute() runs it.
//
// What it owns: the steps (primitive, arguments, a line for describe()), the tensors between them
// and the arena buffers they live in (tensors whose lifetimes do not overlap share a buffer; a
// step's output never shares with its inputs; the logits live to the end), one scratchpad shared
// by every step, a padded copy of the input for a short last batch, and, for a calibration
// program, the plain float32 copies through which calibration sees each recorded value.
//
// Contract: a Program belongs to one thread at a time (its network's). Everything is allocated by
// finish(); execute() creates nothing and allocates nothing, and binds the caller's input buffer
// as the network input without copying it unless the batch is short. The caller keeps the input
// alive for the duration of execute().
#pragma once

#include <cstddef>
#include <functional>
#include <limits>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stages/infer/network.hpp"

namespace millrace::infer {

// A dense, plain float32 descriptor of `dims` (NCHW for 4-D).
dnnl::memory::desc plain_f32(const dnnl::memory::dims& dims);

// An activation in one form: which tensor holds it, and as what.
struct TensorView {
  int tensor = -1;
  dnnl::memory::desc md;
};

// One primitive run per batch. The builder adds the constant arguments (weights, bias) to `args`
// itself and names the activations through views, which finish() binds to the arenas.
struct Step {
  dnnl::primitive primitive;
  dnnl::memory::desc scratchpad;
  std::vector<std::pair<int, TensorView>> views;
  std::unordered_map<int, dnnl::memory> args;  // complete once finished
  std::string line;
  int observed_value = -1;  // the value whose range calibration records after this step
};

class Program {
 public:
  // The tensor that stands for the caller's input buffer: never in an arena.
  static constexpr int kInputTensor = 0;

  // ---- assembly ----------------------------------------------------------------------------

  // The network input, a whole batch of `batch` samples in `md`; tensor kInputTensor.
  void set_input(const dnnl::memory::desc& md, int batch, const dnnl::engine& engine);
  const dnnl::memory::desc& input_desc() const { return input_md_; }
  // A new tensor of `md`'s size; its lifetime grows with every step bound to it.
  int new_tensor(const dnnl::memory::desc& md);
  // Appends a step running `primitive`; `what` names the op, and the line gets the
  // implementation oneDNN chose. The reference is valid until the next push_step().
  Step& push_step(dnnl::primitive primitive, const dnnl::primitive_desc_base& pd, std::string what);
  int step_count() const { return static_cast<int>(steps_.size()); }
  // `step` reads or writes `view` as argument `arg`.
  void bind_view(Step& step, int arg, const TensorView& view);
  // The last step pushed is the first convolution that reads the network input.
  void mark_first_convolution();
  // The logits: `view`, plain float32 rows of `classes` each, kept to the end of the batch.
  void set_output(const TensorView& view, int classes);
  NetworkStats& stats() { return stats_; }

  // Lays out the arenas and the scratchpad and binds every step's arguments. With `observe`,
  // also prepares what calibration reads after each step that records a value: the value itself
  // when its elements can be scanned in place, else a reorder into a plain float32 copy (always
  // for a value in `per_channel`, which calibration reads channel by channel).
  void finish(const dnnl::engine& engine, bool observe, const std::vector<bool>& per_channel);

  // ---- running -----------------------------------------------------------------------------

  // Sees each recorded value of a batch as plain float32: (value, data, element count).
  using Observer = std::function<void(int, const float*, std::size_t)>;
  // Runs every step on `batch` samples of `input` (at most the program's batch; a shorter one is
  // copied into the padded input first); `observe`, when given, sees each recorded value.
  void execute(dnnl::stream& stream, const void* input, int batch, const Observer& observe);

  int classes() const { return classes_; }
  const float* logits() const { return static_cast<const float*>(output_.get_data_handle()); }
  std::size_t input_sample_bytes() const { return input_sample_bytes_; }
  const NetworkStats& stats() const { return stats_; }
  // The data handle the first convolution read its source from in the last execute().
  const void* first_source_handle() const;
  // One line per step (network.hpp, describe()).
  std::string describe() const;

 private:
  static constexpr int kNever = std::numeric_limits<int>::max();

  struct Tensor {
    std::size_t bytes = 0;
    int first = kNever;
    int last = -1;
    int buffer = -1;
  };
  struct Observation {
    int step = -1;
    int value = -1;
    dnnl::memory source;  // the step's output
    dnnl::memory plain;   // the same values as plain f32 (the source itself when already plain)
    dnnl::reorder to_plain;
    bool needs_reorder = false;
    std::size_t sample_elements = 0;
  };

  void use(int tensor, int step);
  void allocate(const dnnl::engine& engine);
  dnnl::memory bind(const TensorView& v, const dnnl::engine& engine) const;
  void prepare_observations(const dnnl::engine& engine, const std::vector<bool>& per_channel);

  std::vector<Step> steps_;
  std::vector<Tensor> tensors_;
  std::vector<dnnl::memory> buffers_;
  dnnl::memory scratchpad_;
  dnnl::memory::desc input_md_;
  dnnl::memory input_;         // bound to the caller's batch (or padded_input_) in each run
  dnnl::memory padded_input_;  // a whole batch, for a smaller last batch
  int batch_ = 0;
  std::size_t input_sample_bytes_ = 0;
  int first_conv_step_ = -1;
  TensorView output_view_;
  dnnl::memory output_;  // plain f32 logits of the whole batch
  int classes_ = 0;
  NetworkStats stats_;
  std::vector<Observation> observations_;
};

}  // namespace millrace::infer
