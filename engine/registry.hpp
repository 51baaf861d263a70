// The stage registry: every stage type millrace knows, with its schema and documentation.
//
// Contract: the built-in registry is filled by one explicit function, register_builtin_stages()
// (stages/register_builtin.cpp), never by static self-registration, which static linking can
// silently drop. A Registry is filled before use and then only read: concurrent reads are safe.
#pragma once

#include <concepts>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/schema.hpp"
#include "engine/stage.hpp"

namespace millrace {

struct StageInfo {
  std::string type;     // the YAML `type`, snake_case
  std::string summary;  // one line
  StageShape shape = StageShape::kTransform;
  std::string takes;               // what it consumes, in words
  std::string gives;               // what it produces
  bool concurrent = false;         // may process several samples at once
  bool per_sample_errors = false;  // has an on_error policy
  // What its samples must carry when they arrive and what they carry after it (engine/stream.hpp):
  // the order of stages is checked through it when the config is read.
  ContentStep content;
};

class StageFactory {
 public:
  virtual ~StageFactory() = default;
  virtual const StageInfo& info() const = 0;
  virtual const SchemaBase& schema() const = 0;
  // Parses and checks the stage's own keys (all of them, reporting every problem) and, when they
  // are valid, constructs the stage. Returns nullptr when there were errors.
  virtual std::unique_ptr<Stage> create(const ConfigNode& params, const StageContext& context,
                                        const std::vector<std::string>& engine_keys,
                                        Diagnostics& diagnostics) const = 0;
};

// A stage type S provides: `struct Params`, `static StageInfo info()`,
// `static const Schema<Params>& schema()`, optionally
// `static void check(const Params&, const ConfigNode&, const std::string& context, Diagnostics&)`
// for cross-parameter rules, and a constructor S(StageContext, Params).
template <class S>
class StageFactoryFor final : public StageFactory {
 public:
  StageFactoryFor() : info_(S::info()) {}
  const StageInfo& info() const override { return info_; }
  const SchemaBase& schema() const override { return S::schema(); }
  std::unique_ptr<Stage> create(const ConfigNode& params, const StageContext& context,
                                const std::vector<std::string>& engine_keys,
                                Diagnostics& diagnostics) const override {
    typename S::Params p;
    const std::string where = "stage '" + context.name + "' (" + context.type + ")";
    const std::size_t before = diagnostics.error_count();
    S::schema().parse(p, params, where, engine_keys, diagnostics);
    if constexpr (requires { S::check(p, params, where, diagnostics); }) {
      if (diagnostics.error_count() == before) S::check(p, params, where, diagnostics);
    }
    if (diagnostics.error_count() != before) return nullptr;
    return std::make_unique<S>(context, std::move(p));
  }

 private:
  StageInfo info_;
};

class Registry {
 public:
  template <class S>
  void add() {
    factories_.push_back(std::make_unique<StageFactoryFor<S>>());
  }
  const StageFactory* find(const std::string& type) const;
  std::vector<const StageFactory*> all() const;
  std::vector<std::string> types() const;
  // The registry of built-in stages, filled once on first use.
  static const Registry& builtin();

 private:
  std::vector<std::unique_ptr<StageFactory>> factories_;
};

// Defined in stages/register_builtin.cpp: the one list of built-in stages.
void register_builtin_stages(Registry& registry);

}  // namespace millrace
