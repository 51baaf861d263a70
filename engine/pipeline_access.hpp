// Engine-internal access to a Pipeline: building one over another stage registry (stages that are
// not built in) and reading its internals in white-box tests.
//
// Contract: same threading rules as Pipeline itself; impl() is valid while the Pipeline lives.
#pragma once

#include <string_view>
#include <vector>

#include "engine/registry.hpp"
#include "engine/runtime.hpp"
#include "millrace/pipeline.hpp"

namespace millrace {

struct PipelineAccess {
  static Pipeline from_string(std::string_view yaml, const Registry& registry,
                              const std::vector<std::string>& overrides = {});
  static Pipeline::Impl& impl(Pipeline& p) { return *p.impl_; }
};

}  // namespace millrace
