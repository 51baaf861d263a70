// `augment`: shorter-side resize, then a crop (center, random or random-resized) and a mirror.
//
// Contract: concurrent; process() touches only its sample. Every random choice comes from a
// counter-based generator keyed on (seed, epoch, sample id, stage name), so a sample's output is
// the same for any thread count, queue size, ordering mode or batch size. A crop is recorded as a
// region of the sample (Sample::geometry.roi, rows and columns of the image) and the mirror as a
// pending flip of its columns (kMirror in geometry.flips; stages/common/image_geometry.hpp):
// normalize applies both while it copies, so a plain center crop costs no pass over the pixels
// here.
//
// Reduced decoding: the stage asks the stage right before it, through the stream's wants
// (StreamWants::window_reader, engine/stream.hpp), to consult it; a `decode` with `reduce: auto`
// then asks, from an image's full size, which window it will read (window(), the same draws from
// the same generator as process(), so the window never depends on whether decode reduced). A
// sample decoded that way carries the window's place in the image (Sample::geometry.source);
// process() then maps the same window into the delivered pixels and resamples from there in one
// pass (a resize followed by a crop becomes one resampling of the window), and resets the record.
// With `interpolation: area` only windows that need no preceding resize are reduced, and only at
// full scale.
//
// `compat: mxnet`: an image smaller than a center or random crop is scaled up to it first, as
// MXNet's default augmenter does (augment::mxnet_fit_steps), instead of being a per-sample error.
// Such an image does not fit the crop in decode_window(), so decode delivers it whole.
//
// Buffers: a resize before the crop is written into storage borrowed from the stage's own pool of
// resized images, and the input image (a decoded image borrowed by `decode`) goes back to its pool
// as soon as the stage has read it. What the stage writes as its output (a random-resized crop, a
// resampled window) goes into the sample's own storage: once that is written, the sample holds no
// borrowed buffer. A plain crop is only a region of its input, which stays borrowed until
// `normalize` has read it. A sample that fails here gives back what it borrowed.
#pragma once

#include <array>
#include <memory>
#include <optional>

#include "engine/pool.hpp"
#include "engine/registry.hpp"
#include "stages/augment/augment_kernel.hpp"
#include "stages/common/compat.hpp"
#include "stages/common/image_geometry.hpp"

namespace millrace {

class AugmentStage final : public TransformStage, public WindowReader {
 public:
  enum class Crop { kNone, kCenter, kRandom, kRandomResized };
  struct Params {
    int resize = 0;
    Crop crop = Crop::kCenter;
    std::array<int, 2> size{0, 0};  // height, width
    double mirror = 0.0;
    std::array<double, 2> scale{0.08, 1.0};
    std::array<double, 2> ratio{3.0 / 4.0, 4.0 / 3.0};
    augment::Interp interpolation = augment::Interp::kLinear;
    std::int64_t seed = -1;
    // A resize makes an image of its own, whose size the file does not bound: a 143-byte PNG of
    // 20000x1 pixels resized to a shorter side of 256 would be 5120000x256. Both limits are
    // checked from the image's size before anything is allocated; past them, a per-sample error.
    std::int64_t max_pixels = 178'956'970;  // as decode's: width x height x 12 below 2^31
    double max_aspect_ratio = 100.0;        // longer side / shorter side, when resizing
    Compat compat = Compat::kNone;
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  AugmentStage(StageContext context, Params params);
  StreamWants want_input(const StreamWants& output) override;
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;
  void prepare() override;
  void process(Sample& sample, RunReporter& reporter) const override;
  // A smaller `resize`, when it resizes before cropping.
  std::vector<CheaperSetting> cheaper_settings() const override;
  std::optional<WindowRequest> window(int width, int height,
                                      const Sample& sample) const noexcept override;
  // Throws SampleError when resizing a width x height image would pass max_pixels or
  // max_aspect_ratio; nothing when the stage does not resize.
  void check_resize(int width, int height) const;
  const Params& params() const { return params_; }
  // The resized images' buffers (its created() is what tests hold against the graph's bound).
  const std::shared_ptr<BufferPool>& buffer_pool() const { return buffers_; }

  // What process() makes of an image of width x height: the window it reads, in full-size
  // coordinates (fractional after a resize), and the output size. `resample` is false for a
  // plain crop. Draws from `rng` exactly what process() draws before the mirror. Throws
  // augment::CropError when the crop does not fit.
  struct Geometry {
    augment::WindowF window;
    int out_width = 0;
    int out_height = 0;
    bool resample = false;
  };
  Geometry geometry(int width, int height, CounterRng& rng) const;

 private:
  void process_whole(Sample& sample, CounterRng& rng) const;
  void process_reduced(Sample& sample, CounterRng& rng) const;

  Params params_;
  std::uint64_t seed_ = 0;
  std::shared_ptr<BufferPool> buffers_ = std::make_shared<BufferPool>();
};

}  // namespace millrace
