// The ONNX front end's inside, shared by its two halves: onnx_import.cpp reads the protobuf (the
// header and opset, the operator list, tensors and external data, the one input, readers per value)
// and assembles the Model; onnx_lower.cpp lowers each operator (one function per operator) into
// pending ops. import_onnx() (onnx_import.hpp) is the interface; nothing outside the front end
// includes this header.
//
// Contract: an Importer reads one parsed model once, on one thread, and throws ModelError (the
// path, then the node and its op type when one is at fault) for anything millrace cannot run.
#pragma once

// Debian's libonnx-dev ships only the ONNX-ML flavour of the generated classes (a superset of
// plain ONNX), selected by this macro; onnx_pb.h also defines the ONNX_API it uses.
#ifndef ONNX_ML
#define ONNX_ML 1
#endif
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stages/infer/model.hpp"

namespace millrace::infer::onnx_front {

// ONNX stores raw tensor bytes little-endian; they are copied as they are.
static_assert(std::endian::native == std::endian::little);

inline constexpr std::int64_t kMinOpset = 11;
inline constexpr std::int64_t kMaxOpset = 17;
inline constexpr const char* kSupportedOps =
    "Conv, Relu, Clip, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Add, Flatten, "
    "Reshape, Gemm, MatMul, Softmax, Identity, Constant, Dropout, Concat";
inline constexpr float kInf = std::numeric_limits<float>::infinity();

using Shape = std::vector<std::int64_t>;

std::string shape_text(const Shape& shape);

// Saturates instead of overflowing: a corrupt file's absurd dimensions then fail the size checks
// that follow instead of wrapping around.
std::int64_t element_count(const Shape& shape);

std::string data_type_name(int type);

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
bool is_bias_for(const ConstTensor& c, std::size_t n);

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

}  // namespace millrace::infer::onnx_front
