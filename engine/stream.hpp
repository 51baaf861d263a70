// The declared description of a pipeline's stream: what flows on each edge, and what each stage
// wants from the edge into it. Stages agree through these descriptions, never through each
// other's classes.
//
// Contract: before any item flows, on the thread that builds the pipeline, link_stream() runs two
// passes over the stages. Back to front, each stage is told what the stage after it wants from
// their common edge (StreamWants) and says what it wants from its own input (Stage::want_input);
// a stage settles its choices left open (a layout of `auto`) from the wants it is given. Front to
// back, each stage is given the description of its input edge (StreamDesc; the first stage gets
// an empty one), checks it (rules that span stages are config errors reported at its own place)
// and returns the description of its output edge (Stage::link). Descriptions are plain values:
// nothing in them points into another stage except a WindowReader, which its stage keeps alive
// for the run. The engine reads one part of them: the content of the samples (SampleContent),
// which each stage type declares with its type (StageInfo::content) and which the engine checks
// and carries, once when the config is read and again while it links. The other fields are the
// stages' shared vocabulary, the one place where a new stage or key plugs in.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/layout.hpp"
#include "engine/window.hpp"
#include "millrace/batch.hpp"

namespace millrace {

class Diagnostics;
class Stage;
struct Sample;

// A stage that reads only part of each sample and can say which part from the sample's full size
// alone (the decode-window request). Called concurrently from the stage before it, on that
// stage's threads: it must be a pure function of its arguments and its own immutable state, and
// must not throw (nullopt: the whole sample is needed).
class WindowReader {
 public:
  virtual std::optional<WindowRequest> window(int width, int height,
                                              const Sample& sample) const noexcept = 0;

 protected:
  ~WindowReader() = default;
};

// What the samples on an edge carry, as far as the order of stages depends on it: a stage that
// needs decoded pixels cannot come before the one that makes them.
enum class SampleContent { kAny, kEncoded, kPixels, kTensor };
std::string_view sample_content_name(SampleContent content);

// How a stage type changes the content of the stream: what the samples must carry when they
// arrive (kAny: anything) and what they carry after it (kAny: as they came). Declared with the
// type, not by a built stage, so that the order of stages is checked when the config is read,
// even where a stage's own keys are wrong and it is never built.
struct ContentStep {
  SampleContent needs = SampleContent::kAny;
  SampleContent makes = SampleContent::kAny;
};

// What a stage wants from the edge into it; passed back to front.
struct StreamWants {
  Layout layout = Layout::kAny;  // the layout a stage further down reads without a reorder
  // Set by the stage right after the edge when it reads only a window of each sample; never
  // passed further up (a stage in between may change the pixels).
  const WindowReader* window_reader = nullptr;
};

// How the values on an edge relate to the source's values (pixel units), per channel c:
// real = (value - zero_point) * unit[c] + mean[c].
struct StreamScaling {
  std::string stage;  // the stage that scaled the values, for messages
  std::array<double, 3> mean{};
  std::array<float, 3> unit{1.0F, 1.0F, 1.0F};
  float zero_point = 0.0F;
  bool mxnet_compatible = false;  // integers of pixel - round(mean), saturated
};

// What flows on an edge; passed front to back.
struct StreamDesc {
  // What the samples carry, and the stage that made it so, as messages name a stage ("stage
  // 'decode' (decode)"); kAny and empty until a stage declares what it makes.
  SampleContent content = SampleContent::kAny;
  std::string content_stage;
  DType dtype = DType::kUInt8;
  Layout layout = Layout::kAny;
  // One sample's shape in `layout` order; 0 where it is not known before the run or varies.
  std::array<std::int64_t, 3> shape{};
  std::string shape_stage;               // the stage that fixed the spatial size, for messages
  std::optional<StreamScaling> scaling;  // set once values are no longer the source's
  int batch_size = 0;                    // 0: samples, not batches
  // What a batch transform attaches to each row (a model's logits), and how many of the best a
  // consumer reports; `outputs_stage` is empty while nothing is attached.
  std::string outputs_stage;
  int output_width = 0;
  int top_k = 0;

  // The spatial size {height, width}, from whichever layout; 0 where unknown.
  std::array<std::int64_t, 2> spatial() const {
    return layout == Layout::kNCHW ? std::array<std::int64_t, 2>{shape[1], shape[2]}
                                   : std::array<std::int64_t, 2>{shape[0], shape[1]};
  }
};

// Why a stage, named `stage` as messages name it, that declares `step` cannot take the samples
// `input` describes (empty when it can); then carries `input` through it: `content` and
// `content_stage` become what the stage makes, if it says. The one rule of stage order by content,
// used by the config check and by link_stream.
std::string pass_content(StreamDesc& input, const ContentStep& step, const std::string& stage);

// Runs the two passes described above over `stages` (source first). Link errors go to
// `diagnostics`; the returned description is that of the last stage's output. The engine carries
// the content of the samples itself, from each stage's StageContext::content, around its link().
StreamDesc link_stream(const std::vector<Stage*>& stages, Diagnostics& diagnostics);

}  // namespace millrace
