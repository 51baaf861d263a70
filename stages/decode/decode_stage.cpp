#include "stages/decode/decode_stage.hpp"

namespace millrace {

StageInfo DecodeStage::info() {
  return {"decode",
          "decodes JPEG (TurboJPEG), PNG, WebP, BMP and TIFF (OpenCV) to 8-bit RGB",
          StageShape::kTransform,
          "samples with encoded bytes",
          "samples with an RGB8 HWC tensor",
          true,
          true};
}

const Schema<DecodeStage::Params>& DecodeStage::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.boolean("exif", &Params::exif, "apply the EXIF orientation of JPEGs");
    s.boolean("strict", &Params::strict,
              "any decoder warning (a truncated or corrupt JPEG) makes the sample an error; false: "
              "deliver it and list the warning");
    s.integer64("max_pixels", &Params::max_pixels,
                "refuse images with more pixels than this, from the header, before allocating", 1,
                std::numeric_limits<std::int64_t>::max());
    return s;
  }();
  return schema;
}

DecodeStage::DecodeStage(StageContext context, Params params) : TransformStage(std::move(context)) {
  options_.exif = params.exif;
  options_.strict = params.strict;
  options_.max_pixels = params.max_pixels;
}

void DecodeStage::process(Sample& sample, RunReporter& reporter) const {
  decode::Info info;
  try {
    info =
        decode::decode(sample.bytes.data(), sample.bytes.size(), options_, sample.tensor.storage);
  } catch (const decode::DecodeError& e) {
    throw SampleError(e.what());
  }
  sample.tensor.reshape(DType::kUInt8, {info.height, info.width, 3}, "HWC");
  sample.region = {};
  for (const auto& w : info.warnings) reporter.warn(sample, name(), w);
}

}  // namespace millrace
