#include "stages/augment/augment_stage.hpp"

#include <opencv2/core.hpp>

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
          true};
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
}

AugmentStage::AugmentStage(StageContext context, Params params)
    : TransformStage(std::move(context)), params_(params) {
  seed_ = params_.seed >= 0 ? static_cast<std::uint64_t>(params_.seed) : this->context().seed;
}

void AugmentStage::prepare() {
  // The engine already runs one sample per worker thread; OpenCV's own pool on top would
  // oversubscribe the cores. This is process-wide OpenCV state.
  cv::setNumThreads(1);
}

void AugmentStage::process(Sample& sample, RunReporter&) const {
  CounterRng rng(seed_, context().stage_key, sample.epoch, sample.id);
  try {
    if (params_.resize > 0) {
      const ImageView src = view_of(sample.tensor);
      const auto [w, h] = augment::resize_shorter_size(src.width, src.height, params_.resize);
      augment::resize_window(src, Rect{0, 0, src.width, src.height}, w, h, params_.interpolation,
                             sample.scratch.storage);
      sample.scratch.reshape(DType::kUInt8, {h, w, 3}, "HWC");
      std::swap(sample.tensor, sample.scratch);
    }
    const ImageView src = view_of(sample.tensor);
    const int crop_h = params_.size[0];
    const int crop_w = params_.size[1];
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
        const Rect r = augment::random_resized_window(src.width, src.height, params_.scale,
                                                      params_.ratio, rng);
        augment::resize_window(src, r, crop_w, crop_h, params_.interpolation,
                               sample.scratch.storage);
        sample.scratch.reshape(DType::kUInt8, {crop_h, crop_w, 3}, "HWC");
        std::swap(sample.tensor, sample.scratch);
        window = Rect{0, 0, crop_w, crop_h};
        break;
      }
    }
    sample.region = {window.y, window.x, window.height, window.width};
    if (params_.mirror > 0 && rng.bernoulli(params_.mirror))
      sample.deferred ^= kFlipLastSpatialAxis;
  } catch (const augment::CropError& e) {
    throw SampleError(e.what());
  }
}

}  // namespace millrace
