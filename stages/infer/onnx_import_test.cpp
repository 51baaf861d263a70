#include "stages/infer/onnx_import.hpp"

#include "tests/support/temp_dir.hpp"

#ifndef ONNX_ML
#define ONNX_ML 1
#endif
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

namespace millrace::infer {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<std::int64_t>;

const fs::path kModels = fs::path(MILLRACE_TEST_DATA_DIR) / "models";

// ---------------------------------------------------------------------------------------------
// Helpers: temporary files, building ModelProtos, reading .npy files.

using testing::TempDir;

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void set_int(onnx::NodeProto& node, const std::string& name, std::int64_t value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_INT);
  a->set_i(value);
}

void set_float(onnx::NodeProto& node, const std::string& name, float value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_FLOAT);
  a->set_f(value);
}

void set_string(onnx::NodeProto& node, const std::string& name, const std::string& value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_STRING);
  a->set_s(value);
}

void set_ints(onnx::NodeProto& node, const std::string& name, const Shape& values) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_INTS);
  for (auto v : values) a->add_ints(v);
}

std::int64_t count_of(const Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// Deterministic, varied weights: a small linear congruential sequence in [-1, 1).
std::vector<float> pattern(std::int64_t count, std::uint32_t seed) {
  std::vector<float> values(static_cast<std::size_t>(count));
  std::uint32_t state = seed * 2654435761U + 12345U;
  for (auto& v : values) {
    state = state * 1664525U + 1013904223U;
    v = static_cast<float>(state >> 8) / static_cast<float>(1U << 23) - 1.0F;
  }
  return values;
}

// Small ONNX graphs written by hand, so that each test states exactly the construct it checks.
class ModelBuilder {
 public:
  explicit ModelBuilder(std::int64_t opset = 13) {
    proto_.set_ir_version(7);
    proto_.set_producer_name("millrace-test");
    auto* op = proto_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    proto_.mutable_graph()->set_name("test");
  }
  onnx::GraphProto& graph() { return *proto_.mutable_graph(); }
  onnx::ModelProto& proto() { return proto_; }

  // dims: -1 is the symbolic batch dimension.
  ModelBuilder& input(const std::string& name, const Shape& dims,
                      int type = onnx::TensorProto_DataType_FLOAT) {
    auto* in = graph().add_input();
    in->set_name(name);
    auto* tensor = in->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(type);
    auto* shape = tensor->mutable_shape();
    for (auto d : dims) {
      auto* dim = shape->add_dim();
      if (d < 0) {
        dim->set_dim_param("batch");
      } else {
        dim->set_dim_value(d);
      }
    }
    return *this;
  }
  ModelBuilder& output(const std::string& name) {
    auto* out = graph().add_output();
    out->set_name(name);
    out->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto_DataType_FLOAT);
    return *this;
  }
  onnx::TensorProto& weight(const std::string& name, const Shape& shape,
                            std::vector<float> values = {}) {
    if (values.empty()) values = pattern(count_of(shape), static_cast<std::uint32_t>(name.size()));
    auto* t = graph().add_initializer();
    fill(*t, name, shape, values);
    return *t;
  }
  ModelBuilder& ints(const std::string& name, const Shape& values) {
    auto* t = graph().add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto_DataType_INT64);
    t->add_dims(static_cast<std::int64_t>(values.size()));
    for (auto v : values) t->add_int64_data(v);
    return *this;
  }
  onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs, const std::string& name = "") {
    auto* n = graph().add_node();
    n->set_op_type(op);
    n->set_name(name.empty() && !outputs.empty() ? outputs[0] + "_node" : name);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return *n;
  }
  std::string write(const TempDir& dir, const std::string& file = "model.onnx") const {
    const fs::path path = dir / file;
    std::string bytes;
    EXPECT_TRUE(proto_.SerializeToString(&bytes));
    write_file(path, bytes);
    return path.string();
  }

  static void fill(onnx::TensorProto& t, const std::string& name, const Shape& shape,
                   const std::vector<float>& values) {
    t.set_name(name);
    t.set_data_type(onnx::TensorProto_DataType_FLOAT);
    for (auto d : shape) t.add_dims(d);
    t.set_raw_data(
        std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float)));
  }

 private:
  onnx::ModelProto proto_;
};

std::string import_error(const std::string& path) {
  try {
    import_onnx(path);
  } catch (const ModelError& e) {
    return e.what();
  }
  return "(no error)";
}

Model import_built(const ModelBuilder& builder) {
  TempDir dir;
  return import_onnx(builder.write(dir));
}

std::string built_error(const ModelBuilder& builder) {
  TempDir dir;
  const std::string path = builder.write(dir);
  std::string message = import_error(path);
  // Every message starts with the model's path.
  EXPECT_EQ(message.rfind(path + ": ", 0), 0U) << message;
  return message;
}

onnx::ModelProto load_proto(const fs::path& path) {
  onnx::ModelProto proto;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(proto.ParseFromIstream(&in)) << path;
  return proto;
}

std::vector<float> initializer(const onnx::ModelProto& proto, const std::string& name) {
  for (const auto& t : proto.graph().initializer()) {
    if (t.name() != name) continue;
    EXPECT_EQ(t.data_type(), onnx::TensorProto_DataType_FLOAT) << name;
    if (t.has_raw_data()) {
      std::vector<float> values(t.raw_data().size() / sizeof(float));
      std::memcpy(values.data(), t.raw_data().data(), t.raw_data().size());
      return values;
    }
    return {t.float_data().begin(), t.float_data().end()};
  }
  ADD_FAILURE() << "no initializer " << name;
  return {};
}

float attribute_float(const onnx::NodeProto& node, const std::string& name, float fallback) {
  for (const auto& a : node.attribute()) {
    if (a.name() == name) return a.f();
  }
  return fallback;
}

struct NpyArray {
  Shape shape;
  std::vector<float> data;
};

// A little-endian float32, C-order .npy file (format 1.0 or 2.0), as numpy.save writes it.
NpyArray read_npy(const fs::path& path) {
  const std::string bytes = read_file(path);
  NpyArray array;
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    ADD_FAILURE() << path << ": not a .npy file";
    return array;
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  std::size_t header_len = 0;
  std::size_t offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    offset = 10;
  } else {
    header_len = 0;
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  }
  const std::string header = bytes.substr(offset, header_len);
  EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
  const auto open = header.find('(', header.find("'shape'"));
  const auto close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string item;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') != std::string::npos) array.shape.push_back(std::stoll(item));
  }
  const std::size_t count = static_cast<std::size_t>(count_of(array.shape));
  const std::size_t data_offset = offset + header_len;
  EXPECT_EQ(bytes.size() - data_offset, count * sizeof(float));
  array.data.resize(count);
  std::memcpy(array.data.data(), bytes.data() + data_offset,
              std::min(count * sizeof(float), bytes.size() - data_offset));
  return array;
}

// ---------------------------------------------------------------------------------------------
// A deliberately naive fp32 interpreter of the Model IR (batch 1, double accumulation): it gives
// each field of an Op its documented meaning, so running it against PyTorch's logits checks the
// lowering (folding, fusion, pads, ceil_mode, count_include_pad) end to end.

float activate(const Op& op, double v) {
  if (op.activation == Activation::kRelu) return static_cast<float>(std::max(v, 0.0));
  if (op.activation == Activation::kClip) {
    return static_cast<float>(std::clamp(v, double{op.clip_min}, double{op.clip_max}));
  }
  return static_cast<float>(v);
}

std::vector<float> reference_run(const Model& model, const float* input) {
  std::vector<std::vector<float>> values(model.value_shapes.size());
  values[model.input] =
      std::vector<float>(input, input + count_of(model.value_shapes[model.input]));
  for (const Op& op : model.ops) {
    const Shape& is = model.value_shapes[op.inputs[0]];
    const Shape& os = model.value_shapes[op.output];
    const std::vector<float>& x = values[op.inputs[0]];
    std::vector<float> y(static_cast<std::size_t>(count_of(os)));
    switch (op.kind) {
      case OpKind::kConv: {
        const std::int64_t ci = is[1], h = is[2], w = is[3], co = os[1], oh = os[2], ow = os[3];
        const std::int64_t cig = ci / op.groups, cog = co / op.groups;
        for (std::int64_t o = 0; o < co; ++o) {
          const std::int64_t g = o / cog;
          for (std::int64_t r = 0; r < oh; ++r) {
            for (std::int64_t c = 0; c < ow; ++c) {
              double sum = op.bias.data.empty() ? 0.0 : op.bias.data[o];
              for (std::int64_t i = 0; i < cig; ++i) {
                for (std::int64_t kr = 0; kr < op.kernel[0]; ++kr) {
                  for (std::int64_t kc = 0; kc < op.kernel[1]; ++kc) {
                    const std::int64_t yr = r * op.stride[0] - op.pads[0] + kr * op.dilation[0];
                    const std::int64_t xc = c * op.stride[1] - op.pads[1] + kc * op.dilation[1];
                    if (yr < 0 || yr >= h || xc < 0 || xc >= w) continue;
                    sum += double{x[((g * cig + i) * h + yr) * w + xc]} *
                           op.weight.data[((o * cig + i) * op.kernel[0] + kr) * op.kernel[1] + kc];
                  }
                }
              }
              y[(o * oh + r) * ow + c] = activate(op, sum);
            }
          }
        }
        break;
      }
      case OpKind::kMaxPool:
      case OpKind::kAvgPool: {
        const std::int64_t ch = is[1], h = is[2], w = is[3], oh = os[2], ow = os[3];
        for (std::int64_t k = 0; k < ch; ++k) {
          for (std::int64_t r = 0; r < oh; ++r) {
            for (std::int64_t c = 0; c < ow; ++c) {
              const std::int64_t r0 = r * op.stride[0] - op.pads[0];
              const std::int64_t c0 = c * op.stride[1] - op.pads[1];
              double best = -std::numeric_limits<double>::infinity(), sum = 0;
              int valid = 0;
              for (std::int64_t kr = 0; kr < op.kernel[0]; ++kr) {
                for (std::int64_t kc = 0; kc < op.kernel[1]; ++kc) {
                  const std::int64_t yr = r0 + kr * op.dilation[0];
                  const std::int64_t xc = c0 + kc * op.dilation[1];
                  if (yr < 0 || yr >= h || xc < 0 || xc >= w) continue;
                  const double v = x[(k * h + yr) * w + xc];
                  best = std::max(best, v);
                  sum += v;
                  ++valid;
                }
              }
              // count_include_pad counts the window inside the padded input, not past its end.
              const std::int64_t rows = std::min(r0 + op.kernel[0], h + op.pads[2]) - r0;
              const std::int64_t cols = std::min(c0 + op.kernel[1], w + op.pads[3]) - c0;
              const double divisor =
                  op.count_include_pad ? static_cast<double>(rows * cols) : valid;
              y[(k * oh + r) * ow + c] =
                  static_cast<float>(op.kind == OpKind::kMaxPool ? best : sum / divisor);
            }
          }
        }
        break;
      }
      case OpKind::kGlobalAvgPool: {
        const std::int64_t plane = is[2] * is[3];
        for (std::int64_t k = 0; k < is[1]; ++k) {
          double sum = 0;
          for (std::int64_t i = 0; i < plane; ++i) sum += x[k * plane + i];
          y[k] = static_cast<float>(sum / plane);
        }
        break;
      }
      case OpKind::kAdd: {
        const std::vector<float>& b = values[op.inputs[1]];
        for (std::size_t i = 0; i < y.size(); ++i) y[i] = activate(op, double{x[i]} + b[i]);
        break;
      }
      case OpKind::kRelu:
        for (std::size_t i = 0; i < y.size(); ++i) y[i] = std::max(x[i], 0.0F);
        break;
      case OpKind::kClip:
        for (std::size_t i = 0; i < y.size(); ++i)
          y[i] = std::clamp(x[i], op.clip_min, op.clip_max);
        break;
      case OpKind::kFlatten:
        y = x;
        break;
      case OpKind::kGemm: {
        const std::int64_t k = op.weight.shape[1];
        for (std::int64_t o = 0; o < op.weight.shape[0]; ++o) {
          double sum = op.bias.data.empty() ? 0.0 : op.bias.data[o];
          for (std::int64_t i = 0; i < k; ++i) sum += double{x[i]} * op.weight.data[o * k + i];
          y[o] = activate(op, sum);
        }
        break;
      }
      case OpKind::kConcat: {
        std::size_t at = 0;
        for (int in : op.inputs) {
          std::copy(values[in].begin(), values[in].end(), y.begin() + at);
          at += values[in].size();
        }
        break;
      }
    }
    values[op.output] = std::move(y);
  }
  return values[model.output];
}

// ---------------------------------------------------------------------------------------------
// tiny.onnx: conv 3x3 s2 + BN + ReLU, depthwise 3x3 + BN + ReLU6, a residual block (conv + BN +
// ReLU, conv (with bias) + BN, Add, ReLU), maxpool 3 s2 p1, avgpool 3 s2 ceil_mode, global
// average pool, flatten, Linear(16, 10), Softmax (bench/models/export.py).

class TinyModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new Model(import_onnx((kModels / "tiny.onnx").string()));
    proto_ = new onnx::ModelProto(load_proto(kModels / "tiny.onnx"));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete proto_;
  }
  static const onnx::NodeProto& onnx_node(const std::string& op_type, int occurrence) {
    for (const auto& n : proto_->graph().node()) {
      if (n.op_type() == op_type && occurrence-- == 0) return n;
    }
    throw std::runtime_error("tiny.onnx has no such node");
  }
  static Model* model_;
  static onnx::ModelProto* proto_;
};
Model* TinyModel::model_ = nullptr;
onnx::ModelProto* TinyModel::proto_ = nullptr;

TEST_F(TinyModel, OpsAndFusedActivations) {
  const Model& m = *model_;
  const std::vector<OpKind> kinds = {
      OpKind::kConv,    OpKind::kConv,    OpKind::kConv,          OpKind::kConv,    OpKind::kAdd,
      OpKind::kMaxPool, OpKind::kAvgPool, OpKind::kGlobalAvgPool, OpKind::kFlatten, OpKind::kGemm};
  ASSERT_EQ(m.ops.size(), kinds.size());
  for (std::size_t i = 0; i < kinds.size(); ++i) EXPECT_EQ(m.ops[i].kind, kinds[i]) << i;

  const std::vector<Activation> activations = {
      Activation::kRelu, Activation::kClip, Activation::kRelu, Activation::kNone,
      Activation::kRelu, Activation::kNone, Activation::kNone, Activation::kNone,
      Activation::kNone, Activation::kNone};
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    EXPECT_EQ(m.ops[i].activation, activations[i]) << m.ops[i].name;
  }
  // ReLU6 is Clip(0, 6).
  EXPECT_EQ(m.ops[1].clip_min, 0.0F);
  EXPECT_EQ(m.ops[1].clip_max, 6.0F);

  // Ops keep the ONNX node names; the fused nodes' names are the producers'.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(m.ops[i].name, onnx_node("Conv", i).name());
  EXPECT_EQ(m.ops[4].name, onnx_node("Add", 0).name());
  EXPECT_EQ(m.ops[9].name, onnx_node("Gemm", 0).name());
}

TEST_F(TinyModel, WiringAndAttributes) {
  const Model& m = *model_;
  ASSERT_EQ(m.ops.size(), 10U);
  EXPECT_EQ(m.input, 0);
  EXPECT_EQ(m.input_name, "input");
  for (std::size_t i = 0; i < m.ops.size(); ++i) {
    EXPECT_EQ(m.ops[i].output, static_cast<int>(i) + 1);
    if (m.ops[i].kind != OpKind::kAdd) {
      EXPECT_EQ(m.ops[i].inputs, std::vector<int>{static_cast<int>(i)});
    }
  }
  // The residual add joins the depthwise block's output and the second residual conv's.
  EXPECT_EQ(m.ops[4].inputs, (std::vector<int>{m.ops[1].output, m.ops[3].output}));

  const Op& stem = m.ops[0];
  EXPECT_EQ(stem.kernel, (std::array<int, 2>{3, 3}));
  EXPECT_EQ(stem.stride, (std::array<int, 2>{2, 2}));
  EXPECT_EQ(stem.pads, (std::array<int, 4>{1, 1, 1, 1}));
  EXPECT_EQ(stem.groups, 1);
  EXPECT_EQ(stem.weight.shape, (Shape{16, 3, 3, 3}));
  EXPECT_EQ(m.ops[1].groups, 16);
  EXPECT_EQ(m.ops[1].weight.shape, (Shape{16, 1, 3, 3}));

  const Op& maxpool = m.ops[5];
  EXPECT_EQ(maxpool.kernel, (std::array<int, 2>{3, 3}));
  EXPECT_EQ(maxpool.stride, (std::array<int, 2>{2, 2}));
  EXPECT_EQ(maxpool.pads, (std::array<int, 4>{1, 1, 1, 1}));
  EXPECT_FALSE(maxpool.ceil_mode);
  const Op& avgpool = m.ops[6];
  EXPECT_TRUE(avgpool.ceil_mode);
  EXPECT_FALSE(avgpool.count_include_pad);
  EXPECT_EQ(avgpool.pads, (std::array<int, 4>{0, 0, 0, 0}));
}

TEST_F(TinyModel, ShapesAtBatchOne) {
  const Model& m = *model_;
  EXPECT_EQ(m.input_shape, (std::array<std::int64_t, 4>{1, 3, 32, 32}));
  const std::vector<Shape> expected = {{1, 3, 32, 32},  {1, 16, 16, 16}, {1, 16, 16, 16},
                                       {1, 16, 16, 16}, {1, 16, 16, 16}, {1, 16, 16, 16},
                                       {1, 16, 8, 8},   {1, 16, 4, 4},  // 8 -> ceil(5/2)+1
                                       {1, 16, 1, 1},   {1, 16},         {1, 10}};
  EXPECT_EQ(m.value_shapes, expected);
  EXPECT_EQ(m.value_count(), 11);
}

TEST_F(TinyModel, OutputIsTheLogitsBeforeSoftmax) {
  const Model& m = *model_;
  EXPECT_TRUE(m.ends_with_softmax);
  EXPECT_EQ(m.output, m.ops.back().output);
  EXPECT_EQ(m.ops.back().kind, OpKind::kGemm);
  EXPECT_EQ(m.value_shapes[m.output], (Shape{1, 10}));
  EXPECT_EQ(m.path, (kModels / "tiny.onnx").string());
}

// w' = w * gamma / sqrt(var + eps) per output channel; b' = (b - mean) * gamma / sqrt(var + eps)
// + beta, computed here from the ONNX initializers.
TEST_F(TinyModel, BatchNormIsFoldedIntoTheConvolutions) {
  const Model& m = *model_;
  for (int i = 0; i < 4; ++i) {
    const onnx::NodeProto& conv = onnx_node("Conv", i);
    const onnx::NodeProto& bn = onnx_node("BatchNormalization", i);
    ASSERT_EQ(bn.input(0), conv.output(0));
    const std::vector<float> w = initializer(*proto_, conv.input(1));
    const std::vector<float> gamma = initializer(*proto_, bn.input(1));
    const std::vector<float> beta = initializer(*proto_, bn.input(2));
    const std::vector<float> mean = initializer(*proto_, bn.input(3));
    const std::vector<float> var = initializer(*proto_, bn.input(4));
    std::vector<float> b(gamma.size(), 0.0F);
    if (conv.input_size() > 2) b = initializer(*proto_, conv.input(2));
    const double eps = attribute_float(bn, "epsilon", 1e-5F);

    const Op& op = m.ops[i];
    ASSERT_EQ(op.weight.data.size(), w.size());
    ASSERT_EQ(op.bias.shape, (Shape{static_cast<std::int64_t>(gamma.size())}));
    const std::size_t per_channel = w.size() / gamma.size();
    double worst = 0;
    for (std::size_t o = 0; o < gamma.size(); ++o) {
      const double factor = gamma[o] / std::sqrt(double{var[o]} + eps);
      for (std::size_t k = 0; k < per_channel; ++k) {
        const double want = w[o * per_channel + k] * factor;
        worst = std::max(worst, std::abs(op.weight.data[o * per_channel + k] - want) /
                                    std::max(std::abs(want), 1e-3));
      }
      const double want_bias = (b[o] - mean[o]) * factor + beta[o];
      EXPECT_NEAR(op.bias.data[o], want_bias, 1e-5 * std::max(1.0, std::abs(want_bias)))
          << op.name << " channel " << o;
    }
    EXPECT_LT(worst, 1e-6) << op.name;
    // The folding changed something: the fitted statistics are not the identity.
    EXPECT_NE(op.weight.data, w) << op.name;
  }
}

TEST_F(TinyModel, LinearLayerKeepsItsWeights) {
  const Op& fc = model_->ops.back();
  const onnx::NodeProto& gemm = onnx_node("Gemm", 0);
  EXPECT_EQ(fc.weight.shape, (Shape{10, 16}));  // transB = 1: already [O, K]
  EXPECT_EQ(fc.weight.data, initializer(*proto_, gemm.input(1)));
  EXPECT_EQ(fc.bias.data, initializer(*proto_, gemm.input(2)));
}

TEST_F(TinyModel, NaiveInterpretationMatchesPyTorchLogits) {
  const NpyArray inputs = read_npy(kModels / "tiny_inputs.npy");
  const NpyArray logits = read_npy(kModels / "tiny_logits.npy");
  ASSERT_EQ(inputs.shape, (Shape{4, 3, 32, 32}));
  ASSERT_EQ(logits.shape, (Shape{4, 10}));
  float largest = 0;
  for (float v : logits.data) largest = std::max(largest, std::abs(v));
  for (std::size_t s = 0; s < 4; ++s) {
    const std::vector<float> got = reference_run(*model_, inputs.data.data() + s * 3 * 32 * 32);
    ASSERT_EQ(got.size(), 10U);
    for (int k = 0; k < 10; ++k) {
      EXPECT_NEAR(got[k], logits.data[s * 10 + k], 1e-4 * largest)
          << "sample " << s << " class " << k;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Errors on files.

TEST(ImportErrors, MissingFile) {
  TempDir dir;
  const std::string path = (dir / "absent.onnx").string();
  EXPECT_EQ(import_error(path), path + ": no such model file");
}

TEST(ImportErrors, CorruptBytes) {
  TempDir dir;
  const std::string tiny = read_file(kModels / "tiny.onnx");
  ASSERT_GT(tiny.size(), 1000U);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated.onnx", tiny.substr(0, tiny.size() / 2)},
      {"text.onnx", "this is not a model\n"},
      {"empty.onnx", ""},
      {"jpeg.onnx", std::string("\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01", 13)},
  };
  for (const auto& [name, bytes] : cases) {
    const std::string path = (dir / name).string();
    write_file(path, bytes);
    const std::string message = import_error(path);
    EXPECT_EQ(message.rfind(path + ": not an ONNX model", 0), 0U) << message;
  }
}

// Damaged files either still import or fail with ModelError: never another exception, a crash or
// an absurd allocation (sizes are checked against the data before anything is allocated).
TEST(ImportErrors, DamagedFilesFailCleanly) {
  TempDir dir;
  const std::string tiny = read_file(kModels / "tiny.onnx");
  const std::string path = (dir / "damaged.onnx").string();
  int imported = 0;
  int rejected = 0;
  for (std::size_t i = 0; i < 400; ++i) {
    std::string bytes = tiny;
    if (i % 4 == 3) {
      bytes.resize((i * 104729) % tiny.size());
    } else {
      const std::size_t at = (i * 7919) % bytes.size();
      bytes[at] = static_cast<char>(bytes[at] ^ static_cast<char>((i * 31 + 1) & 0xFF));
    }
    write_file(path, bytes);
    try {
      import_onnx(path);
      ++imported;
    } catch (const ModelError& e) {
      ++rejected;
      EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0U) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "variant " << i << ": " << typeid(e).name() << ": " << e.what();
    }
  }
  // Most damage lands in weight bytes, which still import; much of the rest is caught.
  EXPECT_GT(imported, 0);
  EXPECT_GT(rejected, 50);
}

TEST(ImportErrors, UnsupportedOperatorFromExportScript) {
  const std::string path = (kModels / "unsupported_lstm.onnx").string();
  EXPECT_EQ(import_error(path),
            path +
                ": node 'lstm' (LSTM): unsupported operator; millrace runs Conv, Relu, Clip, "
                "BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Add, Flatten, "
                "Reshape, Gemm, MatMul, Softmax, Identity, Constant, Dropout, Concat");
}

// ---------------------------------------------------------------------------------------------
// Errors and lowering rules on graphs built here.

// input [N, 3, 8, 8] -> Conv 3x3 pad 1 (4 channels) -> ... the usual start of a test graph.
ModelBuilder conv_graph(std::int64_t opset = 13) {
  ModelBuilder b(opset);
  b.input("x", {-1, 3, 8, 8});
  b.weight("w", {4, 3, 3, 3});
  auto& conv = b.node("Conv", {"x", "w"}, {"c"}, "conv");
  set_ints(conv, "pads", {1, 1, 1, 1});
  return b;
}

TEST(ImportErrors, UnsupportedOperatorInBuiltGraph) {
  ModelBuilder b = conv_graph();
  b.node("Sigmoid", {"c"}, {"s"}, "gate");
  b.output("s");
  const std::string message = built_error(b);
  EXPECT_NE(message.find(": node 'gate' (Sigmoid): unsupported operator; millrace runs Conv,"),
            std::string::npos)
      << message;
}

TEST(ImportErrors, OperatorFromAnotherDomain) {
  ModelBuilder b = conv_graph();
  auto& n = b.node("Relu", {"c"}, {"r"}, "custom");
  n.set_domain("com.example");
  b.output("r");
  EXPECT_NE(built_error(b).find("node 'custom' (Relu from domain 'com.example'): unsupported"),
            std::string::npos);
}

TEST(ImportErrors, WrongInputRank) {
  ModelBuilder b;
  b.input("x", {-1, 3, 8});
  b.node("Relu", {"x"}, {"r"});
  b.output("r");
  const std::string message = built_error(b);
  EXPECT_NE(message.find("input 'x' has shape [batch, 3, 8] (3-D); millrace needs a 4-D NCHW"),
            std::string::npos)
      << message;
}

TEST(ImportErrors, InputDetails) {
  {
    ModelBuilder b;
    b.input("x", {1, 3, -1, 8});
    b.node("Relu", {"x"}, {"r"});
    b.output("r");
    EXPECT_NE(built_error(b).find("must be fixed numbers"), std::string::npos);
  }
  {
    ModelBuilder b;
    b.input("x", {1, 3, 8, 8}, onnx::TensorProto_DataType_UINT8);
    b.node("Relu", {"x"}, {"r"});
    b.output("r");
    EXPECT_NE(built_error(b).find("input 'x' has element type UINT8"), std::string::npos);
  }
  {
    ModelBuilder b = conv_graph();
    b.input("y", {1, 3, 8, 8});
    b.output("c");
    const std::string message = built_error(b);
    EXPECT_NE(message.find("2 inputs ('x', 'y')"), std::string::npos) << message;
  }
}

TEST(ImportErrors, InitializersListedAsInputsAreNotInputs) {
  ModelBuilder b = conv_graph();
  b.input("w", {4, 3, 3, 3});  // as IR version 3 exporters listed every weight
  b.output("c");
  const Model m = import_built(b);
  EXPECT_EQ(m.input_name, "x");
  ASSERT_EQ(m.ops.size(), 1U);
}

TEST(ImportErrors, Opsets) {
  for (std::int64_t opset : {10, 18}) {
    ModelBuilder b = conv_graph(opset);
    b.output("c");
    EXPECT_NE(built_error(b).find("opset " + std::to_string(opset) +
                                  " of the default ONNX domain is not supported; millrace accepts "
                                  "opsets 11 to 17"),
              std::string::npos);
  }
  for (std::int64_t opset : {11, 17}) {
    ModelBuilder b = conv_graph(opset);
    b.output("c");
    EXPECT_EQ(import_built(b).ops.size(), 1U) << opset;
  }
}

TEST(ImportErrors, UnsupportedAttributes) {
  {
    ModelBuilder b = conv_graph();
    set_int(*b.graph().mutable_node(0), "frobnicate", 1);
    b.output("c");
    EXPECT_NE(built_error(b).find("node 'conv' (Conv): unsupported attribute 'frobnicate'"),
              std::string::npos);
  }
  {
    ModelBuilder b;
    b.input("x", {-1, 3, 8, 8});
    b.weight("w", {4, 3, 3, 3});
    set_string(b.node("Conv", {"x", "w"}, {"c"}, "conv"), "auto_pad", "SAME_SIDEWAYS");
    b.output("c");
    EXPECT_NE(built_error(b).find("auto_pad 'SAME_SIDEWAYS' is not supported"), std::string::npos);
  }
}

TEST(ImportErrors, GemmTransA) {
  ModelBuilder b = conv_graph();
  b.node("Flatten", {"c"}, {"f"}, "flatten");
  b.weight("w2", {256, 5});
  set_int(b.node("Gemm", {"f", "w2"}, {"y"}, "fc"), "transA", 1);
  b.output("y");
  EXPECT_NE(built_error(b).find("node 'fc' (Gemm): transA is not supported"), std::string::npos);
}

TEST(ImportErrors, ClipBoundsMustBeConstant) {
  ModelBuilder b = conv_graph();
  b.node("GlobalAveragePool", {"c"}, {"g"}, "gap");
  b.node("Clip", {"c", "g"}, {"y"}, "clip");
  b.output("y");
  const std::string message = built_error(b);
  EXPECT_NE(message.find("node 'clip' (Clip): input 'g' must be a constant"), std::string::npos)
      << message;
}

TEST(ImportErrors, ReshapeOnlyFlattens) {
  for (const Shape& target : {Shape{1, 2, -1}, Shape{-1, 8}, Shape{1, -1}, Shape{-1, -1}}) {
    ModelBuilder b = conv_graph();
    b.ints("shape", target);
    b.node("Reshape", {"c", "shape"}, {"y"}, "reshape");
    b.output("y");
    // The batch of this graph is symbolic, so [1, -1] would merge samples.
    const std::string message = built_error(b);
    EXPECT_NE(message.find("node 'reshape' (Reshape): reshapes to"), std::string::npos) << message;
    EXPECT_NE(message.find("millrace reshapes only to [N, -1] or [N, K]"), std::string::npos);
  }
}

TEST(ImportErrors, BatchNormNotAfterAConv) {
  {
    ModelBuilder b;
    b.input("x", {-1, 3, 8, 8});
    for (const char* p : {"g", "bb", "m"}) b.weight(p, {3});
    b.weight("v", {3}, {1.0F, 2.0F, 3.0F});
    b.node("BatchNormalization", {"x", "g", "bb", "m", "v"}, {"y"}, "bn");
    b.output("y");
    EXPECT_NE(built_error(b).find("node 'bn' (BatchNormalization): BatchNormalization is "
                                  "supported only directly after a Conv"),
              std::string::npos);
  }
  {
    // The conv's output has a second reader: folding would change what that reader sees.
    ModelBuilder b = conv_graph();
    for (const char* p : {"g", "bb", "m"}) b.weight(p, {4});
    b.weight("v", {4}, {1.0F, 2.0F, 3.0F, 4.0F});
    b.node("BatchNormalization", {"c", "g", "bb", "m", "v"}, {"n"}, "bn");
    b.node("Add", {"c", "n"}, {"y"}, "add");
    b.output("y");
    EXPECT_NE(built_error(b).find("node 'bn' (BatchNormalization)"), std::string::npos);
  }
}

TEST(ImportErrors, BatchNormAfterAnActivationIsNotFolded) {
  // Conv -> Relu -> BN: the ReLU is fused into the conv first, and BN after a ReLU cannot be
  // folded into the conv's weights.
  ModelBuilder b = conv_graph();
  b.node("Relu", {"c"}, {"r"}, "relu");
  for (const char* p : {"g", "bb", "m"}) b.weight(p, {4});
  b.weight("v", {4}, {1.0F, 2.0F, 3.0F, 4.0F});
  b.node("BatchNormalization", {"r", "g", "bb", "m", "v"}, {"y"}, "bn");
  b.output("y");
  EXPECT_NE(built_error(b).find("node 'bn' (BatchNormalization): BatchNormalization is supported "
                                "only directly after a Conv"),
            std::string::npos);
}

TEST(ImportErrors, SoftmaxOnlyAtTheOutput) {
  ModelBuilder b = conv_graph();
  b.node("Flatten", {"c"}, {"f"}, "flatten");
  b.node("Softmax", {"f"}, {"p"}, "softmax");
  b.weight("w2", {5, 256});
  set_int(b.node("Gemm", {"p", "w2"}, {"y"}, "fc"), "transB", 1);
  b.output("y");
  EXPECT_NE(built_error(b).find("node 'softmax' (Softmax): Softmax is supported only as the "
                                "graph's last operation"),
            std::string::npos);
}

TEST(ImportErrors, UnknownInputAndTwoOutputs) {
  {
    ModelBuilder b = conv_graph();
    b.node("Add", {"c", "nowhere"}, {"y"}, "add");
    b.output("y");
    EXPECT_NE(built_error(b).find("node 'add' (Add): input 'nowhere' is not produced"),
              std::string::npos);
  }
  {
    ModelBuilder b = conv_graph();
    b.node("Relu", {"c"}, {"r"}, "relu");
    b.output("c").output("r");
    EXPECT_NE(built_error(b).find("the graph has 2 outputs"), std::string::npos);
  }
}

TEST(ImportErrors, Float16Weights) {
  ModelBuilder b = conv_graph();
  b.graph().mutable_initializer(0)->set_data_type(onnx::TensorProto_DataType_FLOAT16);
  b.output("c");
  EXPECT_NE(built_error(b).find("initializer 'w': element type FLOAT16 is not supported"),
            std::string::npos);
}

TEST(ImportErrors, DropoutMaskIsTrainingOnly) {
  ModelBuilder b = conv_graph();
  b.node("Dropout", {"c"}, {"d", "mask"}, "drop");
  b.node("Add", {"d", "mask"}, {"y"}, "add");
  b.output("y");
  EXPECT_NE(built_error(b).find("node 'drop' (Dropout): output 1 ('mask') is used"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Lowering rules.

TEST(Lowering, ActivationStaysAnOpWhenTheProducerHasAnotherReader) {
  ModelBuilder b = conv_graph();
  b.node("Relu", {"c"}, {"r"}, "relu");
  b.node("Add", {"c", "r"}, {"y"}, "add");
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 3U);
  EXPECT_EQ(m.ops[0].activation, Activation::kNone);
  EXPECT_EQ(m.ops[1].kind, OpKind::kRelu);
  EXPECT_EQ(m.ops[1].name, "relu");
  EXPECT_EQ(m.ops[2].inputs, (std::vector<int>{1, 2}));
}

TEST(Lowering, ActivationAfterAPoolStaysAnOp) {
  ModelBuilder b = conv_graph();
  auto& pool = b.node("MaxPool", {"c"}, {"p"}, "pool");
  set_ints(pool, "kernel_shape", {2, 2});
  set_ints(pool, "strides", {2, 2});
  b.weight("lo_f", {}, {-1.0F});
  b.weight("hi_f", {}, {1.0F});
  b.node("Clip", {"p", "lo_f", "hi_f"}, {"y"}, "clip");
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 3U);
  EXPECT_EQ(m.ops[2].kind, OpKind::kClip);
  EXPECT_EQ(m.ops[2].clip_min, -1.0F);
  EXPECT_EQ(m.ops[2].clip_max, 1.0F);
  EXPECT_EQ(m.value_shapes[3], (Shape{1, 4, 4, 4}));
}

TEST(Lowering, ReluThenClipComposeIntoOneActivation) {
  ModelBuilder b = conv_graph();
  b.node("Relu", {"c"}, {"r"}, "relu");
  b.weight("six", {}, {6.0F});
  b.node("Clip", {"r", "", "six"}, {"y"}, "clip");  // min absent: -inf
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 1U);
  EXPECT_EQ(m.ops[0].activation, Activation::kClip);
  EXPECT_EQ(m.ops[0].clip_min, 0.0F);
  EXPECT_EQ(m.ops[0].clip_max, 6.0F);
}

TEST(Lowering, ClipFromZeroIsARelu) {
  ModelBuilder b = conv_graph();
  b.weight("zero", {}, {0.0F});
  b.node("Clip", {"c", "zero"}, {"y"}, "clip");
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 1U);
  EXPECT_EQ(m.ops[0].activation, Activation::kRelu);
}

TEST(Lowering, IdentityDropoutAndConstantNodes) {
  ModelBuilder b;
  b.input("x", {-1, 3, 8, 8});
  // The conv weight comes from a Constant node through an Identity.
  auto& constant = b.node("Constant", {}, {"wc"}, "const");
  auto* a = constant.add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto_AttributeType_TENSOR);
  const std::vector<float> w = pattern(count_of({4, 3, 1, 1}), 7);
  ModelBuilder::fill(*a->mutable_t(), "", {4, 3, 1, 1}, w);
  b.node("Identity", {"wc"}, {"w"}, "id_w");
  b.node("Identity", {"x"}, {"xi"}, "id_x");
  b.node("Conv", {"xi", "w"}, {"c"}, "conv");
  b.node("Dropout", {"c"}, {"d"}, "drop");
  b.node("Relu", {"d"}, {"r"}, "relu");
  b.node("Identity", {"r"}, {"out"}, "id_out");
  b.output("out");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 1U);
  EXPECT_EQ(m.ops[0].kind, OpKind::kConv);
  EXPECT_EQ(m.ops[0].activation, Activation::kRelu);  // through the Dropout
  EXPECT_EQ(m.ops[0].inputs, std::vector<int>{0});
  EXPECT_EQ(m.ops[0].weight.data, w);
  EXPECT_EQ(m.output, 1);
}

TEST(Lowering, DropoutWithInferenceModeInputs) {
  ModelBuilder b = conv_graph(13);
  b.weight("ratio", {}, {0.5F});
  auto& mode = *b.graph().add_initializer();
  mode.set_name("training");
  mode.set_data_type(onnx::TensorProto_DataType_BOOL);
  mode.set_raw_data(std::string(1, '\0'));
  b.node("Dropout", {"c", "ratio", "training"}, {"d"}, "drop");
  b.output("d");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 1U);
  EXPECT_EQ(m.output, 1);

  mode.set_raw_data(std::string(1, '\1'));
  EXPECT_NE(built_error(b).find("node 'drop' (Dropout): training_mode must be a constant false"),
            std::string::npos);
}

TEST(Lowering, AliasesOfDroppedOpsResolve) {
  // A Flatten of a 2-D value is dropped; an Identity of it, read by a Relu, must still reach
  // the Gemm, and the Relu is fused into it.
  ModelBuilder b = conv_graph();
  b.node("Flatten", {"c"}, {"f"}, "flatten");
  b.weight("w2", {5, 256});
  set_int(b.node("Gemm", {"f", "w2"}, {"g"}, "fc"), "transB", 1);
  b.node("Flatten", {"g"}, {"g2"}, "flatten2");
  b.node("Identity", {"g2"}, {"gi"}, "id");
  b.node("Relu", {"gi"}, {"y"}, "relu");
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 3U);
  EXPECT_EQ(m.ops[2].kind, OpKind::kGemm);
  EXPECT_EQ(m.ops[2].activation, Activation::kRelu);
  EXPECT_EQ(m.output, 3);
}

TEST(Lowering, MatMulAndAddBecomeAGemmWithBias) {
  ModelBuilder b = conv_graph();
  b.ints("shape", {0, -1});
  b.node("Reshape", {"c", "shape"}, {"f"}, "flatten");
  const std::vector<float> w = pattern(count_of({256, 3}), 3);  // [K = 256, O = 3]
  b.weight("w2", {256, 3}, w);
  b.node("MatMul", {"f", "w2"}, {"mm"}, "matmul");
  b.weight("bias", {3}, {0.5F, -1.0F, 2.0F});
  b.node("Add", {"bias", "mm"}, {"y"}, "add");
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 3U);
  EXPECT_EQ(m.ops[1].kind, OpKind::kFlatten);
  EXPECT_EQ(m.value_shapes[2], (Shape{1, 256}));
  const Op& fc = m.ops[2];
  EXPECT_EQ(fc.kind, OpKind::kGemm);
  EXPECT_EQ(fc.name, "matmul");
  ASSERT_EQ(fc.weight.shape, (Shape{3, 256}));
  for (int o = 0; o < 3; ++o) {
    for (int k = 0; k < 256; ++k) ASSERT_EQ(fc.weight.data[o * 256 + k], w[k * 3 + o]);
  }
  EXPECT_EQ(fc.bias.data, (std::vector<float>{0.5F, -1.0F, 2.0F}));
  EXPECT_EQ(m.value_shapes[m.output], (Shape{1, 3}));
}

TEST(Lowering, GemmTransposesAndFoldsAlphaBeta) {
  ModelBuilder b = conv_graph();
  b.node("Flatten", {"c"}, {"f"}, "flatten");
  const std::vector<float> w = pattern(count_of({256, 2}), 5);  // transB = 0: [K, O]
  b.weight("w2", {256, 2}, w);
  b.weight("bias", {1, 2}, {1.0F, 3.0F});
  auto& gemm = b.node("Gemm", {"f", "w2", "bias"}, {"y"}, "fc");
  set_float(gemm, "alpha", 2.0F);
  set_float(gemm, "beta", 0.5F);
  b.output("y");
  const Model m = import_built(b);
  const Op& fc = m.ops.back();
  ASSERT_EQ(fc.weight.shape, (Shape{2, 256}));
  EXPECT_EQ(fc.weight.data[1 * 256 + 7], 2.0F * w[7 * 2 + 1]);
  EXPECT_EQ(fc.bias.data, (std::vector<float>{0.5F, 1.5F}));
}

TEST(Lowering, ReshapeForms) {
  // [0, -1], [-1, K] and [0, K] keep the batch; [1, -1] does when the input's batch is fixed to 1.
  for (const Shape& target : {Shape{0, -1}, Shape{-1, 256}, Shape{0, 256}}) {
    ModelBuilder b = conv_graph();
    b.ints("shape", target);
    b.node("Reshape", {"c", "shape"}, {"y"}, "reshape");
    b.output("y");
    const Model m = import_built(b);
    ASSERT_EQ(m.ops.size(), 2U);
    EXPECT_EQ(m.ops[1].kind, OpKind::kFlatten);
    EXPECT_EQ(m.value_shapes[2], (Shape{1, 256}));
  }
  ModelBuilder b;
  b.input("x", {1, 3, 8, 8});
  b.weight("w", {4, 3, 3, 3});
  b.node("Conv", {"x", "w"}, {"c"}, "conv");
  b.ints("shape", {1, -1});
  b.node("Reshape", {"c", "shape"}, {"y"}, "reshape");
  b.output("y");
  const Model m = import_built(b);
  EXPECT_EQ(m.value_shapes[2], (Shape{1, 144}));  // 4 channels x 6 x 6 (3x3 conv, no pads, on 8x8)
}

TEST(Lowering, ConcatAlongChannels) {
  ModelBuilder b = conv_graph();
  b.weight("w2", {2, 3, 1, 1});
  b.node("Conv", {"x", "w2"}, {"c2"}, "conv2");
  set_int(b.node("Concat", {"c", "c2"}, {"y"}, "cat"), "axis", 1);
  b.output("y");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 3U);
  EXPECT_EQ(m.ops[2].kind, OpKind::kConcat);
  EXPECT_EQ(m.ops[2].axis, 1);
  EXPECT_EQ(m.ops[2].inputs, (std::vector<int>{1, 2}));
  EXPECT_EQ(m.value_shapes[3], (Shape{1, 6, 8, 8}));

  ModelBuilder bad = conv_graph();
  bad.node("Relu", {"c"}, {"r"}, "relu");
  set_int(bad.node("Concat", {"c", "r"}, {"y"}, "cat"), "axis", 2);
  bad.output("y");
  EXPECT_NE(built_error(bad).find("node 'cat' (Concat): axis 2"), std::string::npos);
}

TEST(Lowering, ConvPadsStridesDilationsAndShapes) {
  ModelBuilder b;
  b.input("x", {-1, 3, 17, 20});
  b.weight("w", {6, 3, 3, 5});
  auto& conv = b.node("Conv", {"x", "w"}, {"y"}, "conv");
  set_ints(conv, "pads", {1, 2, 3, 0});  // top, left, bottom, right
  set_ints(conv, "strides", {2, 3});
  set_ints(conv, "dilations", {2, 1});
  b.output("y");
  const Model m = import_built(b);
  const Op& op = m.ops[0];
  EXPECT_EQ(op.pads, (std::array<int, 4>{1, 2, 3, 0}));
  EXPECT_EQ(op.stride, (std::array<int, 2>{2, 3}));
  EXPECT_EQ(op.dilation, (std::array<int, 2>{2, 1}));
  EXPECT_EQ(op.kernel, (std::array<int, 2>{3, 5}));
  // H: (17 + 1 + 3 - (2 * 2 + 1)) / 2 + 1 = 9; W: (20 + 2 + 0 - 5) / 3 + 1 = 6.
  EXPECT_EQ(m.value_shapes[1], (Shape{1, 6, 9, 6}));
}

TEST(Lowering, AutoPadBecomesExplicitPads) {
  // 6 wide, kernel 3, stride 2: SAME wants ceil(6 / 2) = 3 outputs, so 1 pixel of padding in all.
  const std::vector<std::pair<std::string, std::array<int, 4>>> cases = {
      {"SAME_UPPER", {0, 0, 1, 1}}, {"SAME_LOWER", {1, 1, 0, 0}}, {"VALID", {0, 0, 0, 0}}};
  for (const auto& [mode, pads] : cases) {
    ModelBuilder b;
    b.input("x", {-1, 3, 6, 6});
    b.weight("w", {4, 3, 3, 3});
    auto& conv = b.node("Conv", {"x", "w"}, {"y"}, "conv");
    set_string(conv, "auto_pad", mode);
    set_ints(conv, "strides", {2, 2});
    b.output("y");
    const Model m = import_built(b);
    EXPECT_EQ(m.ops[0].pads, pads) << mode;
    const std::int64_t side = mode == "VALID" ? 2 : 3;
    EXPECT_EQ(m.value_shapes[1], (Shape{1, 4, side, side})) << mode;
  }
}

TEST(Lowering, CeilModeDropsAWindowThatStartsInThePadding) {
  // PyTorch: MaxPool2d(2, stride=2, padding=1, ceil_mode=True) on 5x5 gives 3x3; without the
  // rule, ceil((5 + 2 - 2) / 2) + 1 would be 4, a window starting past the input.
  ModelBuilder b;
  b.input("x", {-1, 2, 5, 5});
  auto& pool = b.node("MaxPool", {"x"}, {"y"}, "pool");
  set_ints(pool, "kernel_shape", {2, 2});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {1, 1, 1, 1});
  set_int(pool, "ceil_mode", 1);
  b.output("y");
  EXPECT_EQ(import_built(b).value_shapes[1], (Shape{1, 2, 3, 3}));
}

TEST(Lowering, AveragePoolAttributes) {
  ModelBuilder b;
  b.input("x", {-1, 2, 7, 7});
  auto& pool = b.node("AveragePool", {"x"}, {"y"}, "pool");
  set_ints(pool, "kernel_shape", {3, 3});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {1, 1, 1, 1});
  set_int(pool, "count_include_pad", 1);
  b.output("y");
  const Model m = import_built(b);
  EXPECT_EQ(m.ops[0].kind, OpKind::kAvgPool);
  EXPECT_TRUE(m.ops[0].count_include_pad);
  EXPECT_FALSE(m.ops[0].ceil_mode);
  EXPECT_EQ(m.value_shapes[1], (Shape{1, 2, 4, 4}));  // (7 + 2 - 3) / 2 + 1
}

TEST(Lowering, UnusedBranchesAreDropped) {
  ModelBuilder b = conv_graph();
  b.node("Relu", {"x"}, {"unused"}, "dead");
  b.output("c");
  const Model m = import_built(b);
  ASSERT_EQ(m.ops.size(), 1U);
  EXPECT_EQ(m.ops[0].name, "conv");
  EXPECT_EQ(m.value_count(), 2);
}

TEST(Lowering, NamelessNodesAreNamedByTypeAndPosition) {
  ModelBuilder b = conv_graph();
  b.graph().mutable_node(0)->clear_name();
  b.output("c");
  EXPECT_EQ(import_built(b).ops[0].name, "Conv_0");
}

TEST(Lowering, ExternalTensorData) {
  TempDir dir;
  ModelBuilder b;
  b.input("x", {-1, 3, 4, 4});
  const std::vector<float> w = pattern(count_of({2, 3, 3, 3}), 9);
  auto& t = b.weight("w", {2, 3, 3, 3});
  t.clear_raw_data();
  t.set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
  auto add_entry = [&](const std::string& key, const std::string& value) {
    auto* e = t.add_external_data();
    e->set_key(key);
    e->set_value(value);
  };
  add_entry("location", "weights.bin");
  add_entry("offset", "16");
  add_entry("length", std::to_string(w.size() * sizeof(float)));
  write_file(dir / "weights.bin",
             std::string(16, '\0') +
                 std::string(reinterpret_cast<const char*>(w.data()), w.size() * sizeof(float)));
  b.node("Conv", {"x", "w"}, {"y"}, "conv");
  b.output("y");
  const Model m = import_onnx(b.write(dir));
  EXPECT_EQ(m.ops[0].weight.data, w);

  t.mutable_external_data(0)->set_value("../weights.bin");
  const std::string path = b.write(dir, "escape.onnx");
  EXPECT_NE(import_error(path).find("must be a file name relative to the model's folder"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// max_model_bytes: the model file and its external data together.

TEST(ModelSizeLimit, AFileAboveTheLimitIsRefusedFromItsSize) {
  const std::string path = (kModels / "tiny.onnx").string();
  const auto size = static_cast<std::uint64_t>(fs::file_size(path));
  EXPECT_NO_THROW(import_onnx(path, size));
  try {
    import_onnx(path, size - 1);
    ADD_FAILURE() << "a model one byte above the limit imported";
  } catch (const ModelError& e) {
    EXPECT_EQ(std::string(e.what()), path + ": the model file is " + std::to_string(size) +
                                         " bytes, above max_model_bytes " +
                                         std::to_string(size - 1) +
                                         " (raise infer's max_model_bytes to load it)");
  }
}

// A sparse file of 3 GiB: refused before a byte of it is read (reading it would take seconds and
// gigabytes), so the test is quick and small on disk.
TEST(ModelSizeLimit, AHugeFileIsRefusedWithoutReadingIt) {
  TempDir dir;
  const fs::path path = dir / "huge.onnx";
  write_file(path, "");
  fs::resize_file(path, std::uint64_t{3} << 30);
  const std::string message = import_error(path.string());
  EXPECT_NE(message.find("the model file is 3221225472 bytes, above max_model_bytes 1073741824"),
            std::string::npos)
      << message;
}

TEST(ModelSizeLimit, ExternalDataCountsAgainstTheLimit) {
  TempDir dir;
  ModelBuilder b;
  b.input("x", {-1, 3, 4, 4});
  const std::vector<float> w = pattern(count_of({2, 3, 3, 3}), 9);
  auto& t = b.weight("w", {2, 3, 3, 3});
  t.clear_raw_data();
  t.set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
  auto* location = t.add_external_data();
  location->set_key("location");
  location->set_value("weights.bin");
  const std::string weights(reinterpret_cast<const char*>(w.data()), w.size() * sizeof(float));
  write_file(dir / "weights.bin", weights);
  b.node("Conv", {"x", "w"}, {"y"}, "conv");
  b.output("y");
  const std::string path = b.write(dir);
  const std::uint64_t total = fs::file_size(path) + weights.size();
  EXPECT_NO_THROW(import_onnx(path, total));
  try {
    import_onnx(path, total - 1);
    ADD_FAILURE() << "a model whose external data passes the limit imported";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("external data of " + std::to_string(weights.size()) +
                                         " bytes takes the model past max_model_bytes"),
              std::string::npos)
        << e.what();
  }
}

// Offsets and lengths near the int64 limit must be rejected, not overflow while being checked.
TEST(ModelSizeLimit, ExternalDataOffsetsThatWouldOverflow) {
  TempDir dir;
  write_file(dir / "weights.bin", std::string(64, '\0'));
  for (const auto& [offset, length] : std::vector<std::pair<std::string, std::string>>{
           {"9223372036854775807", "8"}, {"8", "9223372036854775807"}, {"-8", "8"}, {"65", "-1"}}) {
    ModelBuilder b;
    b.input("x", {-1, 3, 4, 4});
    auto& t = b.weight("w", {2, 3, 3, 3});
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
    for (const auto& [key, value] : {std::pair<std::string, std::string>{"location", "weights.bin"},
                                     {"offset", offset},
                                     {"length", length}}) {
      auto* e = t.add_external_data();
      e->set_key(key);
      e->set_value(value);
    }
    b.node("Conv", {"x", "w"}, {"y"}, "conv");
    b.output("y");
    const std::string message = import_error(b.write(dir));
    EXPECT_NE(message.find("lies outside"), std::string::npos)
        << "offset " << offset << ", length " << length << ": " << message;
  }
}

TEST(ModelSizeLimit, FromMemoryCountsTheBytesGiven) {
  const std::string tiny = read_file(kModels / "tiny.onnx");
  EXPECT_EQ(import_onnx_bytes(tiny, "mem.onnx").ops.size(),
            import_onnx((kModels / "tiny.onnx").string()).ops.size());
  try {
    import_onnx_bytes(tiny, "mem.onnx", tiny.size() - 1);
    ADD_FAILURE() << "bytes above the limit imported";
  } catch (const ModelError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("mem.onnx: the model is ", 0), 0U) << e.what();
  }
}

}  // namespace
}  // namespace millrace::infer
