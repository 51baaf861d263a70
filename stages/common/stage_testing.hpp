// Helpers for tests that drive stages directly, one sample at a time, without a pipeline: a
// reporter that drops warnings, the context a stage would get from the config, a stage built
// from YAML through the registry, and a source's samples drawn and loaded. Test code only.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/config_node.hpp"
#include "engine/random.hpp"
#include "engine/registry.hpp"
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

// Builds a stage of `type` from YAML exactly as a pipeline does (the keys every stage takes are
// the engine's), failing the test on any diagnostic or if the stage is not an S; null then.
template <class S>
std::unique_ptr<S> make_stage(const std::string& type, const std::string& yaml,
                              std::uint64_t pipeline_seed = 0) {
  static const std::vector<std::string> kEngineKeys{"type", "name", "concurrency", "queue",
                                                    "on_error"};
  Diagnostics d;
  ConfigNode node = load_config_document(yaml, "test.yaml", d);
  const StageFactory* factory = Registry::builtin().find(type);
  EXPECT_NE(factory, nullptr) << type;
  if (factory == nullptr) return nullptr;
  StageContext context;
  context.name = type;
  context.type = type;
  context.where = node.where;
  context.seed = pipeline_seed;
  std::unique_ptr<Stage> stage = factory->create(node, context, kEngineKeys, d);
  for (const auto& diagnostic : d.all()) ADD_FAILURE() << diagnostic.to_string();
  auto* typed = dynamic_cast<S*>(stage.get());
  EXPECT_NE(typed, nullptr) << type;
  if (typed == nullptr) return nullptr;
  static_cast<void>(stage.release());  // ownership moves to the typed pointer
  return std::unique_ptr<S>(typed);
}

// One sample drawn from a source and loaded: `error` is what load() refused it with ("" when it
// loaded).
struct Loaded {
  Sample sample;
  std::string error;
};

// Draws the prepared `source`'s samples up to its first epoch's end and loads each, as a pipeline
// does; any other exception than a SampleError escapes, as it would fail a run.
inline std::vector<Loaded> load_epoch(SourceStage& source) {
  std::vector<Loaded> out;
  for (;;) {
    Loaded l;
    if (source.next(l.sample) != SourceStatus::kSample) break;
    try {
      source.load(l.sample);
    } catch (const SampleError& e) {
      l.error = e.what();
    }
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace millrace::testing
