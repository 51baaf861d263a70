#include "engine/config.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <sstream>
#include <thread>

#include "engine/config_override.hpp"
#include "engine/random.hpp"

namespace millrace {

namespace {

std::string describe(const ConfigNode& n) {
  if (n.is_scalar()) return (n.quoted ? "the string '" : "'") + n.scalar + "'";
  return std::string(n.kind_name());
}

}  // namespace

bool read_int(const ConfigNode& node, std::int64_t& out, const std::string& context,
              Diagnostics& diagnostics) {
  if (node.is_scalar() && !node.quoted) {
    const char* begin = node.scalar.data();
    const char* end = begin + node.scalar.size();
    auto [ptr, ec] = std::from_chars(begin, end, out);
    if (ec == std::errc() && ptr == end) return true;
    if (ec == std::errc::result_out_of_range) {
      diagnostics.error(node.where, context + " is out of range: " + node.scalar);
      return false;
    }
  }
  diagnostics.error(node.where, context + " expects an integer, got " + describe(node));
  return false;
}

bool read_number(const ConfigNode& node, double& out, const std::string& context,
                 Diagnostics& diagnostics) {
  if (node.is_scalar() && !node.quoted) {
    const char* begin = node.scalar.data();
    const char* end = begin + node.scalar.size();
    auto [ptr, ec] = std::from_chars(begin, end, out);
    if (ec == std::errc() && ptr == end && std::isfinite(out)) return true;
  }
  diagnostics.error(node.where, context + " expects a number, got " + describe(node));
  return false;
}

bool read_bool(const ConfigNode& node, bool& out, const std::string& context,
               Diagnostics& diagnostics) {
  if (node.is_scalar() && !node.quoted) {
    const std::string& s = node.scalar;
    if (s == "true" || s == "True" || s == "yes" || s == "on") {
      out = true;
      return true;
    }
    if (s == "false" || s == "False" || s == "no" || s == "off") {
      out = false;
      return true;
    }
  }
  diagnostics.error(node.where, context + " expects true or false, got " + describe(node));
  return false;
}

bool read_string(const ConfigNode& node, std::string& out, const std::string& context,
                 Diagnostics& diagnostics) {
  if (node.is_scalar()) {
    out = node.scalar;
    return true;
  }
  diagnostics.error(node.where, context + " expects a string, got " + describe(node));
  return false;
}

bool read_path(const ConfigNode& node, std::string& out, const std::string& context,
               Diagnostics& diagnostics) {
  std::string value;
  if (!read_string(node, value, context, diagnostics)) return false;
  out = resolve_config_path(node.where, value);
  return true;
}

std::string format_number(double value) {
  std::ostringstream out;
  out.precision(10);
  out << value;
  return out.str();
}

const StageFactory* Registry::find(const std::string& type) const {
  for (const auto& f : factories_) {
    if (f->info().type == type) return f.get();
  }
  return nullptr;
}

std::vector<const StageFactory*> Registry::all() const {
  std::vector<const StageFactory*> out;
  for (const auto& f : factories_) out.push_back(f.get());
  return out;
}

std::vector<std::string> Registry::types() const {
  std::vector<std::string> out;
  for (const auto& f : factories_) out.push_back(f->info().type);
  return out;
}

const Registry& Registry::builtin() {
  static const Registry registry = [] {
    Registry r;
    register_builtin_stages(r);
    return r;
  }();
  return registry;
}

std::string_view shape_name(StageShape shape) {
  switch (shape) {
    case StageShape::kSource:
      return "source";
    case StageShape::kTransform:
      return "transform";
    case StageShape::kBatch:
      return "batch";
    case StageShape::kBatchTransform:
      return "batch transform";
    case StageShape::kSink:
      return "sink";
  }
  return "?";
}

namespace {

void parse_max_errors(const ConfigNode& n, PipelinePlan& plan, Diagnostics& d);

// The keys of the `pipeline` section. Defaults are PipelinePlan's member initialisers.
const Schema<PipelinePlan>& pipeline_schema() {
  static const Schema<PipelinePlan> schema = [] {
    Schema<PipelinePlan> s;
    s.string("name", &PipelinePlan::name, "a name for reports");
    s.integer("threads", &PipelinePlan::threads, "TBB worker threads", 1, 1024)
        .shown_default("all cores");
    s.integer("queue", &PipelinePlan::queue,
              "default queue of every edge between two stages: items that may wait in it, on top "
              "of one per slot of the stage that fills it",
              1, 1 << 20);
    s.boolean("ordered", &PipelinePlan::ordered,
              "deliver samples in source order (false: as they complete)");
    s.integer("prefetch", &PipelinePlan::prefetch, "batches handed to the consumer ahead of it", 1,
              1 << 20);
    s.custom("seed", "integer", "seed of every stage's random stream (augmentations)",
             std::to_string(PipelinePlan{}.seed),
             [](PipelinePlan& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               std::int64_t i = 0;
               if (!read_int(n, i, c, d)) return;
               if (i < 0) {
                 d.error(n.where, c + " must not be negative");
               } else {
                 p.seed = static_cast<std::uint64_t>(i);
               }
             });
    s.custom("max_errors", "integer | fraction | N%",
             "fail the run when more samples than this are skipped (a count, or a fraction of the "
             "samples read)",
             "no limit",
             [](PipelinePlan& p, const ConfigNode& n, const std::string&, Diagnostics& d) {
               parse_max_errors(n, p, d);
             });
    s.custom("trace", "path",
             "write a Chrome trace event file of the run here (open it in Perfetto or "
             "chrome://tracing): a span per stage invocation on a track per worker thread, queue "
             "occupancy counters",
             "none",
             [](PipelinePlan& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               if (read_path(n, p.trace, c, d) && p.trace.empty()) {
                 d.error(n.where, c + " expects a file path, got an empty string");
               }
             });
    s.integer("trace_events", &PipelinePlan::trace_events,
              "trace events kept per thread; a longer run keeps each thread's latest ones and "
              "counts the older ones as dropped",
              1, 1 << 20);
    return s;
  }();
  return schema;
}

std::string stage_where(const StagePlan& plan) {
  return "stage '" + plan.name + "' (" + plan.type + ")";
}

// The engine's keys of every stage, beside the stage's own (`type` and `name` are read first, to
// know the stage). Their defaults depend on the pipeline and the stage: parse_common_keys sets
// them before parsing.
const Schema<StagePlan>& common_schema() {
  static const Schema<StagePlan> schema = [] {
    Schema<StagePlan> s;
    s.custom(
        "concurrency", "integer | serial | auto",
        "samples processed at once; auto (concurrent stages): measure each auto stage's cost per "
        "item over the first items, then split pipeline.threads between them in proportion",
        "pipeline.threads for concurrent stages, else serial",
        [](StagePlan& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          const std::string where = stage_where(p);
          const StageInfo& info = p.factory->info();
          std::int64_t v = 0;
          if (n.is_scalar() && n.scalar == "serial") {
            p.concurrency = 1;
          } else if (n.is_scalar() && n.scalar == "auto") {
            if (!info.concurrent) {
              d.error(n.where, where + ": 'concurrency: auto' balances concurrent stages; a " +
                                   std::string(shape_name(info.shape)) + " stage of type '" +
                                   p.type + "' runs serially");
            } else {
              p.concurrency_auto = true;
            }
          } else if (read_int(n, v, c, d)) {
            if (v < 1 || v > 1024) {
              d.error(n.where, c + " is out of range: " + std::to_string(v) +
                                   " not in 1..1024 (or 'serial')");
            } else if (v > 1 && !info.concurrent) {
              d.error(n.where, c + " must be 1 or 'serial': a " +
                                   std::string(shape_name(info.shape)) + " stage of type '" +
                                   p.type + "' runs serially");
            } else {
              p.concurrency = static_cast<int>(v);
            }
          }
        });
    s.custom(
        "queue", "integer",
        "items that may wait in the edge into this stage; the edge also holds one item per slot "
        "of the stage before it, so that stage always runs at its full concurrency (ordered mode: "
        "the batch stage's edge defaults to the sum of the edges before it, its reordering window)",
        "pipeline.queue",
        [](StagePlan& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
          std::int64_t q = 0;
          if (!read_int(n, q, c, d)) return;
          if (q < 1 || q > (1 << 20)) {
            d.error(n.where, c + " is out of range: " + std::to_string(q) + " not in 1..1048576");
          } else {
            p.queue = static_cast<int>(q);
            p.queue_set = true;
          }
        });
    s.custom("on_error", "skip | fail",
             "per-sample errors: skip the sample and list it, or fail the run (stages that can "
             "fail on one sample)",
             StagePlan{}.on_error == OnError::kSkip ? "skip" : "fail",
             [](StagePlan& p, const ConfigNode& n, const std::string& c, Diagnostics& d) {
               // A stage without per-sample errors has no such key: left to the stage schema's
               // unknown-key report, which lists the keys this stage has.
               if (!p.factory->info().per_sample_errors) return;
               std::string v;
               if (!read_string(n, v, c, d)) return;
               if (v == "skip") {
                 p.on_error = OnError::kSkip;
               } else if (v == "fail") {
                 p.on_error = OnError::kFail;
               } else {
                 d.error(n.where, c + " expects one of skip | fail, got '" + v + "'");
               }
             });
    return s;
  }();
  return schema;
}

}  // namespace

std::vector<ParamDoc> pipeline_key_docs() { return pipeline_schema().docs(); }

std::vector<ParamDoc> common_stage_key_docs() {
  std::vector<ParamDoc> docs{
      {"type", "string", "(required)", "the stage type", true},
      {"name", "string", "the type", "unique name; `--set NAME.key=value` addresses it", false},
  };
  for (ParamDoc& doc : common_schema().docs()) docs.push_back(std::move(doc));
  return docs;
}

namespace {

void parse_max_errors(const ConfigNode& n, PipelinePlan& plan, Diagnostics& d) {
  const std::string context = "pipeline: 'max_errors'";
  if (n.is_scalar() && !n.scalar.empty() && n.scalar.back() == '%') {
    ConfigNode number = n;
    number.scalar.pop_back();
    number.quoted = false;
    double percent = 0;
    if (read_number(number, percent, context, d)) {
      if (percent < 0 || percent > 100) {
        d.error(n.where, context + " expects a percentage in 0..100%, got " + n.scalar);
      } else {
        plan.max_error_fraction = percent / 100.0;
      }
    }
    return;
  }
  double value = 0;
  if (!read_number(n, value, context, d)) return;
  if (value < 0) {
    d.error(n.where, context + " must not be negative");
  } else if (value < 1 && value != 0) {
    plan.max_error_fraction = value;
  } else if (value != std::floor(value)) {
    d.error(n.where,
            context + " expects a count (an integer) or a fraction below 1, got " + n.scalar);
  } else {
    plan.max_error_count = static_cast<std::int64_t>(value);
  }
}

void parse_pipeline_section(const ConfigNode& section, PipelinePlan& plan, Diagnostics& d) {
  if (!section.is_map()) {
    d.error(section.where, "'pipeline' expects a mapping, got " + describe(section));
    return;
  }
  pipeline_schema().parse(plan, section, "pipeline", {}, d);
}

// The engine's own keys of one stage; the rest goes to the stage's schema.
void parse_common_keys(const ConfigNode& stage, StagePlan& plan, const PipelinePlan& pipeline,
                       Diagnostics& d) {
  const std::string where = "stage '" + plan.name + "' (" + plan.type + ")";
  const StageInfo& info = plan.factory->info();
  plan.queue = pipeline.queue;
  plan.concurrency = info.concurrent ? pipeline.threads : 1;
  common_schema().parse_known(plan, stage, where, d);
}

void check_structure(PipelinePlan& plan, const ConfigNode& stages_node, Diagnostics& d) {
  int batch_index = -1;
  // The content part of the stream description, before any stage is built: each stage type's
  // declared step, carried from the source on.
  StreamDesc stream;
  for (std::size_t i = 0; i < plan.stages.size(); ++i) {
    const StagePlan& s = plan.stages[i];
    if (s.factory == nullptr) continue;
    const StageShape shape = s.factory->info().shape;
    const std::string where = "stage '" + s.name + "' (" + s.type + ")";
    if (const std::string why = pass_content(stream, s.factory->info().content, where);
        !why.empty()) {
      d.error(s.where, where + ": " + why);
    }
    if (i == 0 && shape != StageShape::kSource) {
      d.error(s.where, where + ": the first stage must be a source (files, ...), not a " +
                           std::string(shape_name(shape)));
    }
    if (i > 0 && shape == StageShape::kSource) {
      d.error(s.where, where + ": a pipeline has one source, and it comes first");
    }
    if (shape == StageShape::kBatch) {
      if (batch_index >= 0) {
        d.error(s.where, where + ": a pipeline has one batch stage (the first is '" +
                             plan.stages[static_cast<std::size_t>(batch_index)].name + "')");
      }
      batch_index = static_cast<int>(i);
    }
    if (shape == StageShape::kTransform && batch_index >= 0) {
      d.error(s.where, where + ": sample transforms come before the batch stage");
    }
    if (shape == StageShape::kBatchTransform && batch_index < 0) {
      d.error(s.where, where +
                           ": a batch transform works on batches, so it comes after the batch "
                           "stage");
    }
    if (shape == StageShape::kSink && batch_index < 0) {
      d.error(s.where, where + ": a sink consumes batches, so it comes after the batch stage");
    }
  }
  if (batch_index < 0 && !plan.stages.empty()) {
    d.error(stages_node.where, "the pipeline has no batch stage (add `- type: batch`)");
  }
}

// The keys that leave the delivered stream as it is: how fast and where it runs, the part a
// process reads, how many epochs; the source's location keys are identified by its data set
// digest instead (the same files elsewhere are the same data set).
bool stream_neutral(std::string_view section, std::string_view key, bool source) {
  if (section == "pipeline") {
    return key == "name" || key == "threads" || key == "queue" || key == "prefetch" ||
           key == "trace" || key == "trace_events" || key == "max_errors";
  }
  if (key == "concurrency" || key == "queue") return true;
  return source && (key == "root" || key == "list" || key == "path" || key == "index" ||
                    key == "num_parts" || key == "part_index" || key == "split" ||
                    key == "epochs" || key == "max_file_bytes" || key == "max_record_bytes");
}

void canonical(const ConfigNode& n, std::string& out) {
  switch (n.kind) {
    case ConfigNode::Kind::kNull:
      out += "~";
      break;
    case ConfigNode::Kind::kScalar:
      // Quoting left out: a dict config's JSON quotes what the same YAML file leaves plain.
      out += std::to_string(n.scalar.size()) + ':' + n.scalar;
      break;
    case ConfigNode::Kind::kSequence:
      out += '[';
      for (const ConfigNode& item : n.items) canonical(item, out), out += ',';
      out += ']';
      break;
    case ConfigNode::Kind::kMap: {
      std::vector<const std::pair<ConfigNode, ConfigNode>*> sorted;
      for (const auto& e : n.entries) sorted.push_back(&e);
      std::stable_sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
        return a->first.scalar < b->first.scalar;
      });
      out += '{';
      for (const auto* e : sorted) {
        canonical(e->first, out);
        out += '=';
        canonical(e->second, out);
        out += ',';
      }
      out += '}';
      break;
    }
  }
}

std::uint64_t stream_digest(const ConfigNode& root) {
  ConfigNode copy = root;
  if (ConfigNode* section = copy.find("pipeline"); section != nullptr && section->is_map()) {
    std::erase_if(section->entries,
                  [](const auto& e) { return stream_neutral("pipeline", e.first.scalar, false); });
  }
  if (ConfigNode* stages = copy.find("stages"); stages != nullptr && stages->is_sequence()) {
    for (std::size_t i = 0; i < stages->items.size(); ++i) {
      ConfigNode& stage = stages->items[i];
      if (!stage.is_map()) continue;
      std::erase_if(stage.entries,
                    [i](const auto& e) { return stream_neutral("stage", e.first.scalar, i == 0); });
    }
  }
  std::string text;
  canonical(copy, text);
  return stable_hash(text);
}

}  // namespace

PipelinePlan parse_pipeline(ConfigNode root, const std::vector<std::string>& overrides,
                            const Registry& registry, Diagnostics& d, int rank, int world) {
  PipelinePlan plan;
  plan.file = root.where.file;
  if (!root.is_map()) {
    if (!d.has_errors()) {
      d.error(root.where,
              "a pipeline config is a mapping with 'pipeline' and 'stages', got " + describe(root));
    }
    return plan;
  }
  check_duplicates(root, d);
  for (const auto& o : overrides) apply_override(root, o, d);
  plan.config_digest = stream_digest(root);

  for (const auto& [key, value] : root.entries) {
    if (key.scalar != "pipeline" && key.scalar != "stages") {
      std::string hint = nearest(key.scalar, {"pipeline", "stages"});
      d.error(key.where, "unknown top-level key '" + key.scalar + "'" +
                             (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                             "; known keys: pipeline, stages");
    }
  }
  if (const ConfigNode* section = root.find("pipeline")) parse_pipeline_section(*section, plan, d);
  if (plan.threads == 0) {
    plan.threads = static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
  }

  const ConfigNode* stages = root.find("stages");
  if (stages == nullptr) {
    d.error(root.where, "missing required key 'stages' (the list of stages)");
    return plan;
  }
  if (!stages->is_sequence() || stages->items.empty()) {
    d.error(stages->where, "'stages' expects a non-empty list of stages, got " + describe(*stages));
    return plan;
  }

  std::map<std::string, Location> names;
  bool all_types_known = true;
  for (const ConfigNode& node : stages->items) {
    if (!node.is_map()) {
      d.error(node.where, "a stage is a mapping with at least 'type', got " + describe(node));
      all_types_known = false;
      continue;
    }
    StagePlan s;
    s.where = node.where;
    const ConfigNode* type = node.find("type");
    if (type == nullptr) {
      d.error(node.where, "stage: missing required key 'type'");
      all_types_known = false;
      continue;
    }
    if (!read_string(*type, s.type, "stage: 'type'", d)) {
      all_types_known = false;
      continue;
    }
    s.factory = registry.find(s.type);
    if (s.factory == nullptr) {
      std::string list;
      for (const auto& t : registry.types()) list += (list.empty() ? "" : ", ") + t;
      std::string hint = nearest(s.type, registry.types());
      d.error(type->where, "unknown stage type '" + s.type + "'" +
                               (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                               "; known types: " + list);
      all_types_known = false;
      continue;
    }
    s.name = s.type;
    if (const ConfigNode* n = node.find("name")) read_string(*n, s.name, "stage: 'name'", d);
    if (auto [it, inserted] = names.emplace(s.name, s.where); !inserted) {
      d.error(s.where, "stage name '" + s.name + "' is used twice (first at line " +
                           std::to_string(it->second.line) +
                           "); give one of them a different `name`");
    }
    parse_common_keys(node, s, plan, d);

    StageContext context;
    context.name = s.name;
    context.type = s.type;
    context.where = s.where;
    context.seed = plan.seed;
    context.stage_key = stable_hash(s.name);
    context.pipeline_threads = plan.threads;
    context.rank = rank;
    context.world = world;
    context.content = s.factory->info().content;
    std::vector<std::string> engine_keys{"type", "name", "concurrency", "queue"};
    if (s.factory->info().per_sample_errors) engine_keys.emplace_back("on_error");
    s.stage = s.factory->create(node, context, engine_keys, d);
    plan.stages.push_back(std::move(s));
  }
  // With a stage whose type is unknown the order cannot be judged: any structural error would be
  // an echo of the one already reported.
  if (all_types_known) check_structure(plan, *stages, d);
  if (!d.has_errors()) {
    std::vector<Stage*> stages_in_order;
    for (auto& s : plan.stages) stages_in_order.push_back(s.stage.get());
    link_stream(stages_in_order, d);
  }
  return plan;
}

}  // namespace millrace
