// `decode`: encoded bytes -> 8-bit RGB pixels (TurboJPEG for JPEG, OpenCV for the rest).
//
// Contract: concurrent; process() touches only its sample. A file that does not decode (corrupt,
// truncated under `strict`, not an image, larger than `max_pixels`) is a per-sample error.
//
// The decoded image is large and needed only until a later stage has read it: it goes into
// storage borrowed from the stage's pool of decoded images (Sample::tensor borrows; see
// engine/item.hpp), and `augment` or `normalize` gives it back once it has written its own
// output. A sample that fails to decode gives its buffer back at once, so a tombstone never holds
// one. The pool holds as many buffers as there were decoded images waiting to be read at once.
//
// `reduce: auto`: the stage that reads the decoded pixels (the augment right after this stage)
// attaches itself during link() as a DecodeWindowSource. For each JPEG, once its header is read,
// decode asks it which window of the image it will read and at what size, decodes only that
// window at the smallest DCT scale that still covers the size, and records on the sample
// (Sample::decoded) what it delivered; the source then maps its window into those pixels. With
// no such stage attached, `auto` decodes whole images, as `off` does.
//
// `compat: mxnet`: the pixels of OpenCV 3.4's cv::imdecode, which MXNet 1.9.1's ImageRecordIter
// decodes with: CMYK JPEGs follow OpenCV's formula (decode::Options::Cmyk::kOpenCv). The other
// layouts and formats tests/mxnet/mxnet_compat_test.py covers (JPEG subsamplings, progressive,
// grayscale, EXIF orientation; PNG; BMP) already give cv::imdecode's pixels.
#pragma once

#include <memory>
#include <optional>

#include "engine/pool.hpp"
#include "engine/registry.hpp"
#include "stages/common/compat.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace {

// A stage that reads only part of each decoded image and can say which part from the image's
// size alone. Called concurrently, from decode's process(), on decode's threads: it must be a
// pure function of its arguments and the stage's immutable state, and must not throw (nullopt
// lets the whole image be decoded, and the stage then handles the sample as usual).
class DecodeWindowSource {
 public:
  virtual std::optional<decode::WindowRequest> decode_window(
      int width, int height, const Sample& sample) const noexcept = 0;

 protected:
  ~DecodeWindowSource() = default;
};

class DecodeStage final : public TransformStage {
 public:
  enum class Reduce { kOff, kAuto };
  enum class Dct { kAccurate, kFast };
  struct Params {
    bool exif = true;
    bool strict = true;
    std::int64_t max_pixels = decode::Options{}.max_pixels;
    Reduce reduce = Reduce::kOff;
    Dct dct = Dct::kAccurate;
    Compat compat = Compat::kNone;
  };
  static StageInfo info();
  static const Schema<Params>& schema();
  // `compat: mxnet` with a setting that changes the pixels MXNet gives (exif: false, reduce:
  // auto, dct: fast) is a contradiction, reported at that key.
  static void check(const Params& p, const ConfigNode& node, const std::string& where,
                    Diagnostics& d);

  DecodeStage(StageContext context, Params params);
  void process(Sample& sample, RunReporter& reporter) const override;
  // `reduce: auto` and `dct: fast`, each while it is off.
  std::vector<CheaperSetting> cheaper_settings() const override;
  // The decoded images' buffers (its created() is what tests hold against the graph's bound).
  const std::shared_ptr<BufferPool>& buffer_pool() const { return buffers_; }

  // Called from the link() of the stage right after this one. Returns whether decode will consult
  // it (only with `reduce: auto`). The source must outlive the stage's run.
  bool attach_window_source(const DecodeWindowSource* source);
  const Params& params() const { return params_; }

 private:
  Params params_;
  decode::Options options_;
  const DecodeWindowSource* window_source_ = nullptr;
  std::shared_ptr<BufferPool> buffers_ = std::make_shared<BufferPool>();
};

}  // namespace millrace
