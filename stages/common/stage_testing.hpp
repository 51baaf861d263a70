// Helpers for tests that drive stages directly, one sample at a time, without a pipeline: a
// reporter that drops warnings and the context a stage would get from the config. Test code only.
#pragma once

#include <cstdint>
#include <string>

#include "engine/random.hpp"
#include "engine/stage.hpp"

namespace millrace::testing {

class NullReporter final : public RunReporter {
 public:
  void warn(const Sample&, const std::string&, const std::string&) override {}
};

// The context of a stage named (and typed) `name`, with the pipeline seed `seed`.
inline StageContext stage_context(const std::string& name, std::uint64_t seed) {
  StageContext c;
  c.name = name;
  c.type = name;
  c.seed = seed;
  c.stage_key = stable_hash(name);
  return c;
}

}  // namespace millrace::testing
