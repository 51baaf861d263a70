// The oneDNN builder: compiles a Model into a Program (program.hpp) for one batch size, with the
// types and scales a ScalePlan (planner.hpp) decided.
//
// What it owns: the primitive descriptors (every layout left to oneDNN through format_tag::any,
// the Winograd algorithm where NetworkOptions::winograd asks and oneDNN has a kernel), one builder
// per operator (convolution + bias + activation + the fused residual Add as a sum post-op in one
// primitive, pooling, binary Add, eltwise, inner product, concat, Flatten as a view), the reorders
// that adapt a value to the form a reader's primitive chose (one per form, shared by its readers),
// and the weights and bias memories, reordered once into the chosen layouts. Where a fused Add
// would force oneDNN onto its reference kernel and the plain convolution would not, the Add runs
// on its own. A calibration program is the fp32 graph with every value's range observable and no
// Add fused, so that either choice later finds both addends' ranges in the table.
//
// Contract: builds and returns; it keeps nothing. It runs on the network's thread; the engine and
// stream are the caller's and outlive the Program. An unsupported shape or inconsistent weights
// throw ModelError naming the model and the node; a scale the table lacks, CalibrationError.
#pragma once

#include <memory>
#include <oneapi/dnnl/dnnl.hpp>

#include "engine/layout.hpp"
#include "stages/infer/graph_analysis.hpp"
#include "stages/infer/model.hpp"
#include "stages/infer/network.hpp"
#include "stages/infer/planner.hpp"
#include "stages/infer/program.hpp"

namespace millrace::infer {

// Compiles `model` for `options.batch` samples (options.threads is the caller's business: it sets
// the OpenMP team the primitives are planned for). `observe`: a calibration program (see above);
// `plan` must then be fp32.
std::unique_ptr<Program> build_program(const Model& model, const Graph& graph,
                                       const ScalePlan& plan, const NetworkOptions& options,
                                       const dnnl::engine& engine, dnnl::stream& stream,
                                       bool observe);

// The layout the first convolution picks for the network input when left free, at `options`'
// precision: what the loader should write so that no reorder runs. Needs no calibration.
Layout probe_input_layout(const Model& model, const Graph& graph, const NetworkOptions& options,
                          const dnnl::engine& engine);

}  // namespace millrace::infer
