// `decode`: encoded bytes -> 8-bit RGB pixels (TurboJPEG for JPEG, OpenCV for the rest).
//
// Contract: concurrent; process() touches only its sample. A file that does not decode (corrupt,
// truncated under `strict`, not an image, larger than `max_pixels`) is a per-sample error.
#pragma once

#include "engine/registry.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace {

class DecodeStage final : public TransformStage {
 public:
  struct Params {
    bool exif = true;
    bool strict = true;
    std::int64_t max_pixels = decode::Options{}.max_pixels;
  };
  static StageInfo info();
  static const Schema<Params>& schema();

  DecodeStage(StageContext context, Params params);
  void process(Sample& sample, RunReporter& reporter) const override;

 private:
  decode::Options options_;
};

}  // namespace millrace
