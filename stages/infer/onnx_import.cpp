#include "stages/infer/onnx_import.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "stages/infer/onnx_importer.hpp"

namespace millrace::infer {
namespace onnx_front {

std::string shape_text(const Shape& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + "]";
}

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

bool is_bias_for(const ConstTensor& c, std::size_t n) {
  if (c.integer) return false;
  if (c.size() == 1) return true;
  return c.size() == n && !c.shape.empty() && static_cast<std::size_t>(c.shape.back()) == n;
}

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

}  // namespace onnx_front

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
  return onnx_front::Importer(path, proto, max_bytes - bytes.size()).run();
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
