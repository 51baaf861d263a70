#include "stages/decode/decode_stage.hpp"

namespace millrace {

namespace {

// Binds a window reader to one sample for the kernel's one question; lives on the stack.
class SampleWindowChooser final : public decode::WindowChooser {
 public:
  SampleWindowChooser(const WindowReader& reader, const Sample& sample)
      : reader_(reader), sample_(sample) {}
  std::optional<WindowRequest> choose(int width, int height) const noexcept override {
    return reader_.window(width, height, sample_);
  }

 private:
  const WindowReader& reader_;
  const Sample& sample_;
};

}  // namespace

StageInfo DecodeStage::info() {
  return {"decode",
          "decodes JPEG (TurboJPEG), PNG (libpng), WebP, BMP and TIFF (OpenCV) to 8-bit RGB",
          StageShape::kTransform,
          "samples with encoded bytes",
          "samples with an RGB8 HWC tensor",
          true,
          true,
          {SampleContent::kEncoded, SampleContent::kPixels}};
}

const Schema<DecodeStage::Params>& DecodeStage::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.boolean("exif", &Params::exif, "apply the EXIF orientation of JPEGs");
    s.boolean("strict", &Params::strict,
              "any decoder warning (a truncated or corrupt JPEG, a malformed ancillary PNG chunk) "
              "makes the sample an error; false: deliver it and list the warning");
    s.integer64("max_pixels", &Params::max_pixels,
                "refuse images with more pixels than this, from the header, before allocating", 1,
                std::numeric_limits<std::int64_t>::max());
    s.choice("reduce", &Params::reduce,
             "auto: for a JPEG, decode only the window the following augment stage will read, at "
             "the smallest DCT scale (1/2, 1/4, 1/8) at which it still covers twice its output "
             "size (whole "
             "images without such a stage, for EXIF-rotated and CMYK files); a JPEG with a restart "
             "grid (`millrace prepare`) decodes only the segments under the window; off: whole "
             "images",
             {{"off", Reduce::kOff}, {"auto", Reduce::kAuto}});
    s.choice("dct", &Params::dct,
             "JPEG inverse DCT and chroma upsampling: accurate (libjpeg's accurate integer IDCT, "
             "triangle-filter upsampling: the pixels PIL and OpenCV give); fast (the fast integer "
             "IDCT and replicated chroma, as tf.data's INTEGER_FAST: faster, about 43 dB from "
             "accurate)",
             {{"accurate", Dct::kAccurate}, {"fast", Dct::kFast}});
    s.choice("compat", &Params::compat,
             "mxnet: the pixels of MXNet's ImageRecordIter (OpenCV 3.4's cv::imdecode): CMYK JPEGs "
             "by OpenCV's formula; excludes exif: false, reduce: auto and dct: fast; none: "
             "millrace's own",
             {{"none", Compat::kNone}, {"mxnet", Compat::kMxnet}});
    return s;
  }();
  return schema;
}

void DecodeStage::check(const Params& p, const ConfigNode& node, const std::string& where,
                        Diagnostics& d) {
  if (p.compat != Compat::kMxnet) return;
  auto contradiction = [&](const char* key, const char* value) {
    const ConfigNode* n = node.find(key);
    d.error(n != nullptr ? n->where : node.where,
            where + ": '" + key + ": " + value +
                "' changes the pixels that `compat: mxnet` reproduces; remove one of them");
  };
  // cv::imdecode (OpenCV 3.4) applies the EXIF orientation, as millrace does.
  if (!p.exif) contradiction("exif", "false");
  if (p.reduce == Reduce::kAuto) contradiction("reduce", "auto");
  if (p.dct == Dct::kFast) contradiction("dct", "fast");
}

DecodeStage::DecodeStage(StageContext context, Params params)
    : TransformStage(std::move(context)), params_(params) {
  options_.exif = params.exif;
  if (params.compat == Compat::kMxnet) options_.cmyk = decode::Options::Cmyk::kOpenCv;
  options_.strict = params.strict;
  options_.max_pixels = params.max_pixels;
  options_.fast_dct = params.dct == Dct::kFast;
}

bool DecodeStage::attach_window_source(const WindowReader* reader) {
  if (params_.reduce != Reduce::kAuto) return false;
  window_source_ = reader;
  return true;
}

StreamWants DecodeStage::want_input(const StreamWants& output) {
  if (output.window_reader != nullptr) attach_window_source(output.window_reader);
  return Stage::want_input(output);
}

StreamDesc DecodeStage::link(const StreamDesc& input, Diagnostics&) {
  StreamDesc out = input;
  out.dtype = DType::kUInt8;
  out.layout = Layout::kNHWC;
  out.shape = {0, 0, 3};  // the size of each image is known only once it is decoded
  out.shape_stage.clear();
  return out;
}

std::vector<CheaperSetting> DecodeStage::cheaper_settings() const {
  std::vector<CheaperSetting> out;
  // Both would change the pixels that compat promises.
  if (params_.compat == Compat::kMxnet) return out;
  if (params_.reduce == Reduce::kOff) {
    out.push_back(
        {"reduce: auto",
         "decodes only the crop window, at a reduced DCT scale when the resize allows it"});
  }
  if (params_.dct == Dct::kAccurate) {
    out.push_back({"dct: fast",
                   "uses the fast integer inverse DCT, 10-20 % less decode time at "
                   "about 43 dB from the accurate decode"});
  }
  return out;
}

void DecodeStage::process(Sample& sample, RunReporter& reporter) const {
  decode::Info info;
  // No stage reads a sample's scratch tensor after the stage that filled it.
  sample.scratch.give_back();
  sample.tensor.borrow(buffers_);
  try {
    if (window_source_ != nullptr) {
      const SampleWindowChooser chooser(*window_source_, sample);
      info = decode::decode(sample.bytes.data(), sample.bytes.size(), options_,
                            sample.tensor.storage, &chooser);
    } else {
      info =
          decode::decode(sample.bytes.data(), sample.bytes.size(), options_, sample.tensor.storage);
    }
  } catch (const decode::DecodeError& e) {
    sample.tensor.give_back();
    throw SampleError(e.what());
  } catch (...) {
    sample.tensor.give_back();
    throw;
  }
  sample.tensor.reshape(DType::kUInt8, {info.height, info.width, 3}, "HWC");
  // The geometry in image terms: dimension 0 is the rows, 1 the columns (decode_stage.hpp).
  sample.geometry.roi = {};
  const decode::Reduction& r = info.reduction;
  sample.geometry.source = {r.scale, {r.y, r.x}, {r.full_height, r.full_width}};
  for (const auto& w : info.warnings) reporter.warn(sample, name(), w);
}

}  // namespace millrace
