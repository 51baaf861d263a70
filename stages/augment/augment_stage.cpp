#include "stages/augment/augment_stage.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <opencv2/core.hpp>
#include <stdexcept>
#include <tuple>

namespace millrace {

namespace {

ImageView view_of(const Tensor& t) {
  ImageView v;
  v.data = t.storage.data();
  v.height = static_cast<int>(t.shape[0]);
  v.width = static_cast<int>(t.shape[1]);
  v.channels = static_cast<int>(t.shape[2]);
  v.stride = static_cast<std::size_t>(v.width) * static_cast<std::size_t>(v.channels);
  return v;
}

}  // namespace

StageInfo AugmentStage::info() {
  return {"augment",
          "shorter-side resize, center / random / random-resized crop, random mirror",
          StageShape::kTransform,
          "samples with an RGB8 HWC tensor",
          "the same, with a crop region and a pending mirror for normalize to apply",
          true,
          true,
          {SampleContent::kPixels}};
}

const Schema<AugmentStage::Params>& AugmentStage::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.integer("resize", &Params::resize,
              "resize first: shorter side to this, longer side = resize * long / short (integer "
              "division, as MXNet); 0: no resize",
              0, 1 << 16);
    s.choice("crop", &Params::crop,
             "center (integer-division offsets), random, random_resized (torchvision "
             "RandomResizedCrop, then resized to size), none",
             {{"center", Crop::kCenter},
              {"random", Crop::kRandom},
              {"random_resized", Crop::kRandomResized},
              {"none", Crop::kNone}});
    s.extent("size", &Params::size, "output [height, width] of the crop", 1, 1 << 16);
    s.number("mirror", &Params::mirror, "probability of a horizontal flip", 0.0, 1.0);
    s.range("scale", &Params::scale, "random_resized: area fraction range", 0.0, 1.0);
    s.range("ratio", &Params::ratio, "random_resized: aspect ratio (w/h) range", 1e-6, 1e6);
    s.choice("interpolation", &Params::interpolation,
             "resampling; linear matches OpenCV's INTER_LINEAR bit for bit",
             {{"linear", augment::Interp::kLinear},
              {"area", augment::Interp::kArea},
              {"cubic", augment::Interp::kCubic},
              {"nearest", augment::Interp::kNearest}});
    s.integer64("seed", &Params::seed, "seed of the random choices; -1 takes pipeline.seed", -1,
                std::numeric_limits<std::int64_t>::max());
    s.integer64("max_pixels", &Params::max_pixels,
                "an image whose resize (before the crop) would hold more pixels is a per-sample "
                "error, refused before any allocation",
                1, std::numeric_limits<std::int32_t>::max());
    s.number("max_aspect_ratio", &Params::max_aspect_ratio,
             "with a resize: an image whose longer side is more than this many times its shorter "
             "side is a per-sample error",
             1.0, 1e9);
    s.choice("compat", &Params::compat,
             "mxnet: as MXNet's ImageRecordIter, an image smaller than a center or random crop is "
             "first scaled up to it (height first, the other side (int)((float)crop / side * "
             "other)) instead of being a per-sample error; none: millrace's own",
             {{"none", Compat::kNone}, {"mxnet", Compat::kMxnet}});
    return s;
  }();
  return schema;
}

void AugmentStage::check(const Params& p, const ConfigNode& node, const std::string& where,
                         Diagnostics& d) {
  if (p.crop != Crop::kNone && p.size[0] == 0) {
    const ConfigNode* crop = node.find("crop");
    d.error(
        crop != nullptr ? crop->where : node.where,
        where + ": a crop needs 'size' ([height, width]); use `crop: none` to keep whole images");
  }
  if (p.scale[1] <= 0) {
    const ConfigNode* n = node.find("scale");
    d.error(n != nullptr ? n->where : node.where, where + ": 'scale' needs a maximum above 0");
  }
  // After a resize the shorter side is `resize`: a crop larger than that on both sides fits no
  // image at all, so every sample would fail.
  const bool fixed_crop = p.crop == Crop::kCenter || p.crop == Crop::kRandom;
  if (fixed_crop && p.resize > 0 && std::min(p.size[0], p.size[1]) > p.resize) {
    const ConfigNode* n = node.find("size");
    d.error(n != nullptr ? n->where : node.where,
            where + ": a " + std::to_string(p.size[0]) + "x" + std::to_string(p.size[1]) +
                " crop does not fit in any image resized to a shorter side of " +
                std::to_string(p.resize) + " (make 'size' at most 'resize')");
  }
}

std::vector<CheaperSetting> AugmentStage::cheaper_settings() const {
  if (params_.resize <= 0) return {};
  return {{"resize (smaller)", "leaves fewer pixels to resample"}};
}

AugmentStage::AugmentStage(StageContext context, Params params)
    : TransformStage(std::move(context)), params_(params) {
  seed_ = params_.seed >= 0 ? static_cast<std::uint64_t>(params_.seed) : this->context().seed;
}

StreamWants AugmentStage::want_input(const StreamWants& output) {
  StreamWants wants = Stage::want_input(output);
  // Nothing to reduce without a resize or a crop, and area interpolation needs the resize to see
  // every source pixel.
  const bool useful = params_.resize > 0 || params_.crop != Crop::kNone;
  const bool area_resize = params_.resize > 0 && params_.interpolation == augment::Interp::kArea;
  if (useful && !area_resize) wants.window_reader = this;
  return wants;
}

StreamDesc AugmentStage::link(const StreamDesc& input, Diagnostics&) {
  StreamDesc out = input;
  if (params_.size[0] != 0) {
    out.layout = Layout::kNHWC;
    out.shape = {params_.size[0], params_.size[1], input.shape[2]};
    out.shape_stage = name();
  }
  return out;
}

void AugmentStage::check_resize(int width, int height) const {
  if (params_.resize <= 0 || width <= 0 || height <= 0) return;
  const std::int64_t longer = std::max(width, height);
  const std::int64_t shorter = std::min(width, height);
  const std::string size = std::to_string(width) + "x" + std::to_string(height);
  if (static_cast<double>(longer) > params_.max_aspect_ratio * static_cast<double>(shorter)) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.6g", params_.max_aspect_ratio);
    throw SampleError("image is " + size + ", a longer side more than max_aspect_ratio " + ratio +
                      " times its shorter side (raise augment's max_aspect_ratio to resize it)");
  }
  // As resize_shorter_size computes it, in 64 bits.
  const std::int64_t out_shorter = params_.resize;
  const std::int64_t out_longer = out_shorter * longer / shorter;
  const std::int64_t pixels = out_shorter * out_longer;
  if (pixels > params_.max_pixels) {
    throw SampleError(
        "image is " + size + ", resized to a shorter side of " + std::to_string(params_.resize) +
        " it would be " + std::to_string(width >= height ? out_longer : out_shorter) + "x" +
        std::to_string(width >= height ? out_shorter : out_longer) + " = " +
        std::to_string(pixels) + " pixels, above max_pixels " + std::to_string(params_.max_pixels) +
        " (raise augment's max_pixels to resize it)");
  }
}

AugmentStage::Geometry AugmentStage::geometry(int width, int height, CounterRng& rng) const {
  int w = width;
  int h = height;
  double fx = 1.0;
  double fy = 1.0;
  if (params_.resize > 0) {
    check_resize(width, height);
    std::tie(w, h) = augment::resize_shorter_size(width, height, params_.resize);
    // cv::resize's own factors: resized pixel u covers [u * fx, (u + 1) * fx) of the original.
    fx = static_cast<double>(width) / w;
    fy = static_cast<double>(height) / h;
  }
  const int crop_h = params_.size[0];
  const int crop_w = params_.size[1];
  Rect r{0, 0, w, h};
  switch (params_.crop) {
    case Crop::kNone:
      break;
    case Crop::kCenter:
      r = augment::center_window(w, h, crop_w, crop_h);
      break;
    case Crop::kRandom:
      r = augment::random_window(w, h, crop_w, crop_h, rng);
      break;
    case Crop::kRandomResized:
      r = augment::random_resized_window(w, h, params_.scale, params_.ratio, rng);
      break;
  }
  Geometry g;
  g.window = {r.x * fx, r.y * fy, r.width * fx, r.height * fy};
  g.out_width = params_.crop == Crop::kRandomResized ? crop_w : r.width;
  g.out_height = params_.crop == Crop::kRandomResized ? crop_h : r.height;
  g.resample = params_.resize > 0 || g.out_width != r.width || g.out_height != r.height;
  return g;
}

std::optional<WindowRequest> AugmentStage::window(int width, int height,
                                                  const Sample& sample) const noexcept {
  try {
    CounterRng rng(seed_, context().stage_key, sample.epoch, sample.id);
    const Geometry g = geometry(width, height, rng);
    WindowRequest request;
    request.x = g.window.x;
    request.y = g.window.y;
    request.width = g.window.width;
    request.height = g.window.height;
    request.out_width = g.out_width;
    request.out_height = g.out_height;
    request.allow_scale = g.resample && params_.interpolation != augment::Interp::kArea;
    return request;
  } catch (...) {
    // A crop that does not fit: decode the whole image and let process() report it.
    return std::nullopt;
  }
}

namespace {

bool whole_pixels(const augment::WindowF& w) {
  return w.x == std::floor(w.x) && w.y == std::floor(w.y) && w.width == std::floor(w.width) &&
         w.height == std::floor(w.height);
}

}  // namespace

void AugmentStage::process_reduced(Sample& sample, CounterRng& rng) const {
  // Read once: from here on the pixels are this stage's crop, not a window of the image.
  const SourceWindow part = sample.geometry.source;
  sample.geometry.source = {};
  const Geometry g =
      geometry(static_cast<int>(part.extent[1]), static_cast<int>(part.extent[0]), rng);
  // Full-size coordinates -> those of the delivered pixels: scaled by 1/scale, then shifted.
  const double s = part.scale;
  const augment::WindowF local{g.window.x / s - static_cast<double>(part.origin[1]),
                               g.window.y / s - static_cast<double>(part.origin[0]),
                               g.window.width / s, g.window.height / s};
  const ImageView src = view_of(sample.tensor);
  if (whole_pixels(local)) {
    const Rect roi{static_cast<int>(local.x), static_cast<int>(local.y),
                   static_cast<int>(local.width), static_cast<int>(local.height)};
    if (roi.x < 0 || roi.y < 0 || roi.width > src.width - roi.x ||
        roi.height > src.height - roi.y) {
      throw std::logic_error("augment: the decoded window does not hold the crop");
    }
    if (!g.resample) {
      sample.geometry.roi = {roi.y, roi.x, roi.height, roi.width};
      return;
    }
    // The output is the stage's own: sized (with headroom) before the kernel writes it.
    sample.scratch.reshape(DType::kUInt8, {g.out_height, g.out_width, 3}, "HWC");
    // At full scale this is the very call the whole-image path makes, on the same pixels.
    augment::resize_window(src, roi, g.out_width, g.out_height, params_.interpolation,
                           sample.scratch.storage);
  } else {
    sample.scratch.reshape(DType::kUInt8, {g.out_height, g.out_width, 3}, "HWC");
    augment::resample_window(src, local, g.out_width, g.out_height, params_.interpolation,
                             sample.scratch.storage);
  }
  std::swap(sample.tensor, sample.scratch);
  sample.scratch.give_back();
  sample.geometry.roi = {0, 0, g.out_height, g.out_width};
}

void AugmentStage::process_whole(Sample& sample, CounterRng& rng) const {
  if (params_.resize > 0) {
    const ImageView src = view_of(sample.tensor);
    check_resize(src.width, src.height);
    const auto [w, h] = augment::resize_shorter_size(src.width, src.height, params_.resize);
    // An intermediate image: borrowed, and given back by whoever reads it last.
    sample.scratch.borrow(buffers_);
    sample.scratch.reshape(DType::kUInt8, {h, w, 3}, "HWC");
    augment::resize_window(src, Rect{0, 0, src.width, src.height}, w, h, params_.interpolation,
                           sample.scratch.storage);
    std::swap(sample.tensor, sample.scratch);
    sample.scratch.give_back();
  }
  const int crop_h = params_.size[0];
  const int crop_w = params_.size[1];
  if (params_.compat == Compat::kMxnet &&
      (params_.crop == Crop::kCenter || params_.crop == Crop::kRandom)) {
    const ImageView small = view_of(sample.tensor);
    const augment::FitSteps steps =
        augment::mxnet_fit_steps(small.width, small.height, crop_w, crop_h);
    for (int i = 0; i < steps.count; ++i) {
      const ImageView from = view_of(sample.tensor);
      const auto [w, h] = steps.size[static_cast<std::size_t>(i)];
      sample.scratch.borrow(buffers_);
      sample.scratch.reshape(DType::kUInt8, {h, w, 3}, "HWC");
      augment::resize_window(from, Rect{0, 0, from.width, from.height}, w, h, params_.interpolation,
                             sample.scratch.storage);
      std::swap(sample.tensor, sample.scratch);
      sample.scratch.give_back();
    }
  }
  const ImageView src = view_of(sample.tensor);
  Rect window{0, 0, src.width, src.height};
  switch (params_.crop) {
    case Crop::kNone:
      break;
    case Crop::kCenter:
      window = augment::center_window(src.width, src.height, crop_w, crop_h);
      break;
    case Crop::kRandom:
      window = augment::random_window(src.width, src.height, crop_w, crop_h, rng);
      break;
    case Crop::kRandomResized: {
      const Rect r =
          augment::random_resized_window(src.width, src.height, params_.scale, params_.ratio, rng);
      sample.scratch.reshape(DType::kUInt8, {crop_h, crop_w, 3}, "HWC");
      augment::resize_window(src, r, crop_w, crop_h, params_.interpolation, sample.scratch.storage);
      std::swap(sample.tensor, sample.scratch);
      sample.scratch.give_back();
      window = Rect{0, 0, crop_w, crop_h};
      break;
    }
  }
  sample.geometry.roi = {window.y, window.x, window.height, window.width};
}

void AugmentStage::prepare() {
  // The engine already runs one sample per worker thread; OpenCV's own pool on top would
  // oversubscribe the cores. This is process-wide OpenCV state.
  cv::setNumThreads(1);
}

void AugmentStage::process(Sample& sample, RunReporter&) const {
  CounterRng rng(seed_, context().stage_key, sample.epoch, sample.id);
  // Outputs go into the scratch tensor's own storage, never into a borrowed buffer.
  sample.scratch.give_back();
  try {
    if (sample.geometry.source.scale > 0) {
      process_reduced(sample, rng);
    } else {
      process_whole(sample, rng);
    }
    if (params_.mirror > 0 && rng.bernoulli(params_.mirror)) sample.geometry.flips ^= kMirror;
  } catch (const augment::CropError& e) {
    sample.tensor.give_back();
    sample.scratch.give_back();
    throw SampleError(e.what());
  } catch (const cv::Exception& e) {
    sample.tensor.give_back();
    sample.scratch.give_back();
    // OpenCV's own buffers: an allocation it could not make is this sample's error.
    if (e.code == cv::Error::StsNoMem) throw SampleError("out of memory: " + e.msg);
    throw;
  } catch (...) {
    sample.tensor.give_back();
    sample.scratch.give_back();
    throw;
  }
}

}  // namespace millrace
