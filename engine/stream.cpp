#include "engine/stream.hpp"

#include "engine/stage.hpp"

namespace millrace {

StreamDesc link_stream(const std::vector<Stage*>& stages, Diagnostics& diagnostics) {
  StreamWants wants;
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) wants = (*it)->want_input(wants);
  StreamDesc desc;
  for (Stage* s : stages) desc = s->link(desc, diagnostics);
  return desc;
}

}  // namespace millrace
