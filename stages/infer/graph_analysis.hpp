// The model's structure, independent of precision and of oneDNN: the first half of the planner
// (planner.hpp turns it into scales; builder.hpp compiles it). analyze() checks that the graph is
// one the builder can compile (every value produced once before it is read, a 4-D input read by
// convolutions alone), finds which residual Adds fuse into a convolution as a sum post-op, which
// values are u8 in the int8 network and which may take a scale per channel.
//
// Contract: pure functions of the model (and the input's element type); they throw ModelError
// naming the model and the node for a graph the builder cannot take, and allocate only their
// results.
#pragma once

#include <string>
#include <vector>

#include "engine/layout.hpp"
#include "stages/infer/model.hpp"

namespace millrace::infer {

// ---------------------------------------------------------------------------------------------
// Structure of the model, independent of precision: who produces and reads each value, and
// which residual Adds become a sum post-op of the convolution producing one addend.
struct Graph {
  std::vector<int> producer;                // op index per value; -1: the input or unset
  std::vector<std::vector<int>> consumers;  // op indices per value
  std::vector<int> sum_into;                // per op: a Conv's fused Add op, else -1
  std::vector<int> fused_conv;              // per op: a fused Add's Conv op, else -1
  std::vector<int> sum_addend;              // per op: a fused Add's in-place addend value
  std::vector<bool> is_unsigned;            // per value: u8 in the int8 network
  // Per value: whether it may be quantized with a scale per channel, and the group of values
  // that must share those scales (-1: none). A value qualifies when convolutions alone read it
  // (a fused residual Add counts as its convolution) and its activation is one the int8 type's
  // saturation reproduces channel by channel (none for s8; ReLU, or a Clip from 0, for u8). A
  // fused Add puts its addend, its convolution's output and its result in one group (the sum
  // post-op adds stored values at one scale), so a residual stream shares one set of scales;
  // such a group takes no Clip (one channel's clip would differ between its members).
  std::vector<bool> channel_ranged;
  std::vector<int> channel_group;
};

// `input_type`: the loader's element type (uint8 input makes the input value u8).
Graph analyze(const Model& model, DType input_type);

// Whether `op`'s activation leaves no negative value (ReLU, or a Clip from 0 or above).
bool nonnegative_activation(const Op& op);
// "MODEL: node 'NAME'", the start of a message about one node.
std::string model_where(const Model& model, const Op& op);

}  // namespace millrace::infer
