// The one explicit list of built-in stages. A stage that is not named here does not exist: no
// static self-registration, which a static library link can silently drop.
#include "engine/registry.hpp"
#include "stages/augment/augment_stage.hpp"
#include "stages/batch/batch_stage.hpp"
#include "stages/decode/decode_stage.hpp"
#include "stages/files/files_stage.hpp"
#include "stages/infer/infer_stage.hpp"
#include "stages/normalize/normalize_stage.hpp"
#include "stages/recordio/recordio_stage.hpp"
#include "stages/sinks/sinks.hpp"

namespace millrace {

void register_builtin_stages(Registry& registry) {
  registry.add<FilesSource>();
  registry.add<RecordIoSource>();
  registry.add<DecodeStage>();
  registry.add<AugmentStage>();
  registry.add<NormalizeStage>();
  registry.add<BatchAssembler>();
  registry.add<InferStage>();
  registry.add<NpySink>();
  registry.add<PredictionsSink>();
  registry.add<DiscardSink>();
}

}  // namespace millrace
