#include "stages/infer/graph_analysis.hpp"

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

namespace millrace::infer {

bool nonnegative_activation(const Op& op) {
  return op.activation == Activation::kRelu ||
         (op.activation == Activation::kClip && op.clip_min >= 0.0F);
}

std::string model_where(const Model& model, const Op& op) {
  return model.path + ": node '" + op.name + "'";
}

Graph analyze(const Model& model, DType input_type) {
  const int n = model.value_count();
  const int ops = static_cast<int>(model.ops.size());
  if (n == 0 || model.input < 0 || model.input >= n) {
    throw ModelError(model.path + ": the model has no valid input value");
  }
  if (model.output < 0 || model.output >= n) {
    throw ModelError(model.path + ": the model has no valid output value");
  }
  if (model.value_shapes[model.input].size() != 4) {
    throw ModelError(model.path + ": the network input must be 4-D (NCHW)");
  }
  Graph g;
  g.producer.assign(n, -1);
  g.consumers.assign(n, {});
  g.sum_into.assign(ops, -1);
  g.fused_conv.assign(ops, -1);
  g.sum_addend.assign(ops, -1);
  std::vector<bool> defined(n, false);
  defined[model.input] = true;
  for (int k = 0; k < ops; ++k) {
    const Op& op = model.ops[k];
    for (int v : op.inputs) {
      if (v < 0 || v >= n || !defined[v]) {
        throw ModelError(model_where(model, op) + " reads value " + std::to_string(v) +
                         " before it is produced");
      }
      g.consumers[v].push_back(k);
    }
    if (op.output < 0 || op.output >= n || defined[op.output]) {
      throw ModelError(model_where(model, op) + " has an invalid output value");
    }
    defined[op.output] = true;
    g.producer[op.output] = k;
  }
  if (!defined[model.output]) throw ModelError(model.path + ": the output value is never produced");
  if (g.consumers[model.input].empty()) throw ModelError(model.path + ": nothing reads the input");
  for (int k : g.consumers[model.input]) {
    if (model.ops[k].kind != OpKind::kConv) {
      throw ModelError(model_where(model, model.ops[k]) +
                       ": the network input must feed convolutions only");
    }
  }

  // Whether `v`, or a Flatten view of it (which shares its buffer), is read by an op after op
  // `after` other than `except`, or is the network's output.
  std::function<bool(int, int, int)> read_after = [&](int v, int after, int except) {
    if (v == model.output) return true;
    for (int reader : g.consumers[v]) {
      if (reader != except && reader > after) return true;
      if (model.ops[reader].kind == OpKind::kFlatten &&
          read_after(model.ops[reader].output, after, except)) {
        return true;
      }
    }
    return false;
  };
  // Add(a, b) runs as conv_b(...) + a written over a's buffer when b comes from a convolution
  // read by nothing else, and a is computed before that convolution and read by nothing from that
  // convolution on: not even by the convolution itself, which would overwrite its own source
  // while its later output pixels still read it (Add(x, Conv(x)) must stay unfused).
  for (int k = 0; k < ops; ++k) {
    const Op& add = model.ops[k];
    if (add.kind != OpKind::kAdd || add.inputs.size() != 2 || add.output == model.output) continue;
    for (int which : {1, 0}) {
      const int b = add.inputs[which];
      const int a = add.inputs[1 - which];
      const int c = g.producer[b];
      if (a == b || c < 0 || model.ops[c].kind != OpKind::kConv || g.sum_into[c] >= 0) continue;
      if (g.consumers[b].size() != 1 || b == model.output) continue;
      if (a == model.input || a == model.output || g.producer[a] < 0 || g.producer[a] >= c)
        continue;
      if (model.ops[g.producer[a]].kind == OpKind::kFlatten) continue;
      if (model.value_shapes[a] != model.value_shapes[b]) continue;
      if (read_after(a, c - 1, k)) continue;
      g.sum_into[c] = k;
      g.fused_conv[k] = c;
      g.sum_addend[k] = a;
      break;
    }
  }

  g.is_unsigned.assign(n, false);
  g.is_unsigned[model.input] = input_type == DType::kUInt8;
  for (const Op& op : model.ops) {
    bool u = false;
    switch (op.kind) {
      case OpKind::kConv:
      case OpKind::kGemm:
      case OpKind::kAdd:
        u = nonnegative_activation(op);
        break;
      case OpKind::kConcat:
        u = true;
        for (int v : op.inputs) u = u && g.is_unsigned[v];
        break;
      default:  // pooling, standalone activations and Flatten keep their input's type
        u = !op.inputs.empty() && g.is_unsigned[op.inputs[0]];
        break;
    }
    g.is_unsigned[op.output] = u;
  }

  // Union-find over values: a fused Add joins its addend, convolution output and result.
  std::vector<int> parent(n);
  for (int v = 0; v < n; ++v) parent[v] = v;
  const std::function<int(int)> root = [&](int v) {
    return parent[v] == v ? v : parent[v] = root(parent[v]);
  };
  for (int k = 0; k < ops; ++k) {
    if (g.fused_conv[k] < 0) continue;
    const int o = root(model.ops[k].output);
    for (int v : model.ops[k].inputs) parent[root(v)] = o;
  }
  const auto saturates = [](const Op& op, bool alone) {
    return op.activation == Activation::kNone || op.activation == Activation::kRelu ||
           (alone && op.activation == Activation::kClip && op.clip_min == 0.0F);
  };
  std::vector<int> members(n, 0);
  for (int v = 0; v < n; ++v) ++members[root(v)];
  std::vector<bool> valid(n, true);
  for (int v = 0; v < n; ++v) {
    const int r = root(v);
    const int p = g.producer[v];
    bool ok = p >= 0 && v != model.output && !g.consumers[v].empty() &&
              model.value_shapes[v].size() == 4 && g.is_unsigned[v] == g.is_unsigned[r];
    if (ok) {
      const Op& op = model.ops[p];
      const bool by_conv = op.kind == OpKind::kConv;
      const bool by_fused_add = op.kind == OpKind::kAdd && g.fused_conv[p] >= 0;
      ok = (by_conv || by_fused_add) && saturates(op, members[r] == 1);
    }
    for (int reader : g.consumers[v]) {
      const Op& op = model.ops[reader];
      ok = ok &&
           (op.kind == OpKind::kConv || (op.kind == OpKind::kAdd && g.fused_conv[reader] >= 0));
    }
    if (!ok) valid[r] = false;
  }
  g.channel_ranged.assign(n, false);
  g.channel_group.assign(n, -1);
  for (int v = 0; v < n; ++v) {
    if (!valid[root(v)]) continue;
    g.channel_ranged[v] = true;
    g.channel_group[v] = root(v);
  }
  return g;
}

}  // namespace millrace::infer
