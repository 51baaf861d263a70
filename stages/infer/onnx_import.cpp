#include "stages/infer/onnx_import.hpp"

// Debian's libonnx-dev ships only the ONNX-ML flavour of the generated classes (a superset of
// plain ONNX), selected by this macro; onnx_pb.h also defines the ONNX_API it uses.
#ifndef ONNX_ML
#define ONNX_ML 1
#endif
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace millrace::infer {
namespace {

// ONNX stores raw tensor bytes little-endian; they are copied as they are.
static_assert(std::endian::native == std::endian::little);

constexpr std::int64_t kMinOpset = 11;
constexpr std::int64_t kMaxOpset = 17;
constexpr const char* kSupportedOps =
    "Conv, Relu, Clip, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Add, Flatten, "
    "Reshape, Gemm, MatMul, Softmax, Identity, Constant, Dropout, Concat";
constexpr float kInf = std::numeric_limits<float>::infinity();

using Shape = std::vector<std::int64_t>;

std::string shape_text(const Shape& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

// Saturates instead of overflowing: a corrupt file's absurd dimensions then fail the size checks
// that follow instead of wrapping around.
std::int64_t element_count(const Shape& shape) {
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    if (__builtin_mul_overflow(count, d, &count)) return std::numeric_limits<std::int64_t>::max();
  }
  return count;
}

std::string data_type_name(int type) {
  if (onnx::TensorProto_DataType_IsValid(type)) {
    return onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(type));
  }
  return "type " + std::to_string(type);
}

// A weight or a shape: initializers and Constant outputs, converted once.
struct ConstTensor {
  Shape shape;
  bool integer = false;
  std::vector<float> floats;       // when !integer
  std::vector<std::int64_t> ints;  // when integer
  std::size_t size() const { return integer ? ints.size() : floats.size(); }
  double at(std::size_t i) const {
    return integer ? static_cast<double>(ints[i]) : static_cast<double>(floats[i]);
  }
};

// A constant that can serve as the bias of `n` outputs: n values along the last dimension, or a
// single value broadcast to all of them.
bool is_bias_for(const ConstTensor& c, std::size_t n) {
  if (c.integer) return false;
  if (c.size() == 1) return true;
  return c.size() == n && !c.shape.empty() && static_cast<std::size_t>(c.shape.back()) == n;
}

// An op in the making: values are still named as in the ONNX graph; ids come at the end.
struct Pending {
  Op op;
  std::vector<std::string> inputs;
  std::string output;
};

// Attribute access with the checks every operator needs: known names, expected types.
class Attributes {
 public:
  using Fail = std::function<void(const std::string&)>;
  Attributes(const onnx::NodeProto& node, std::initializer_list<const char*> known, Fail fail)
      : fail_(std::move(fail)) {
    for (const auto& attribute : node.attribute()) {
      bool ok = std::any_of(known.begin(), known.end(),
                            [&](const char* k) { return attribute.name() == k; });
      if (!ok) fail_("unsupported attribute '" + attribute.name() + "'");
      by_name_[attribute.name()] = &attribute;
    }
  }
  bool has(const std::string& name) const { return by_name_.count(name) != 0; }
  std::int64_t get_int(const std::string& name, std::int64_t fallback) const {
    const auto* a = find(name, onnx::AttributeProto_AttributeType_INT);
    return a ? a->i() : fallback;
  }
  float get_float(const std::string& name, float fallback) const {
    const auto* a = find(name, onnx::AttributeProto_AttributeType_FLOAT);
    return a ? a->f() : fallback;
  }
  std::string get_string(const std::string& name, const std::string& fallback) const {
    const auto* a = find(name, onnx::AttributeProto_AttributeType_STRING);
    return a ? a->s() : fallback;
  }
  Shape get_ints(const std::string& name, Shape fallback) const {
    const auto* a = find(name, onnx::AttributeProto_AttributeType_INTS);
    if (a == nullptr) return fallback;
    return {a->ints().begin(), a->ints().end()};
  }
  const onnx::AttributeProto* find(const std::string& name,
                                   onnx::AttributeProto_AttributeType type) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return nullptr;
    if (it->second->type() != type) {
      fail_("attribute '" + name + "' should be " + onnx::AttributeProto_AttributeType_Name(type) +
            ", got " + onnx::AttributeProto_AttributeType_Name(it->second->type()));
    }
    return it->second;
  }

 private:
  Fail fail_;
  std::unordered_map<std::string, const onnx::AttributeProto*> by_name_;
};

class Importer {
 public:
  // `external_budget`: the bytes of external data the model may still read.
  Importer(std::string path, const onnx::ModelProto& proto, std::uint64_t external_budget)
      : path_(std::move(path)),
        proto_(proto),
        graph_(proto.graph()),
        external_budget_(external_budget) {
    for (int i = 0; i < graph_.node_size(); ++i) node_index_[&graph_.node(i)] = i;
  }

  Model run();

 private:
  // Errors.
  [[noreturn]] void fail(const std::string& message) const {
    throw ModelError(path_ + ": " + message);
  }
  [[noreturn]] void fail(const onnx::NodeProto& node, const std::string& message) const {
    fail("node '" + node_name(node) + "' (" + op_label(node) + "): " + message);
  }
  std::string node_name(const onnx::NodeProto& node) const;
  static std::string op_label(const onnx::NodeProto& node);
  Attributes attributes(const onnx::NodeProto& node,
                        std::initializer_list<const char*> known) const {
    return Attributes(node, known, [this, &node](const std::string& m) { fail(node, m); });
  }

  // Set-up.
  void check_header();
  void check_operators();
  void read_initializers();
  void read_input();
  void count_uses();
  void read_external(const onnx::TensorProto& tensor, const std::string& what,
                     std::string& bytes) const;
  ConstTensor to_const(const onnx::TensorProto& tensor, const std::string& what) const;

  // Names.
  std::string canonical(std::string name) const {
    // An alias may be re-aliased later (an Identity of a Flatten that lowering drops), so chains
    // are followed to their end.
    for (auto it = alias_.find(name); it != alias_.end(); it = alias_.find(name)) name = it->second;
    return name;
  }
  bool is_value(const std::string& name) const { return shapes_.count(name) != 0; }
  std::string value_input(const onnx::NodeProto& node, int index) const;
  const ConstTensor& const_input(const onnx::NodeProto& node, int index) const;
  bool has_input(const onnx::NodeProto& node, int index) const {
    return index < node.input_size() && !node.input(index).empty();
  }
  const Shape& shape_of(const std::string& value) const { return shapes_.at(value); }
  void define(const onnx::NodeProto& node, const std::string& name) const;
  int uses(const std::string& name) const {
    auto it = uses_.find(name);
    return it == uses_.end() ? 0 : it->second;
  }
  // The node's output becomes another name for `input`: its readers count as input's readers.
  void alias_output(const onnx::NodeProto& node, const std::string& input);
  // The pending op that produces `value` when fusing into it is allowed: nobody else reads it.
  Pending* sole_producer(const std::string& value, std::initializer_list<OpKind> kinds);
  Pending& emit(const onnx::NodeProto& node, OpKind kind, std::vector<std::string> inputs,
                Shape shape);
  void rename_output(Pending& producer, const onnx::NodeProto& node);

  // Lowering, one function per operator.
  void lower(const onnx::NodeProto& node);
  void lower_constant(const onnx::NodeProto& node);
  void lower_passthrough(const onnx::NodeProto& node);
  void lower_conv(const onnx::NodeProto& node);
  void lower_pool(const onnx::NodeProto& node);
  void lower_global_pool(const onnx::NodeProto& node);
  void lower_batch_norm(const onnx::NodeProto& node);
  void lower_activation(const onnx::NodeProto& node);
  void lower_add(const onnx::NodeProto& node);
  void lower_flatten(const onnx::NodeProto& node);
  void lower_reshape(const onnx::NodeProto& node);
  void lower_gemm(const onnx::NodeProto& node);
  void lower_matmul(const onnx::NodeProto& node);
  void lower_softmax(const onnx::NodeProto& node);
  void lower_concat(const onnx::NodeProto& node);

  // Shared by Conv and the pools: kernel, strides, dilations and pads, then the output size.
  void window(const onnx::NodeProto& node, const Attributes& attrs, const Shape& in,
              std::array<int, 2> kernel, bool ceil_mode, Op& op, Shape& out) const;
  void only_first_output(const onnx::NodeProto& node, const char* why) const;
  Model finish();

  std::string path_;
  const onnx::ModelProto& proto_;
  const onnx::GraphProto& graph_;
  // Shrinks as external data is read: the model's bytes stay within max_model_bytes.
  mutable std::uint64_t external_budget_;
  std::int64_t opset_ = 0;
  std::unordered_map<const onnx::NodeProto*, int> node_index_;
  std::unordered_map<std::string, ConstTensor> constants_;
  std::unordered_map<std::string, std::string> alias_;
  std::unordered_map<std::string, int> uses_;
  std::unordered_map<std::string, Shape> shapes_;  // every computed value seen so far
  std::unordered_map<std::string, std::size_t> producer_;
  std::vector<Pending> pending_;
  std::string input_name_;
  Shape input_shape_;
  std::int64_t input_batch_ = 0;  // the input's fixed batch size, 0 when symbolic
  std::string output_name_;       // the graph output, through aliases
  std::string logits_name_;       // the value before a final Softmax
  bool ends_with_softmax_ = false;
};

std::string Importer::node_name(const onnx::NodeProto& node) const {
  if (!node.name().empty()) return node.name();
  // Nameless nodes are called by their op type and position, as model.hpp documents.
  return node.op_type() + "_" + std::to_string(node_index_.at(&node));
}

std::string Importer::op_label(const onnx::NodeProto& node) {
  if (node.domain().empty() || node.domain() == "ai.onnx") return node.op_type();
  return node.op_type() + " from domain '" + node.domain() + "'";
}

void Importer::check_header() {
  if (!proto_.has_graph() || proto_.ir_version() <= 0) {
    fail("not an ONNX model (no IR version or no graph)");
  }
  bool found = false;
  for (const auto& opset : proto_.opset_import()) {
    if (opset.domain().empty() || opset.domain() == "ai.onnx") {
      opset_ = opset.version();
      found = true;
    }
  }
  if (!found) fail("the model imports no opset of the default ONNX domain");
  if (opset_ < kMinOpset || opset_ > kMaxOpset) {
    fail("opset " + std::to_string(opset_) +
         " of the default ONNX domain is not supported; millrace accepts opsets " +
         std::to_string(kMinOpset) + " to " + std::to_string(kMaxOpset));
  }
  if (graph_.node_size() == 0) fail("the graph has no nodes");
  if (graph_.sparse_initializer_size() > 0) fail("sparse initializers are not supported");
  if (graph_.output_size() != 1) {
    fail("the graph has " + std::to_string(graph_.output_size()) +
         " outputs; millrace runs models with exactly one output");
  }
}

// Every node's operator is checked before anything else: an unsupported operator is the most
// useful thing to report, even if an earlier node has another problem.
void Importer::check_operators() {
  // The message's list is the one source of truth for what is supported.
  std::unordered_set<std::string> supported;
  std::stringstream list(kSupportedOps);
  for (std::string op; std::getline(list >> std::ws, op, ',');) supported.insert(op);
  for (const auto& node : graph_.node()) {
    bool default_domain = node.domain().empty() || node.domain() == "ai.onnx";
    if (!default_domain || supported.count(node.op_type()) == 0) {
      fail(node, std::string("unsupported operator; millrace runs ") + kSupportedOps);
    }
  }
}

void Importer::read_external(const onnx::TensorProto& tensor, const std::string& what,
                             std::string& bytes) const {
  std::string location;
  std::int64_t offset = 0;
  std::int64_t length = -1;
  for (const auto& entry : tensor.external_data()) {
    try {
      if (entry.key() == "location") location = entry.value();
      if (entry.key() == "offset") offset = std::stoll(entry.value());
      if (entry.key() == "length") length = std::stoll(entry.value());
    } catch (const std::exception&) {
      fail(what + ": external data entry '" + entry.key() + "' is not a number");
    }
  }
  std::filesystem::path relative(location);
  if (location.empty() || relative.is_absolute() ||
      std::any_of(relative.begin(), relative.end(), [](const auto& p) { return p == ".."; })) {
    fail(what + ": external data location '" + location +
         "' must be a file name relative to the model's folder");
  }
  std::filesystem::path file = std::filesystem::path(path_).parent_path() / relative;
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(what + ": cannot open external data file " + file.string());
  in.seekg(0, std::ios::end);
  auto file_size = static_cast<std::int64_t>(in.tellg());
  if (offset >= 0 && offset <= file_size && length < 0) length = file_size - offset;
  // Compared without forming offset + length, which a hostile model can make overflow.
  if (offset < 0 || length < 0 || offset > file_size || length > file_size - offset) {
    fail(what + ": external data (offset " + std::to_string(offset) + ", length " +
         std::to_string(length) + ") lies outside " + file.string());
  }
  if (static_cast<std::uint64_t>(length) > external_budget_) {
    fail(what + ": external data of " + std::to_string(length) +
         " bytes takes the model past max_model_bytes (raise infer's max_model_bytes to load it)");
  }
  external_budget_ -= static_cast<std::uint64_t>(length);
  bytes.resize(static_cast<std::size_t>(length));
  in.seekg(offset);
  in.read(bytes.data(), length);
  if (!in) fail(what + ": cannot read external data from " + file.string());
}

ConstTensor Importer::to_const(const onnx::TensorProto& tensor, const std::string& what) const {
  ConstTensor out;
  for (std::int64_t d : tensor.dims()) {
    if (d < 0) fail(what + ": negative dimension in shape");
    out.shape.push_back(d);
  }
  if (tensor.has_segment()) fail(what + ": segmented tensors are not supported");
  const auto count = static_cast<std::size_t>(element_count(out.shape));

  std::string external;
  const std::string* raw = tensor.has_raw_data() ? &tensor.raw_data() : nullptr;
  if (tensor.data_location() == onnx::TensorProto_DataLocation_EXTERNAL) {
    read_external(tensor, what, external);
    raw = &external;
  }
  auto from_raw = [&](auto sample, auto& dest) {
    using T = decltype(sample);
    if (raw->size() != count * sizeof(T)) {
      fail(what + ": " + std::to_string(raw->size()) + " bytes of data for shape " +
           shape_text(out.shape));
    }
    std::vector<T> values(count);
    if (count) std::memcpy(values.data(), raw->data(), raw->size());
    dest.assign(values.begin(), values.end());
  };
  auto from_field = [&](const auto& field, auto& dest) {
    if (static_cast<std::size_t>(field.size()) != count) {
      fail(what + ": " + std::to_string(field.size()) + " values for shape " +
           shape_text(out.shape) + " (" + std::to_string(count) + " elements)");
    }
    dest.assign(field.begin(), field.end());
  };

  switch (tensor.data_type()) {
    case onnx::TensorProto_DataType_FLOAT:
      raw ? from_raw(float{}, out.floats) : from_field(tensor.float_data(), out.floats);
      break;
    case onnx::TensorProto_DataType_DOUBLE:
      raw ? from_raw(double{}, out.floats) : from_field(tensor.double_data(), out.floats);
      break;
    case onnx::TensorProto_DataType_INT64:
      out.integer = true;
      raw ? from_raw(std::int64_t{}, out.ints) : from_field(tensor.int64_data(), out.ints);
      break;
    case onnx::TensorProto_DataType_INT32:
      out.integer = true;
      raw ? from_raw(std::int32_t{}, out.ints) : from_field(tensor.int32_data(), out.ints);
      break;
    case onnx::TensorProto_DataType_BOOL:  // Dropout's training_mode
      out.integer = true;
      raw ? from_raw(std::uint8_t{}, out.ints) : from_field(tensor.int32_data(), out.ints);
      break;
    default:
      fail(what + ": element type " + data_type_name(tensor.data_type()) +
           " is not supported (millrace imports float32 models; shapes may be int64 or int32)");
  }
  return out;
}

void Importer::read_initializers() {
  for (const auto& tensor : graph_.initializer()) {
    if (constants_.count(tensor.name())) {
      fail("initializer '" + tensor.name() + "' is defined twice");
    }
    constants_.emplace(tensor.name(), to_const(tensor, "initializer '" + tensor.name() + "'"));
  }
}

void Importer::read_input() {
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& input : graph_.input()) {
    if (!constants_.count(input.name())) inputs.push_back(&input);
  }
  if (inputs.empty()) fail("the graph has no input (every input is an initializer)");
  if (inputs.size() > 1) {
    std::string names;
    for (const auto* input : inputs) names += (names.empty() ? "'" : ", '") + input->name() + "'";
    fail("the graph has " + std::to_string(inputs.size()) + " inputs (" + names +
         "); millrace feeds a model exactly one image tensor");
  }
  const onnx::ValueInfoProto& input = *inputs.front();
  input_name_ = input.name();
  const std::string what = "input '" + input_name_ + "'";
  if (!input.type().has_tensor_type()) fail(what + " is not a tensor");
  const auto& tensor = input.type().tensor_type();
  if (tensor.elem_type() != onnx::TensorProto_DataType_FLOAT) {
    fail(what + " has element type " + data_type_name(tensor.elem_type()) +
         "; millrace imports float32 models");
  }
  if (!tensor.has_shape()) fail(what + " has no shape; millrace needs a 4-D NCHW input");
  const auto& dims = tensor.shape().dim();
  std::string text = "[";
  for (int i = 0; i < dims.size(); ++i) {
    text += (i ? ", " : "") + (dims[i].has_dim_value()
                                   ? std::to_string(dims[i].dim_value())
                                   : (dims[i].dim_param().empty() ? "?" : dims[i].dim_param()));
  }
  text += "]";
  if (dims.size() != 4) {
    fail(what + " has shape " + text + " (" + std::to_string(dims.size()) +
         "-D); millrace needs a 4-D NCHW image input");
  }
  for (int i = 1; i < 4; ++i) {
    if (!dims[i].has_dim_value() || dims[i].dim_value() <= 0) {
      fail(what + " has shape " + text + "; channels, height and width must be fixed numbers");
    }
  }
  if (element_count({dims[1].dim_value(), dims[2].dim_value(), dims[3].dim_value()}) >
      std::numeric_limits<std::int32_t>::max()) {
    fail(what + " has shape " + text + ": one image of that size is too large");
  }
  if (dims[0].has_dim_value()) {
    if (dims[0].dim_value() <= 0) fail(what + " has shape " + text + ": batch must be positive");
    input_batch_ = dims[0].dim_value();
  }
  input_shape_ = {1, dims[1].dim_value(), dims[2].dim_value(), dims[3].dim_value()};
  shapes_[input_name_] = input_shape_;
}

// Readers per value, with Identity and Dropout resolved to the value they pass on, and the graph
// output counting as one reader. Fusing into a producer needs its output to have one reader.
void Importer::count_uses() {
  for (const auto& node : graph_.node()) {
    if ((node.op_type() == "Identity" || node.op_type() == "Dropout") && node.input_size() > 0 &&
        node.output_size() > 0) {
      alias_[node.output(0)] = canonical(node.input(0));
      for (int i = 1; i < node.input_size(); ++i) {
        if (!node.input(i).empty()) ++uses_[canonical(node.input(i))];
      }
      continue;
    }
    for (const auto& input : node.input()) {
      if (!input.empty()) ++uses_[canonical(input)];
    }
  }
  output_name_ = canonical(graph_.output(0).name());
  ++uses_[output_name_];
}

std::string Importer::value_input(const onnx::NodeProto& node, int index) const {
  if (!has_input(node, index)) fail(node, "input " + std::to_string(index) + " is missing");
  std::string resolved = canonical(node.input(index));
  if (is_value(resolved)) return resolved;
  if (constants_.count(resolved)) {
    fail(node,
         "input '" + node.input(index) + "' is a constant; millrace needs a computed value there");
  }
  fail(node, "input '" + node.input(index) + "' is not produced by any earlier node");
}

const ConstTensor& Importer::const_input(const onnx::NodeProto& node, int index) const {
  if (!has_input(node, index)) fail(node, "input " + std::to_string(index) + " is missing");
  auto it = constants_.find(canonical(node.input(index)));
  if (it != constants_.end()) return it->second;
  if (is_value(canonical(node.input(index)))) {
    fail(node,
         "input '" + node.input(index) +
             "' must be a constant (an initializer or a Constant node), not a computed value");
  }
  fail(node, "input '" + node.input(index) + "' is not produced by any earlier node");
}

void Importer::define(const onnx::NodeProto& node, const std::string& name) const {
  if (name.empty()) fail(node, "output 0 has no name");
  if (is_value(name) || constants_.count(name)) {
    fail(node, "output '" + name + "' is already defined by an earlier node or initializer");
  }
}

void Importer::alias_output(const onnx::NodeProto& node, const std::string& input) {
  define(node, node.output(0));
  alias_[node.output(0)] = input;
  uses_[input] += uses(node.output(0)) - 1;
  if (output_name_ == node.output(0)) output_name_ = input;
}

Pending* Importer::sole_producer(const std::string& value, std::initializer_list<OpKind> kinds) {
  auto it = producer_.find(value);
  if (it == producer_.end() || uses(value) != 1) return nullptr;
  Pending& p = pending_[it->second];
  if (std::find(kinds.begin(), kinds.end(), p.op.kind) == kinds.end()) return nullptr;
  return &p;
}

Pending& Importer::emit(const onnx::NodeProto& node, OpKind kind, std::vector<std::string> inputs,
                        Shape shape) {
  for (std::int64_t d : shape) {
    if (d <= 0) fail(node, "the output would have shape " + shape_text(shape));
  }
  define(node, node.output(0));
  Pending p;
  p.op.kind = kind;
  p.op.name = node_name(node);
  p.inputs = std::move(inputs);
  p.output = node.output(0);
  shapes_[p.output] = std::move(shape);
  producer_[p.output] = pending_.size();
  pending_.push_back(std::move(p));
  return pending_.back();
}

void Importer::rename_output(Pending& producer, const onnx::NodeProto& node) {
  define(node, node.output(0));
  const std::string& name = node.output(0);
  shapes_[name] = shapes_.at(producer.output);
  producer_[name] = producer_.at(producer.output);
  producer.output = name;
}

void Importer::only_first_output(const onnx::NodeProto& node, const char* why) const {
  for (int i = 1; i < node.output_size(); ++i) {
    if (!node.output(i).empty() && uses(node.output(i)) > 0) {
      fail(node, "output " + std::to_string(i) + " ('" + node.output(i) + "') is used; " + why);
    }
  }
}

void Importer::lower(const onnx::NodeProto& node) {
  if (node.output_size() == 0) fail(node, "the node has no outputs");
  const std::string& type = node.op_type();
  if (type == "Constant") return lower_constant(node);
  if (type == "Identity" || type == "Dropout") return lower_passthrough(node);
  if (type == "Conv") return lower_conv(node);
  if (type == "MaxPool" || type == "AveragePool") return lower_pool(node);
  if (type == "GlobalAveragePool") return lower_global_pool(node);
  if (type == "BatchNormalization") return lower_batch_norm(node);
  if (type == "Relu" || type == "Clip") return lower_activation(node);
  if (type == "Add") return lower_add(node);
  if (type == "Flatten") return lower_flatten(node);
  if (type == "Reshape") return lower_reshape(node);
  if (type == "Gemm") return lower_gemm(node);
  if (type == "MatMul") return lower_matmul(node);
  if (type == "Softmax") return lower_softmax(node);
  if (type == "Concat") return lower_concat(node);
  fail(node, std::string("unsupported operator; millrace runs ") + kSupportedOps);
}

void Importer::lower_constant(const onnx::NodeProto& node) {
  Attributes attrs =
      attributes(node, {"value", "value_float", "value_floats", "value_int", "value_ints"});
  if (node.attribute_size() != 1) fail(node, "needs exactly one value attribute");
  define(node, node.output(0));
  ConstTensor value;
  if (const auto* a = attrs.find("value", onnx::AttributeProto_AttributeType_TENSOR)) {
    value = to_const(a->t(), "node '" + node_name(node) + "' (Constant)");
  } else if (const auto* f1 = attrs.find("value_float", onnx::AttributeProto_AttributeType_FLOAT)) {
    value.floats = {f1->f()};
  } else if (const auto* fs =
                 attrs.find("value_floats", onnx::AttributeProto_AttributeType_FLOATS)) {
    value.floats.assign(fs->floats().begin(), fs->floats().end());
    value.shape = {static_cast<std::int64_t>(value.floats.size())};
  } else if (const auto* i1 = attrs.find("value_int", onnx::AttributeProto_AttributeType_INT)) {
    value.integer = true;
    value.ints = {i1->i()};
  } else if (const auto* is = attrs.find("value_ints", onnx::AttributeProto_AttributeType_INTS)) {
    value.integer = true;
    value.ints.assign(is->ints().begin(), is->ints().end());
    value.shape = {static_cast<std::int64_t>(value.ints.size())};
  }
  constants_.emplace(node.output(0), std::move(value));
}

void Importer::lower_passthrough(const onnx::NodeProto& node) {
  if (node.op_type() == "Dropout") {
    Attributes attrs = attributes(node, {"seed", "ratio"});
    if (has_input(node, 2)) {
      const ConstTensor& training = const_input(node, 2);
      if (training.size() != 1 || training.at(0) != 0) {
        fail(node, "training_mode must be a constant false; millrace runs inference");
      }
    }
    only_first_output(node, "the dropout mask exists only in training");
  } else {
    Attributes attrs = attributes(node, {});
  }
  if (!has_input(node, 0)) fail(node, "input 0 is missing");
  const std::string source = canonical(node.input(0));
  if (!is_value(source) && !constants_.count(source)) {
    fail(node, "input '" + node.input(0) + "' is not produced by any earlier node");
  }
  if (is_value(node.output(0)) || constants_.count(node.output(0))) {
    fail(node, "output '" + node.output(0) + "' is already defined by an earlier node");
  }
  // count_uses() made the output an alias of the input already.
}

void Importer::window(const onnx::NodeProto& node, const Attributes& attrs, const Shape& in,
                      std::array<int, 2> kernel, bool ceil_mode, Op& op, Shape& out) const {
  auto pair = [&](const char* name, std::int64_t fallback, std::int64_t min) {
    Shape v = attrs.get_ints(name, {fallback, fallback});
    if (v.size() != 2) fail(node, std::string(name) + " must have 2 values (2-D spatial)");
    for (std::int64_t x : v) {
      if (x < min || x > std::numeric_limits<int>::max()) {
        fail(node, std::string(name) + " " + shape_text(v) + " is out of range");
      }
    }
    return std::array<int, 2>{static_cast<int>(v[0]), static_cast<int>(v[1])};
  };
  op.kernel = kernel;
  op.stride = pair("strides", 1, 1);
  op.dilation = pair("dilations", 1, 1);
  if (kernel[0] < 1 || kernel[1] < 1) fail(node, "kernel size must be positive");

  const std::string auto_pad = attrs.get_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && attrs.has("pads")) {
    fail(node, "has both auto_pad " + auto_pad + " and pads");
  }
  if (auto_pad == "NOTSET") {
    Shape pads = attrs.get_ints("pads", {0, 0, 0, 0});
    if (pads.size() != 4) fail(node, "pads must have 4 values (2-D spatial)");
    for (std::int64_t p : pads) {
      if (p < 0 || p > std::numeric_limits<int>::max()) {
        fail(node, "pads " + shape_text(pads) + " are out of range");
      }
    }
    // ONNX order x1_begin, x2_begin, x1_end, x2_end is already top, left, bottom, right.
    op.pads = {static_cast<int>(pads[0]), static_cast<int>(pads[1]), static_cast<int>(pads[2]),
               static_cast<int>(pads[3])};
  } else if (auto_pad == "VALID") {
    op.pads = {0, 0, 0, 0};
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (int i = 0; i < 2; ++i) {
      const std::int64_t size = in[2 + i];
      const std::int64_t reach = static_cast<std::int64_t>(kernel[i] - 1) * op.dilation[i] + 1;
      const std::int64_t wanted = (size + op.stride[i] - 1) / op.stride[i];
      const std::int64_t total =
          std::max<std::int64_t>(0, (wanted - 1) * op.stride[i] + reach - size);
      const auto small = static_cast<int>(total / 2);
      const auto large = static_cast<int>(total - total / 2);
      // SAME_UPPER puts the odd extra pixel at the end, SAME_LOWER at the beginning.
      op.pads[i] = auto_pad == "SAME_UPPER" ? small : large;
      op.pads[2 + i] = auto_pad == "SAME_UPPER" ? large : small;
    }
  } else {
    fail(node, "auto_pad '" + auto_pad + "' is not supported");
  }

  out = {1, 0, 0, 0};
  for (int i = 0; i < 2; ++i) {
    const std::int64_t size = in[2 + i];
    const std::int64_t begin = op.pads[i];
    const std::int64_t padded = size + begin + op.pads[2 + i];
    const std::int64_t reach = static_cast<std::int64_t>(kernel[i] - 1) * op.dilation[i] + 1;
    if (padded < reach) {
      fail(node, "the window (" + std::to_string(reach) + ") is larger than the padded input (" +
                     std::to_string(padded) + ")");
    }
    const std::int64_t span = padded - reach;
    std::int64_t positions = span / op.stride[i];
    if (ceil_mode && span % op.stride[i] != 0) {
      ++positions;
      // As PyTorch: the last window must start inside the input or its begin padding.
      if (positions * op.stride[i] >= size + begin) --positions;
    }
    out[2 + i] = positions + 1;
  }
}

void Importer::lower_conv(const onnx::NodeProto& node) {
  Attributes attrs =
      attributes(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) {
    fail(node, "input of shape " + shape_text(in) + "; millrace runs 2-D convolutions (NCHW)");
  }
  const ConstTensor& w = const_input(node, 1);
  if (w.integer || w.shape.size() != 4) {
    fail(node, "weight must be a float tensor [O, I, kH, kW], got " + shape_text(w.shape));
  }
  const std::int64_t group = attrs.get_int("group", 1);
  const std::int64_t out_channels = w.shape[0];
  if (group < 1 || out_channels % group != 0 || w.shape[1] * group != in[1]) {
    fail(node, "weight " + shape_text(w.shape) + " with group " + std::to_string(group) +
                   " does not fit an input with " + std::to_string(in[1]) + " channels");
  }
  if (attrs.has("kernel_shape")) {
    Shape k = attrs.get_ints("kernel_shape", {});
    if (k != Shape{w.shape[2], w.shape[3]}) {
      fail(node, "kernel_shape " + shape_text(k) + " does not match weight " + shape_text(w.shape));
    }
  }
  Shape out;
  Op op;
  window(node, attrs, in, {static_cast<int>(w.shape[2]), static_cast<int>(w.shape[3])}, false, op,
         out);
  out[1] = out_channels;
  Pending& p = emit(node, OpKind::kConv, {x}, out);
  p.op.kernel = op.kernel;
  p.op.stride = op.stride;
  p.op.dilation = op.dilation;
  p.op.pads = op.pads;
  p.op.groups = static_cast<int>(group);
  p.op.weight = {w.shape, w.floats};
  if (has_input(node, 2)) {
    const ConstTensor& b = const_input(node, 2);
    if (b.integer || b.size() != static_cast<std::size_t>(out_channels)) {
      fail(node, "bias " + shape_text(b.shape) + " does not match " + std::to_string(out_channels) +
                     " output channels");
    }
    p.op.bias = {{out_channels}, b.floats};
  }
}

void Importer::lower_pool(const onnx::NodeProto& node) {
  const bool max = node.op_type() == "MaxPool";
  Attributes attrs = max ? attributes(node, {"auto_pad", "ceil_mode", "dilations", "kernel_shape",
                                             "pads", "storage_order", "strides"})
                         : attributes(node, {"auto_pad", "ceil_mode", "count_include_pad",
                                             "kernel_shape", "pads", "strides"});
  if (max) {
    if (attrs.get_int("storage_order", 0) != 0) fail(node, "storage_order 1 is not supported");
    only_first_output(node, "millrace does not compute max-pooling indices");
  }
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) fail(node, "input of shape " + shape_text(in) + "; millrace pools NCHW");
  if (!attrs.has("kernel_shape")) fail(node, "kernel_shape is missing");
  Shape k = attrs.get_ints("kernel_shape", {});
  if (k.size() != 2 || k[0] < 1 || k[1] < 1 || k[0] > std::numeric_limits<int>::max() ||
      k[1] > std::numeric_limits<int>::max()) {
    fail(node, "kernel_shape " + shape_text(k) + " is not a 2-D window");
  }
  const std::int64_t ceil_mode = attrs.get_int("ceil_mode", 0);
  if (ceil_mode != 0 && ceil_mode != 1) fail(node, "ceil_mode must be 0 or 1");
  Shape out;
  Op op;
  window(node, attrs, in, {static_cast<int>(k[0]), static_cast<int>(k[1])}, ceil_mode == 1, op,
         out);
  out[1] = in[1];
  Pending& p = emit(node, max ? OpKind::kMaxPool : OpKind::kAvgPool, {x}, out);
  p.op.kernel = op.kernel;
  p.op.stride = op.stride;
  p.op.dilation = op.dilation;
  p.op.pads = op.pads;
  p.op.ceil_mode = ceil_mode == 1;
  p.op.count_include_pad = !max && attrs.get_int("count_include_pad", 0) != 0;
}

void Importer::lower_global_pool(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 4) fail(node, "input of shape " + shape_text(in) + "; millrace pools NCHW");
  emit(node, OpKind::kGlobalAvgPool, {x}, {1, in[1], 1, 1});
}

void Importer::lower_batch_norm(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"epsilon", "momentum", "training_mode"});
  if (attrs.get_int("training_mode", 0) != 0) {
    fail(node, "training_mode is set; millrace runs inference");
  }
  only_first_output(node, "running statistics are outputs only in training");
  const std::string x = value_input(node, 0);
  Pending* conv = sole_producer(x, {OpKind::kConv});
  if (conv == nullptr || conv->op.activation != Activation::kNone) {
    fail(node,
         "BatchNormalization is supported only directly after a Conv whose output it alone "
         "reads (millrace folds it into the convolution)");
  }
  const auto channels = static_cast<std::size_t>(conv->op.weight.shape[0]);
  const ConstTensor* params[4];
  const char* names[4] = {"scale", "B", "mean", "var"};
  for (int i = 0; i < 4; ++i) {
    params[i] = &const_input(node, i + 1);
    if (params[i]->size() != channels) {
      fail(node, std::string(names[i]) + " has shape " + shape_text(params[i]->shape) + ", not [" +
                     std::to_string(channels) + "]");
    }
  }
  const double epsilon = attrs.get_float("epsilon", 1e-5F);
  Op& op = conv->op;
  if (op.bias.shape.empty()) {
    op.bias = {{static_cast<std::int64_t>(channels)}, std::vector<float>(channels, 0.0F)};
  }
  const std::size_t per_channel = op.weight.data.size() / channels;
  for (std::size_t o = 0; o < channels; ++o) {
    const double variance = params[3]->at(o);
    if (variance + epsilon <= 0) fail(node, "variance + epsilon is not positive");
    const double factor = params[0]->at(o) / std::sqrt(variance + epsilon);
    float* w = op.weight.data.data() + o * per_channel;
    for (std::size_t i = 0; i < per_channel; ++i) {
      w[i] = static_cast<float>(w[i] * factor);
    }
    op.bias.data[o] =
        static_cast<float>((op.bias.data[o] - params[2]->at(o)) * factor + params[1]->at(o));
  }
  rename_output(*conv, node);
}

void Importer::lower_activation(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  float lo = 0.0F;
  float hi = kInf;
  if (node.op_type() == "Clip") {
    auto bound = [&](int index, float fallback) {
      if (!has_input(node, index)) return fallback;
      const ConstTensor& t = const_input(node, index);
      if (t.size() != 1) fail(node, "bound " + shape_text(t.shape) + " is not a scalar");
      return static_cast<float>(t.at(0));
    };
    lo = bound(1, -kInf);
    hi = bound(2, kInf);
    if (lo > hi) fail(node, "min is greater than max");
    if (lo == -kInf && hi == kInf) return alias_output(node, x);
  }
  Pending* producer = sole_producer(x, {OpKind::kConv, OpKind::kGemm, OpKind::kAdd});
  if (producer != nullptr) {
    Op& op = producer->op;
    float new_lo = lo;
    float new_hi = hi;
    if (op.activation != Activation::kNone) {
      // Clamping to [a, b] then to [lo, hi] is clamping to their intersection when they overlap.
      const float a = op.activation == Activation::kRelu ? 0.0F : op.clip_min;
      const float b = op.activation == Activation::kRelu ? kInf : op.clip_max;
      new_lo = std::max(a, lo);
      new_hi = std::min(b, hi);
      if (new_lo > new_hi) producer = nullptr;
    }
    if (producer != nullptr) {
      const bool relu = new_lo == 0.0F && new_hi == kInf;
      op.activation = relu ? Activation::kRelu : Activation::kClip;
      op.clip_min = relu ? 0.0F : new_lo;
      op.clip_max = relu ? 0.0F : new_hi;
      rename_output(*producer, node);
      return;
    }
  }
  const bool relu = lo == 0.0F && hi == kInf;
  Pending& p = emit(node, relu ? OpKind::kRelu : OpKind::kClip, {x}, shape_of(x));
  if (!relu) {
    p.op.clip_min = lo;
    p.op.clip_max = hi;
  }
}

void Importer::lower_add(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  if (!has_input(node, 0) || !has_input(node, 1)) fail(node, "needs two inputs");
  const std::string a = canonical(node.input(0));
  const std::string b = canonical(node.input(1));
  if (is_value(a) && is_value(b)) {
    if (shape_of(a) != shape_of(b)) {
      fail(node, "adds shapes " + shape_text(shape_of(a)) + " and " + shape_text(shape_of(b)) +
                     "; millrace adds only values of the same shape (no broadcasting)");
    }
    emit(node, OpKind::kAdd, {a, b}, shape_of(a));
    return;
  }
  // A constant added to a fully connected layer's output is its bias (MatMul + Add).
  const int value_index = is_value(a) ? 0 : 1;
  const std::string x = value_input(node, value_index);
  const ConstTensor& c = const_input(node, 1 - value_index);
  Pending* gemm = sole_producer(x, {OpKind::kGemm});
  if (gemm == nullptr || gemm->op.activation != Activation::kNone) {
    fail(node,
         "adding a constant is supported only as the bias of a Gemm or MatMul whose output it "
         "alone reads");
  }
  const auto outputs = static_cast<std::size_t>(gemm->op.weight.shape[0]);
  if (!is_bias_for(c, outputs)) {
    fail(node, "constant " + shape_text(c.shape) + " is not a bias for " + std::to_string(outputs) +
                   " outputs");
  }
  Op& op = gemm->op;
  if (op.bias.shape.empty()) {
    op.bias = {{static_cast<std::int64_t>(outputs)}, std::vector<float>(outputs, 0.0F)};
  }
  for (std::size_t o = 0; o < outputs; ++o) op.bias.data[o] += c.floats[c.size() == 1 ? 0 : o];
  rename_output(*gemm, node);
}

void Importer::lower_flatten(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  std::int64_t axis = attrs.get_int("axis", 1);
  if (axis < 0) axis += static_cast<std::int64_t>(in.size());
  if (axis != 1) {
    fail(node, "axis " + std::to_string(attrs.get_int("axis", 1)) +
                   "; millrace flattens only to [N, K] (axis 1)");
  }
  if (in.size() == 2) return alias_output(node, x);
  emit(node, OpKind::kFlatten, {x}, {1, element_count(in) / in[0]});
}

void Importer::lower_reshape(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"allowzero"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  const ConstTensor& target = const_input(node, 1);
  if (!target.integer) fail(node, "the shape input must be int64");
  const bool zero_copies = attrs.get_int("allowzero", 0) == 0;
  const std::int64_t features = element_count(in) / in[0];
  const std::string wanted = shape_text(target.ints);
  auto refuse = [&]() {
    fail(node, "reshapes to " + wanted +
                   "; millrace reshapes only to [N, -1] or [N, K] (a flatten, K = " +
                   std::to_string(features) + ")");
  };
  if (target.ints.size() != 2) refuse();
  std::int64_t n = target.ints[0];
  std::int64_t k = target.ints[1];
  if (k == 0 && zero_copies) k = in.size() > 1 ? in[1] : 0;
  const bool batch_kept =
      (n == 0 && zero_copies) || (n == -1 && k != -1) || (n > 0 && n == input_batch_);
  if (!batch_kept || (k != -1 && k != features)) refuse();
  if (in.size() == 2) return alias_output(node, x);
  emit(node, OpKind::kFlatten, {x}, {1, features});
}

void Importer::lower_gemm(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"alpha", "beta", "transA", "transB"});
  if (attrs.get_int("transA", 0) != 0) fail(node, "transA is not supported");
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 2) {
    fail(node, "input of shape " + shape_text(in) + "; Gemm needs a 2-D input (flatten first)");
  }
  const ConstTensor& b = const_input(node, 1);
  if (b.integer || b.shape.size() != 2) fail(node, "B must be a 2-D float constant");
  const bool trans_b = attrs.get_int("transB", 0) != 0;
  const std::int64_t k = trans_b ? b.shape[1] : b.shape[0];
  const std::int64_t o = trans_b ? b.shape[0] : b.shape[1];
  if (k != in[1]) {
    fail(node, "B " + shape_text(b.shape) + (trans_b ? " (transposed)" : "") +
                   " does not fit an input of shape " + shape_text(in));
  }
  const float alpha = attrs.get_float("alpha", 1.0F);
  const float beta = attrs.get_float("beta", 1.0F);
  Pending& p = emit(node, OpKind::kGemm, {x}, {1, o});
  p.op.weight.shape = {o, k};
  p.op.weight.data.resize(static_cast<std::size_t>(o * k));
  for (std::int64_t r = 0; r < o; ++r) {
    for (std::int64_t c = 0; c < k; ++c) {
      const float v = trans_b ? b.floats[r * k + c] : b.floats[c * o + r];
      p.op.weight.data[r * k + c] = alpha * v;
    }
  }
  if (has_input(node, 2)) {
    const ConstTensor& c = const_input(node, 2);
    if (!is_bias_for(c, static_cast<std::size_t>(o))) {
      fail(node,
           "C " + shape_text(c.shape) + " is not a bias for " + std::to_string(o) + " outputs");
    }
    p.op.bias.shape = {o};
    for (std::int64_t r = 0; r < o; ++r) {
      p.op.bias.data.push_back(beta * c.floats[c.size() == 1 ? 0 : r]);
    }
  }
}

void Importer::lower_matmul(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  if (in.size() != 2) {
    fail(node, "input of shape " + shape_text(in) + "; MatMul needs a 2-D input (flatten first)");
  }
  const ConstTensor& b = const_input(node, 1);
  if (b.integer || b.shape.size() != 2 || b.shape[0] != in[1]) {
    fail(node, "the second input must be a constant [" + std::to_string(in[1]) + ", O], got " +
                   shape_text(b.shape));
  }
  const std::int64_t k = b.shape[0];
  const std::int64_t o = b.shape[1];
  Pending& p = emit(node, OpKind::kGemm, {x}, {1, o});
  p.op.weight.shape = {o, k};
  p.op.weight.data.resize(static_cast<std::size_t>(o * k));
  for (std::int64_t r = 0; r < o; ++r) {
    for (std::int64_t c = 0; c < k; ++c) p.op.weight.data[r * k + c] = b.floats[c * o + r];
  }
}

void Importer::lower_softmax(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  const std::string x = value_input(node, 0);
  const Shape& in = shape_of(x);
  define(node, node.output(0));
  if (canonical(node.output(0)) != output_name_ || uses(node.output(0)) != 1) {
    fail(node,
         "Softmax is supported only as the graph's last operation (millrace reports the logits "
         "before it)");
  }
  std::int64_t axis = attrs.get_int("axis", opset_ >= 13 ? -1 : 1);
  if (axis < 0) axis += static_cast<std::int64_t>(in.size());
  if (in.size() != 2 || axis != 1) {
    fail(node, "Softmax over axis " + std::to_string(attrs.get_int("axis", opset_ >= 13 ? -1 : 1)) +
                   " of shape " + shape_text(in) +
                   "; millrace supports it over the classes of [N, K]");
  }
  logits_name_ = x;
  ends_with_softmax_ = true;
  shapes_[node.output(0)] = in;
}

void Importer::lower_concat(const onnx::NodeProto& node) {
  Attributes attrs = attributes(node, {"axis"});
  if (!attrs.has("axis")) fail(node, "axis is missing");
  std::vector<std::string> inputs;
  inputs.reserve(node.input_size());
  for (int i = 0; i < node.input_size(); ++i) inputs.push_back(value_input(node, i));
  if (inputs.empty()) fail(node, "has no inputs");
  Shape out = shape_of(inputs[0]);
  std::int64_t axis = attrs.get_int("axis", 1);
  if (axis < 0) axis += static_cast<std::int64_t>(out.size());
  if (axis != 1) {
    fail(node, "axis " + std::to_string(attrs.get_int("axis", 1)) +
                   "; millrace concatenates along channels (axis 1) only");
  }
  const Shape& first = shape_of(inputs[0]);
  for (std::size_t i = 1; i < inputs.size(); ++i) {
    const Shape& s = shape_of(inputs[i]);
    bool fits = s.size() == first.size();
    for (std::size_t d = 0; fits && d < s.size(); ++d) fits = d == 1 || s[d] == first[d];
    if (!fits) {
      fail(node, "input shapes " + shape_text(first) + " and " + shape_text(s) +
                     " differ outside axis 1");
    }
    out[1] += s[1];
  }
  if (inputs.size() == 1) return alias_output(node, inputs[0]);
  Pending& p = emit(node, OpKind::kConcat, std::move(inputs), out);
  p.op.axis = 1;
}

Model Importer::finish() {
  const std::string result = ends_with_softmax_ ? logits_name_ : output_name_;
  if (!is_value(result)) {
    fail(constants_.count(result)
             ? "the graph output '" + graph_.output(0).name() + "' is a constant"
             : "the graph output '" + graph_.output(0).name() + "' is not produced by any node");
  }
  if (result == input_name_) fail("the graph computes nothing: its output is its input");

  // Only ops that the output depends on are kept.
  std::vector<bool> keep(pending_.size(), false);
  std::unordered_set<std::string> needed = {result};
  for (std::size_t i = pending_.size(); i-- > 0;) {
    if (!needed.count(pending_[i].output)) continue;
    keep[i] = true;
    for (const auto& in : pending_[i].inputs) needed.insert(in);
  }

  Model model;
  model.path = path_;
  model.input = 0;
  model.input_name = input_name_;
  std::copy(input_shape_.begin(), input_shape_.end(), model.input_shape.begin());
  model.ends_with_softmax = ends_with_softmax_;
  std::unordered_map<std::string, int> ids = {{input_name_, 0}};
  model.value_shapes.push_back(input_shape_);
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    if (!keep[i]) continue;
    Pending& p = pending_[i];
    for (const auto& in : p.inputs) p.op.inputs.push_back(ids.at(in));
    p.op.output = static_cast<int>(model.value_shapes.size());
    ids[p.output] = p.op.output;
    model.value_shapes.push_back(shapes_.at(p.output));
    model.ops.push_back(std::move(p.op));
  }
  model.output = ids.at(result);
  return model;
}

Model Importer::run() {
  check_header();
  check_operators();
  read_initializers();
  read_input();
  count_uses();
  for (const auto& node : graph_.node()) lower(node);
  return finish();
}

}  // namespace

Model import_onnx_bytes(std::string_view bytes, const std::string& path, std::uint64_t max_bytes) {
  if (bytes.size() > max_bytes) {
    throw ModelError(path + ": the model is " + std::to_string(bytes.size()) +
                     " bytes, above max_model_bytes " + std::to_string(max_bytes) +
                     " (raise infer's max_model_bytes to load it)");
  }
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw ModelError(path + ": the model is " + std::to_string(bytes.size()) +
                     " bytes, above protobuf's 2 GiB limit on one message");
  }
  onnx::ModelProto proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw ModelError(path + ": not an ONNX model (the file does not parse as an ONNX ModelProto)");
  }
  return Importer(path, proto, max_bytes - bytes.size()).run();
}

Model import_onnx(const std::string& path, std::uint64_t max_bytes) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    if (std::filesystem::exists(path, error)) throw ModelError(path + ": not a regular file");
    throw ModelError(path + ": no such model file");
  }
  // Refused from its size, before a byte of it is read into memory.
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  if (error) throw ModelError(path + ": cannot read the model file's size: " + error.message());
  if (size > max_bytes) {
    throw ModelError(path + ": the model file is " + std::to_string(size) +
                     " bytes, above max_model_bytes " + std::to_string(max_bytes) +
                     " (raise infer's max_model_bytes to load it)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(path + ": cannot open the model file");
  std::string bytes(static_cast<std::size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (in.gcount() != static_cast<std::streamsize>(bytes.size())) {
    throw ModelError(path + ": cannot read the model file");
  }
  return import_onnx_bytes(bytes, path, max_bytes);
}

}  // namespace millrace::infer
