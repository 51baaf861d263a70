#include "engine/stream.hpp"

#include "engine/stage.hpp"

namespace millrace {

std::string_view sample_content_name(SampleContent content) {
  switch (content) {
    case SampleContent::kAny:
      return "anything";
    case SampleContent::kEncoded:
      return "encoded image bytes";
    case SampleContent::kPixels:
      return "decoded pixels (an RGB8 HWC image)";
    case SampleContent::kTensor:
      return "a normalized tensor";
  }
  return "?";
}

std::string pass_content(StreamDesc& input, const ContentStep& step, const std::string& stage) {
  std::string why;
  if (step.needs != SampleContent::kAny && input.content != SampleContent::kAny &&
      step.needs != input.content) {
    why = "needs " + std::string(sample_content_name(step.needs)) + ", but after " +
          input.content_stage + " its samples carry " +
          std::string(sample_content_name(input.content)) +
          (step.needs == SampleContent::kPixels && input.content == SampleContent::kEncoded
               ? " (put a decode stage before it)"
               : "");
  }
  if (step.makes != SampleContent::kAny) {
    input.content = step.makes;
    input.content_stage = stage;
  }
  return why;
}

StreamDesc link_stream(const std::vector<Stage*>& stages, Diagnostics& diagnostics) {
  StreamWants wants;
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) wants = (*it)->want_input(wants);
  StreamDesc desc;
  for (Stage* s : stages) {
    const StageContext& c = s->context();
    const std::string where = "stage '" + c.name + "' (" + c.type + ")";
    // The config check has already reported a wrong order; this one holds for any caller.
    StreamDesc after = desc;
    const std::string why = pass_content(after, c.content, where);
    if (!why.empty()) diagnostics.error(c.where, where + ": " + why);
    desc = s->link(desc, diagnostics);
    desc.content = after.content;
    desc.content_stage = after.content_stage;
  }
  return desc;
}

}  // namespace millrace
