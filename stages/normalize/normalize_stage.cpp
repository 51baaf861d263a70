#include "stages/normalize/normalize_stage.hpp"

#include <sys/stat.h>

#include <charconv>
#include <cstring>
#include <fstream>

#include "engine/file_io.hpp"

namespace millrace {

namespace {

normalize::Params kernel_params(const NormalizeStage::Params& p) {
  normalize::Params k;
  k.dtype = p.dtype;
  k.mean = p.mean;
  k.std = p.std;
  k.scale = p.scale;
  k.zero_point = p.zero_point;
  k.bgr = p.order == NormalizeStage::Order::kBgr;
  return k;
}

}  // namespace

std::vector<std::int64_t> read_npy_float32(const std::string& path, std::vector<float>& values) {
  // A FIFO would hang the open, a device never end: only a regular file, whose size bounds what
  // its header may declare.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error(path + ": cannot open");
  if (!S_ISREG(st.st_mode)) {
    throw std::runtime_error(path + ": " + file_kind_name(st.st_mode) + ", not a regular file");
  }
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(path + ": not a .npy file");
  }
  std::uint32_t header_length = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (b[1] << 8U);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (b[1] << 8U) | (b[2] << 16U) | (static_cast<std::uint32_t>(b[3]) << 24U);
  }
  std::string header(header_length, '\0');
  if (!in.read(header.data(), header_length)) throw std::runtime_error(path + ": truncated header");
  if (header.find("'descr': '<f4'") == std::string::npos) {
    throw std::runtime_error(path + ": expected float32 ('<f4') data");
  }
  if (header.find("'fortran_order': False") == std::string::npos) {
    throw std::runtime_error(path + ": expected C-ordered data");
  }
  const auto open = header.find('(', header.find("'shape'"));
  const auto close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) {
    throw std::runtime_error(path + ": no shape in header");
  }
  std::vector<std::int64_t> shape;
  std::int64_t count = 1;
  std::string dims = header.substr(open + 1, close - open - 1);
  std::size_t pos = 0;
  while (pos < dims.size()) {
    const auto comma = dims.find(',', pos);
    const std::string part =
        dims.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    const auto first = part.find_first_not_of(' ');
    if (first != std::string::npos) {
      const auto last = part.find_last_not_of(' ');
      std::int64_t d = -1;
      const auto [p, ec] = std::from_chars(part.data() + first, part.data() + last + 1, d);
      if (ec != std::errc() || p != part.data() + last + 1 || d < 0) {
        throw std::runtime_error(path + ": bad shape in header");
      }
      // The data must be in the file: a header cannot make us allocate more than it holds.
      if (d != 0 && count > static_cast<std::int64_t>(file_bytes / sizeof(float)) / d) {
        throw std::runtime_error(path + ": the header's shape holds more values than the file (" +
                                 std::to_string(file_bytes) + " bytes)");
      }
      shape.push_back(d);
      count *= d;
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  values.resize(static_cast<std::size_t>(count));
  if (!in.read(reinterpret_cast<char*>(values.data()),
               static_cast<std::streamsize>(values.size() * sizeof(float)))) {
    throw std::runtime_error(path + ": truncated data");
  }
  return shape;
}

StageInfo NormalizeStage::info() {
  return {"normalize",
          "mean subtraction to int8 (MXNet-compatible), or (p - mean) / std * scale + zero_point "
          "to int8, uint8 or float32; applies the crop and mirror; NCHW or NHWC",
          StageShape::kTransform,
          "samples with an RGB8 HWC tensor (and a crop region, a pending mirror)",
          "samples with an int8 / uint8 / float32 CHW or HWC tensor and its quantization",
          true,
          false,
          {SampleContent::kPixels, SampleContent::kTensor}};
}

const Schema<NormalizeStage::Params>& NormalizeStage::schema() {
  static const Schema<Params> schema = [] {
    Schema<Params> s;
    s.choice("dtype", &Params::dtype, "output element type",
             {{"int8", DType::kInt8}, {"uint8", DType::kUInt8}, {"float32", DType::kFloat32}});
    s.numbers("mean", &Params::mean,
              "per-channel mean in pixel units, RGB order (1 or 3 numbers); int8 with mean only "
              "is MXNet's mode: pixel - round(mean), saturated",
              {1, 3}, -1e6, 1e6);
    s.numbers("std", &Params::std, "per-channel std in pixel units, RGB order (1 or 3 numbers)",
              {1, 3}, 1e-12, 1e12);
    s.number("scale", &Params::scale, "multiplier after dividing by std (e.g. 127 / max|value|)",
             1e-12, 1e12);
    s.number("zero_point", &Params::zero_point, "added after scaling (integer types: an integer)",
             -1e6, 1e6);
    s.choice("layout", &Params::layout,
             "layout of each sample in the batch; auto: what a following infer stage's first "
             "layer reads (NHWC for oneDNN's int8 convolutions), else NCHW",
             {{"auto", Layout::kAny}, {"NCHW", Layout::kNCHW}, {"NHWC", Layout::kNHWC}});
    s.choice("order", &Params::order, "channel order of the output",
             {{"RGB", Order::kRgb}, {"BGR", Order::kBgr}});
    s.path("mean_image", &Params::mean_image,
           "a per-pixel mean (C,H,W float32 .npy, indexed after crop and mirror), int8 only, "
           "instead of `mean`");
    return s;
  }();
  return schema;
}

void NormalizeStage::check(const Params& p, const ConfigNode& node, const std::string& where,
                           Diagnostics& d) {
  auto at = [&](const char* key) {
    const ConfigNode* n = node.find(key);
    return n != nullptr ? n->where : node.where;
  };
  const bool mean_given = node.find("mean") != nullptr;
  const bool nonzero_mean =
      std::any_of(p.mean.begin(), p.mean.end(), [](double m) { return m != 0.0; });
  if (p.dtype == DType::kUInt8 && nonzero_mean && node.find("zero_point") == nullptr) {
    d.error(at("mean"), where +
                            ": 'mean' with dtype uint8 needs a 'zero_point' (pixels below the "
                            "mean would saturate to 0); use dtype int8 for mean subtraction");
    return;
  }
  if (!p.mean_image.empty()) {
    if (p.dtype != DType::kInt8 || mean_given || !p.std.empty() || node.find("scale") != nullptr ||
        node.find("zero_point") != nullptr) {
      d.error(at("mean_image"), where +
                                    ": 'mean_image' is MXNet's int8 mode: dtype int8 and no "
                                    "mean, std, scale or zero_point");
    }
    return;
  }
  try {
    normalize::Table table(kernel_params(p));
    if (p.dtype == DType::kInt8 && table.quant().mxnet_mode && !nonzero_mean) {
      d.warning(at("dtype"), where +
                                 ": int8 with a mean of 0 saturates every pixel value >= 128 "
                                 "to 127 (set 'mean', e.g. [123.68, 116.779, 103.939])");
    }
  } catch (const std::invalid_argument& e) {
    d.error(node.where, where + ": " + e.what());
  }
}

NormalizeStage::NormalizeStage(StageContext context, Params params)
    : TransformStage(std::move(context)),
      params_(std::move(params)),
      table_(kernel_params(params_)) {
  const auto& info = table_.quant();
  if (params_.dtype != DType::kFloat32) {
    quantization_.unit.assign(info.unit.begin(), info.unit.end());
    quantization_.zero_point = info.zero_point;
  }
  quantization_.mxnet_compatible = info.mxnet_mode || !params_.mean_image.empty();
  if (params_.layout != Layout::kAny) layout_ = params_.layout;
}

StreamWants NormalizeStage::want_input(const StreamWants& output) {
  if (params_.layout == Layout::kAny && output.layout != Layout::kAny) layout_ = output.layout;
  return Stage::want_input(output);
}

StreamDesc NormalizeStage::link(const StreamDesc& input, Diagnostics&) {
  StreamDesc out = input;
  out.dtype = params_.dtype;
  const auto [height, width] = input.spatial();
  out.layout = layout_;
  if (layout_ == Layout::kNCHW) {
    out.shape = {3, height, width};
  } else {
    out.shape = {height, width, 3};
  }
  StreamScaling scaling;
  scaling.stage = name();
  for (std::size_t c = 0; c < 3; ++c) {
    if (!params_.mean.empty()) scaling.mean[c] = params_.mean[params_.mean.size() == 1 ? 0 : c];
  }
  if (!quantization_.unit.empty()) {
    for (std::size_t c = 0; c < 3; ++c) scaling.unit[c] = quantization_.unit[c];
    scaling.zero_point = quantization_.zero_point;
  } else {
    // float32: x = (p - mean) / std * scale + zero_point, so one float unit is std / scale.
    for (std::size_t c = 0; c < 3; ++c) {
      const double s = params_.std.empty() ? 1.0 : params_.std[params_.std.size() == 1 ? 0 : c];
      scaling.unit[c] = static_cast<float>(s / params_.scale);
    }
    scaling.zero_point = static_cast<float>(params_.zero_point);
  }
  scaling.mxnet_compatible = quantization_.mxnet_compatible;
  out.scaling = scaling;
  return out;
}

void NormalizeStage::prepare() {
  if (params_.mean_image.empty()) return;
  mean_image_shape_ = read_npy_float32(params_.mean_image, mean_image_);
  if (mean_image_shape_.size() != 3 || mean_image_shape_[0] != 3) {
    throw std::runtime_error("stage '" + name() + "': mean_image '" + params_.mean_image +
                             "' must have shape (3, H, W)");
  }
}

void NormalizeStage::process(Sample& sample, RunReporter&) const {
  // The output must not land in a borrowed buffer: it waits with the sample for the batch stage.
  sample.scratch.give_back();
  const Tensor& t = sample.tensor;
  ImageView view;
  const std::int64_t full_w = t.shape[1];
  const Region& roi = sample.geometry.roi;
  const Region r = roi.height != 0 ? roi : Region{0, 0, t.shape[0], t.shape[1]};
  view.channels = static_cast<int>(t.shape[2]);
  view.stride = static_cast<std::size_t>(full_w) * static_cast<std::size_t>(view.channels);
  view.data = t.storage.data() + static_cast<std::size_t>(r.y) * view.stride +
              static_cast<std::size_t>(r.x) * static_cast<std::size_t>(view.channels);
  view.height = static_cast<int>(r.height);
  view.width = static_cast<int>(r.width);
  const bool mirror = (sample.geometry.flips & kMirror) != 0;
  const bool chw = layout_ == Layout::kNCHW;
  const DType out = params_.dtype;
  if (chw) {
    sample.scratch.reshape(out, {3, r.height, r.width}, "CHW");
  } else {
    sample.scratch.reshape(out, {r.height, r.width, 3}, "HWC");
  }
  if (!mean_image_.empty()) {
    if (mean_image_shape_[1] != r.height || mean_image_shape_[2] != r.width) {
      sample.tensor.give_back();
      throw SampleError("mean_image is " + std::to_string(mean_image_shape_[1]) + "x" +
                        std::to_string(mean_image_shape_[2]) + " but the crop is " +
                        std::to_string(r.height) + "x" + std::to_string(r.width));
    }
    normalize::apply_mean_image(view, mirror, layout_, mean_image_.data(),
                                params_.order == Order::kBgr,
                                reinterpret_cast<std::int8_t*>(sample.scratch.storage.data()));
  } else {
    table_.apply(view, mirror, layout_, sample.scratch.storage.data());
  }
  std::swap(sample.tensor, sample.scratch);
  sample.scratch.give_back();
  sample.geometry.roi = {};
  sample.geometry.flips &= ~kMirror;
  sample.quantization = &quantization_;
}

}  // namespace millrace
