// A Model compiled to oneDNN primitives, in fp32 or int8, for one batch size.
//
// The public face of the inference engine, and the one header the stage uses. Behind it, each
// part a file with its contract: graph_analysis.hpp and planner.hpp (the planner: the model's
// structure, then every value's type and int8 scales and the folds into the weights), builder.hpp
// (the oneDNN builder: primitive descriptors and one builder per operator) compiling into a
// program.hpp Program (steps, arena memory, execution), and calibrator.hpp (the observers that
// turn fp32 batches into a calibration.hpp table). The Network owns the parts of a batch, their
// programs and the calibration state, and decides when each is built.
//
// Contract: a Network is created, calibrated and run from ONE thread (the infer stage's own
// inference thread): oneDNN here runs on OpenMP, whose thread team belongs to the calling
// thread. Primitives are created once (at construction for fp32, at finalize_calibration() or
// load_calibration() for int8); run() creates nothing and allocates nothing. The input is the
// batch buffer as the loader wrote it (see InputFormat); on the int8 fast path it is handed to the
// first convolution as its source memory, with no quantize or reorder pass.
//
// Threads: every call sets the calling thread's OpenMP team size to `threads`
// (omp_set_num_threads), so oneDNN uses exactly that many threads for this Network. How run()
// uses them is NetworkOptions::parallel: by default the batch is cut into `threads` contiguous
// parts and each OpenMP thread runs its part through the whole network on single-threaded
// primitives (one fork and join per batch); with kLayers every primitive is split across all
// threads by oneDNN (a fork and join per primitive, some 60 per ResNet-50 batch). libgomp
// keeps its team spinning after each parallel region unless told otherwise through the
// environment before the process starts (libgomp reads it once, when loaded): millrace expects
// GOMP_SPINCOUNT=1000 (a spin of tens of microseconds, then a sleep), so that idle oneDNN threads
// give the cores back to TBB's workers between batches without paying a wake-up system call for
// every one of a kernel's short parallel regions (docs/ARCHITECTURE.md, Threads).
//
// Quantization (int8): weights s8 per output channel (scale 127 / max|w|); activations per
// channel where a convolution feeds only convolutions (NetworkOptions::channel_ranges), per
// tensor elsewhere, u8 after a ReLU (or a Clip whose lower bound is >= 0), s8 otherwise, with
// ranges from calibration; conv + bias + activation (+ the residual Add, as a sum post-op) run as
// one primitive; the layer that produces the logits writes f32. With s8 / u8 input the loader's
// bytes are the first convolution's source at scale 1, unit / model_std folded into its weights
// per input channel and a zero point passed to oneDNN as the source zero point (so that the
// convolution's zero padding means a real 0). An s8 byte of -128 is used as it is: real value
// -128 * unit, one unit below the -127 that MXNet documented as the int8 floor; nothing clamps
// it. float32 input (the baseline) is quantized to s8 by a reorder with a calibrated scale.
// Ownership: the Network copies what it needs from the Model; the caller owns the input batch
// and the logits buffer and keeps them alive for the duration of a call.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/layout.hpp"
#include "stages/infer/model.hpp"

namespace millrace::infer {

enum class Precision { kFp32, kInt8 };
// How calibration turns what it saw into a value's range: all of it (kMinMax), the threshold
// that keeps the quantized histogram closest in KL divergence (kEntropy), or the one with the
// least mean squared quantization error, rounding and clipping together (kMse).
enum class CalibrationMode { kMinMax, kEntropy, kMse };
// How run() spreads a batch over the threads (see the contract above). kSamples gives each thread
// its own samples and primitives built for one thread: no synchronisation between layers, and
// each core keeps its own part's activations in its cache; the same total batch and thread
// count, and the same per-sample results. kLayers is oneDNN's own threading of each primitive.
enum class Parallelism { kSamples, kLayers };
struct CalibrationTable;  // calibration.hpp

// How the loader's batch relates to what the model was trained on, per channel c:
//   loader: pixel_c - loader_mean_c = (q - zero_point) * unit_c      (int8-contract.md)
//   model:  x_c = (pixel_c - model_mean_c) / model_std_c
// The stage checks loader_mean == model_mean (to rounding) before building a Network, so
//   x_c = (q - zero_point) * unit_c / model_std_c,
// and unit_c / model_std_c is folded into the first convolution's weights per input channel.
// Without a model `input` spec, model_std is 1 (the model sees the loader's real values).
// The element type and layout are the project's own (engine/layout.hpp): int8 (s8), uint8 (u8) or
// float32, NCHW or NHWC (never kAny: the Network refuses it).
struct InputFormat {
  DType type = DType::kInt8;
  Layout layout = Layout::kNHWC;
  std::array<float, 3> unit{1.0F, 1.0F, 1.0F};
  float zero_point = 0.0F;
  std::array<float, 3> model_std{1.0F, 1.0F, 1.0F};
  // The loader's mean, in pixel units. The arithmetic does not use it (the stage has checked it
  // against the model's), but the activations, and so a calibration table, depend on it.
  std::array<float, 3> mean{0.0F, 0.0F, 0.0F};
};

struct NetworkOptions {
  Precision precision = Precision::kInt8;
  InputFormat input;
  int batch = 32;
  int threads = 2;  // OpenMP threads of the calling thread's team
  // kSamples with min(threads, batch) parts; 1 thread or a batch of 1 runs as kLayers would.
  Parallelism parallel = Parallelism::kSamples;
  CalibrationMode calibration = CalibrationMode::kMinMax;
  // int8 only: 3x3, stride-1, undilated, ungrouped convolutions with at least
  // kWinogradMinChannels input channels run oneDNN's int8 Winograd kernel where it accepts the
  // shape (attributes included), direct convolution otherwise. Winograd does fewer
  // multiplications for the same result up to rounding (it costs some accuracy); it can pay on a
  // CPU whose direct int8 kernel is AVX-512 VNNI, but where oneDNN's direct kernel runs on AMX
  // tiles it is 1.6-2x slower than direct (docs/PERFORMANCE.md), hence off unless asked for.
  // fp32 always runs direct: it is the reference.
  bool winograd = false;
  // int8 only: a value that a convolution writes for convolutions alone is quantized with a scale
  // per channel (from the calibration table's per-channel limits), folded into the producer's
  // output scales and the readers' weights, so it costs nothing at run time; the values' ranges
  // differ by 100x between channels in networks like MobileNetV2. Off: one scale per value.
  bool channel_ranges = true;
};

inline constexpr std::int64_t kWinogradMinChannels = 128;

struct NetworkStats {
  int input_reorders_per_batch = 0;  // 0 on the int8 fast path
  int reorders_per_batch = 0;        // every reorder primitive run per batch
  std::size_t primitives = 0;        // primitives run per batch, reorders included
  int fused_adds = 0;                // residual Adds computed as a sum post-op of a convolution
  int winograd_convolutions = 0;     // convolutions that run the Winograd kernel
};

class Network {
 public:
  Network(const Model& model, NetworkOptions options);
  ~Network();
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  // Checks the model (ModelError) and the input format (std::invalid_argument); an fp32
  // network's primitives are created here.

  // int8: true until calibrated (observe + finalize, or load_calibration).
  bool needs_calibration() const;
  // int8 calibration: runs the batch in fp32 (the same graph, the same folding of the input) and
  // records the range of every value (min/max, and a histogram for kEntropy and kMse).
  // std::logic_error on an fp32 network or one already calibrated.
  void observe(const void* input, int batch);
  // Turns the ranges into the table and builds the int8 primitives; std::logic_error before any
  // observe().
  void finalize_calibration();
  // The calibration table (per-value ranges and the mode), as JSON (calibration.hpp); load builds
  // the primitives, which then compute exactly what the calibrated network computed. A table
  // that cannot be read or lacks a range the network needs throws CalibrationError and leaves
  // the network uncalibrated.
  void save_calibration(const std::string& path) const;
  void load_calibration(const std::string& path);
  // The same for a table already read (`source` names where it came from, for errors).
  void load_calibration(CalibrationTable table, const std::string& source);

  // Runs one batch (batch <= options.batch; a smaller last batch is copied into a padded buffer
  // first) and writes batch x classes() float32 logits (the outputs before any softmax). With
  // kSamples, part k of the batch is the samples from parts() offset on; a short batch leaves the
  // last parts with fewer samples or none.
  // std::logic_error while the int8 network needs calibration.
  void run(const void* input, int batch, float* logits);

  int classes() const;
  // The number of parts run() cuts a batch into (1 with kLayers).
  int parts() const;
  // The source layout the first primitive prefers for this input type (so that the loader can
  // write batches in it and no reorder runs).
  Layout preferred_layout() const;
  NetworkStats stats() const;
  // The data handle of the source memory of the first convolution that reads the network input,
  // in the last run() (nullptr before any): equals the input pointer on the int8 fast path
  // (tests prove no copy happened); a reorder's buffer when the layout or type had to change.
  const void* last_source_handle() const;
  // One line per primitive run per batch, in order: its kind, oneDNN implementation and the op
  // it computes (for logs and for checking that no reference kernel was chosen). Empty until
  // the primitives exist.
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace millrace::infer
