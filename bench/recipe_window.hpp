// The decode windows of the two standard recipes, as the augment stage computes them, for the
// decode benchmarks: a random-resized crop to 224 (torchvision's default scale and ratio) drawn
// from a generator keyed on the image's number, or shorter side 256 then the central 224.
#pragma once

#include <cstdint>
#include <optional>

#include "engine/random.hpp"
#include "stages/augment/augment_kernel.hpp"
#include "stages/decode/decode_kernel.hpp"

namespace millrace::decode {

class RecipeWindow final : public WindowChooser {
 public:
  RecipeWindow(bool train, std::uint64_t id) : train_(train), id_(id) {}
  std::optional<WindowRequest> choose(int width, int height) const noexcept override {
    if (train_) {
      CounterRng rng(1, 2, 0, id_);
      const Rect r =
          augment::random_resized_window(width, height, {0.08, 1.0}, {3.0 / 4.0, 4.0 / 3.0}, rng);
      return WindowRequest{static_cast<double>(r.x),
                           static_cast<double>(r.y),
                           static_cast<double>(r.width),
                           static_cast<double>(r.height),
                           224,
                           224,
                           true};
    }
    const auto [w, h] = augment::resize_shorter_size(width, height, 256);
    const Rect c = augment::center_window(w, h, 224, 224);
    const double fx = static_cast<double>(width) / w;
    const double fy = static_cast<double>(height) / h;
    return WindowRequest{c.x * fx, c.y * fy, c.width * fx, c.height * fy, 224, 224, true};
  }

 private:
  bool train_;
  std::uint64_t id_;
};

}  // namespace millrace::decode
