// `decode`: encoded bytes -> 8-bit RGB pixels (TurboJPEG for JPEG, libpng for PNG, OpenCV for the
// rest).
//
// Contract: concurrent; process() touches only its sample. A file that does not decode (corrupt,
// truncated, not an image, larger than `max_pixels`) is a per-sample error. A decoder's warning
// (libjpeg's on a damaged JPEG, libpng's on a malformed ancillary chunk) is never printed by the
// library: under `strict` it is the sample's error, otherwise the sample is delivered and the
// warning listed through the run's reporter.
//
// The decoded image is large and needed only until a later stage has read it: it goes into
// storage borrowed from the stage's pool of decoded images (Sample::tensor borrows; see
// engine/item.hpp), and `augment` or `normalize` gives it back once it has written its own
// output. A sample that fails to decode gives its buffer back at once, so a tombstone never holds
// one. The pool holds as many buffers as there were decoded images waiting to be read at once.
//
// `reduce: auto`: the stage right after this one may ask, through the stream's wants
// (StreamWants::window_reader, engine/stream.hpp), to be consulted about the window it will read.
// For each JPEG, once its header is read, decode asks it which window of the image it will read and
// at what size, decodes only that window at the smallest DCT scale that still covers the size, and
// records on the sample what it delivered (Sample::geometry.source: the window's place in the image
// scaled by 1/scale and the image's full size; stages/common/image_geometry.hpp); the reader then
// maps its window into those pixels. Every decode resets the crop (geometry.roi): the pixels it
// delivers are all to be read. With no such reader, `auto` decodes whole images, as `off` does.
//
// `compat: mxnet`: the pixels of OpenCV 3.4's cv::imdecode, which MXNet 1.9.1's ImageRecordIter
// decodes with: CMYK JPEGs follow OpenCV's formula (decode::Options::Cmyk::kOpenCv). The other
// layouts and formats tests/mxnet/mxnet_compat_test.py covers (JPEG subsamplings, progressive,
// grayscale, EXIF orientation; PNG; BMP) already give cv::imdecode's pixels.
#pragma once

#include <memory>

#include "engine/pool.hpp"
#include "engine/registry.hpp"
#include "stages/common/compat.hpp"
#include "stages/common/image_geometry.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace {

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
  StreamWants want_input(const StreamWants& output) override;
  StreamDesc link(const StreamDesc& input, Diagnostics& diagnostics) override;
  void process(Sample& sample, RunReporter& reporter) const override;
  // `reduce: auto` and `dct: fast`, each while it is off.
  std::vector<CheaperSetting> cheaper_settings() const override;
  // The decoded images' buffers (its created() is what tests hold against the graph's bound).
  const std::shared_ptr<BufferPool>& buffer_pool() const { return buffers_; }

  // Makes decode consult `reader` (the stage right after it) for each JPEG's window; returns
  // whether it will (only with `reduce: auto`). The reader must outlive the stage's run.
  bool attach_window_source(const WindowReader* reader);
  const Params& params() const { return params_; }

 private:
  Params params_;
  decode::Options options_;
  const WindowReader* window_source_ = nullptr;
  std::shared_ptr<BufferPool> buffers_ = std::make_shared<BufferPool>();
};

}  // namespace millrace
