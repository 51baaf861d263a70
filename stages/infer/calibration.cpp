#include "stages/infer/calibration.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>

#include "engine/file_io.hpp"
#include "engine/json_reader.hpp"

namespace millrace::infer {

const ValueRange* CalibrationTable::find(int id) const {
  auto it = std::lower_bound(values.begin(), values.end(), id,
                             [](const ValueRange& r, int key) { return r.id < key; });
  return it != values.end() && it->id == id ? &*it : nullptr;
}

const char* calibration_mode_name(CalibrationMode mode) {
  switch (mode) {
    case CalibrationMode::kEntropy:
      return "entropy";
    case CalibrationMode::kMse:
      return "mse";
    case CalibrationMode::kMinMax:
      break;
  }
  return "minmax";
}

// ---------------------------------------------------------------------------------------------
// Statistics.

void RangeObserver::add(const float* data, std::size_t count) {
  float batch_min = std::numeric_limits<float>::infinity();
  float batch_max = -std::numeric_limits<float>::infinity();
  std::size_t seen = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const float x = data[i];
    if (std::isnan(x)) continue;
    batch_min = std::min(batch_min, x);
    batch_max = std::max(batch_max, x);
    ++seen;
  }
  if (seen == 0) return;
  min_ = count_ == 0 ? batch_min : std::min(min_, batch_min);
  max_ = count_ == 0 ? batch_max : std::max(max_, batch_max);
  count_ += seen;
  if (mode_ == CalibrationMode::kMinMax) return;

  // Exact zeros stay out of the histogram: every scale quantizes them exactly, so they say
  // nothing about the threshold, and the half of a ReLU's outputs that are 0 would otherwise
  // dominate the divergence of every candidate that merges the first bin with its neighbours.
  if (histogram_.empty()) histogram_.assign(bins_, 0.0);
  const float batch_abs = std::max(std::fabs(batch_min), std::fabs(batch_max));
  if (batch_abs > limit_) grow_histogram(batch_abs);
  if (limit_ <= 0.0F) return;  // everything so far is exactly zero
  const double per_unit = bins_ / static_cast<double>(limit_);
  for (std::size_t i = 0; i < count; ++i) {
    const float x = data[i];
    if (std::isnan(x) || x == 0.0F) continue;
    const auto bin = static_cast<std::size_t>(std::fabs(x) * per_unit);
    histogram_[std::min(bin, static_cast<std::size_t>(bins_ - 1))] += 1.0;
  }
}

// A later batch reached beyond the histogram: the bins are widened and each old bin's count
// moves to the new bin holding its centre (the approximation MXNet's collector makes as well).
void RangeObserver::grow_histogram(float new_limit) {
  std::vector<double> grown(bins_, 0.0);
  const double old_width = static_cast<double>(limit_) / bins_;
  const double new_width = static_cast<double>(new_limit) / bins_;
  for (int j = 0; j < bins_; ++j) {
    if (histogram_[j] == 0.0) continue;
    const double centre = (j + 0.5) * old_width;
    const auto bin = static_cast<int>(centre / new_width);
    grown[std::min(bin, bins_ - 1)] += histogram_[j];
  }
  histogram_.swap(grown);
  limit_ = new_limit;
}

ValueRange RangeObserver::finish(int id, int levels) const {
  if (count_ == 0) return {id, 0.0F, 0.0F, {}};
  double counted = 0.0;
  for (double c : histogram_) counted += c;
  if (mode_ == CalibrationMode::kMinMax || limit_ <= 0.0F || counted == 0.0) {
    return {id, min_, max_, {}};
  }
  const float bin_width = limit_ / bins_;
  const float threshold =
      std::min(mode_ == CalibrationMode::kMse ? mse_threshold(histogram_, bin_width, levels)
                                              : entropy_threshold(histogram_, bin_width, levels),
               limit_);
  return {id, std::max(min_, -threshold), std::min(max_, threshold), {}};
}

namespace {

// KL(p || q) of two histograms, each normalised to 1. Where q has no mass but p has, the term
// is p itself (a bounded penalty, as ncnn's implementation of the search uses) rather than
// infinity, so that a candidate is ranked by how much mass it misplaces.
double kl_divergence(const std::vector<double>& p, const std::vector<double>& q) {
  double sum_p = 0.0;
  double sum_q = 0.0;
  for (std::size_t k = 0; k < p.size(); ++k) {
    sum_p += p[k];
    sum_q += q[k];
  }
  if (sum_p <= 0.0 || sum_q <= 0.0) return std::numeric_limits<double>::infinity();
  double kl = 0.0;
  for (std::size_t k = 0; k < p.size(); ++k) {
    if (p[k] == 0.0) continue;
    const double pk = p[k] / sum_p;
    const double qk = q[k] / sum_q;
    kl += qk == 0.0 ? pk : pk * std::log(pk / qk);
  }
  return kl;
}

}  // namespace

float entropy_threshold(const std::vector<double>& histogram, float bin_width, int levels) {
  const int bins = static_cast<int>(histogram.size());
  double total = 0.0;
  for (double c : histogram) total += c;
  if (bins == 0 || total == 0.0 || levels <= 0 || bins <= levels) {
    return static_cast<float>(bins) * bin_width;
  }
  std::vector<double> suffix(bins + 1, 0.0);
  for (int k = bins - 1; k >= 0; --k) suffix[k] = suffix[k + 1] + histogram[k];

  int best = bins;
  double best_kl = std::numeric_limits<double>::infinity();
  std::vector<double> p;
  std::vector<double> q;
  std::vector<double> level_mass(levels);
  for (int i = levels; i <= bins; ++i) {
    // Reference: the histogram clipped at bin i, the clipped mass piled into its last bin.
    p.assign(histogram.begin(), histogram.begin() + i);
    p[i - 1] += suffix[i];
    // Candidate: bins 0..i-1 quantized to `levels` levels of i / levels bins each (a bin that
    // straddles two levels is split between them by the fraction it lies in each), every level
    // spread back evenly over the bins that hold data. Fractional levels avoid the one oversized
    // remainder level that integer merging leaves at the top, which biases the search.
    const double per_level = static_cast<double>(i) / levels;
    q.assign(i, 0.0);
    for (int j = 0; j < levels; ++j) {
      const double start = j * per_level;
      const double end = std::min(start + per_level, static_cast<double>(i));
      double mass = 0.0;
      double support = 0.0;
      for (int k = static_cast<int>(start); k < i && k < end; ++k) {
        const double overlap = std::min(end, k + 1.0) - std::max(start, static_cast<double>(k));
        if (overlap <= 0.0) continue;
        mass += overlap * histogram[k];
        support += p[k] != 0.0 ? overlap : 0.0;
      }
      level_mass[j] = support > 0.0 ? mass / support : 0.0;
    }
    for (int j = 0; j < levels; ++j) {
      if (level_mass[j] == 0.0) continue;
      const double start = j * per_level;
      const double end = std::min(start + per_level, static_cast<double>(i));
      for (int k = static_cast<int>(start); k < i && k < end; ++k) {
        const double overlap = std::min(end, k + 1.0) - std::max(start, static_cast<double>(k));
        if (overlap > 0.0 && p[k] != 0.0) q[k] += overlap * level_mass[j];
      }
    }
    const double kl = kl_divergence(p, q);
    if (kl < best_kl) {
      best_kl = kl;
      best = i;
    }
  }
  // The clipped range covers bins 0..best-1 entirely: its upper edge.
  return static_cast<float>(best) * bin_width;
}

float mse_threshold(const std::vector<double>& histogram, float bin_width, int levels) {
  const int bins = static_cast<int>(histogram.size());
  double total = 0.0;
  for (double c : histogram) total += c;
  if (bins == 0 || total == 0.0 || levels <= 0) return static_cast<float>(bins) * bin_width;
  // Each bin's values taken at its centre x_k. With threshold T (the upper edge of bin i-1) and
  // step T / levels, a value inside is off by the rounding, step^2 / 12 on average, a value above
  // by x - T: error(T) = step^2 / 12 * inside + sum over k >= i of c_k (x_k - T)^2, where the
  // clipped sum is C2 - 2 T C1 + T^2 C0 over the suffix sums of c, c x and c x^2.
  std::vector<double> c0(bins + 1, 0.0);
  std::vector<double> c1(bins + 1, 0.0);
  std::vector<double> c2(bins + 1, 0.0);
  for (int k = bins - 1; k >= 0; --k) {
    const double x = (k + 0.5) * static_cast<double>(bin_width);
    c0[k] = c0[k + 1] + histogram[k];
    c1[k] = c1[k + 1] + histogram[k] * x;
    c2[k] = c2[k + 1] + histogram[k] * x * x;
  }
  int best = bins;
  double best_error = std::numeric_limits<double>::infinity();
  for (int i = 1; i <= bins; ++i) {
    const double t = i * static_cast<double>(bin_width);
    const double step = t / levels;
    const double inside = c0[0] - c0[i];
    const double error = step * step / 12.0 * inside + (c2[i] - 2.0 * t * c1[i] + t * t * c0[i]);
    // Ties keep the wider range: it clips nothing more for the same error.
    if (error <= best_error) {
      best_error = error;
      best = i;
    }
  }
  return static_cast<float>(best) * bin_width;
}

// ---------------------------------------------------------------------------------------------
// JSON.

std::string calibration_to_json(const CalibrationTable& table) {
  std::string out = "{\"mode\": \"";
  out += calibration_mode_name(table.mode);
  out += "\", \"fingerprint\": \"";
  // The fingerprint is our own text (no quotes or backslashes), so it needs no escaping.
  out += table.fingerprint;
  out += "\", \"values\": [";
  char buffer[96];
  for (std::size_t i = 0; i < table.values.size(); ++i) {
    const ValueRange& r = table.values[i];
    std::snprintf(buffer, sizeof buffer, "%s\n  {\"id\": %d, \"min\": %.9g, \"max\": %.9g",
                  i == 0 ? "" : ",", r.id, static_cast<double>(r.min), static_cast<double>(r.max));
    out += buffer;
    if (!r.channels.empty()) {
      out += ", \"channels\": [";
      for (std::size_t c = 0; c < r.channels.size(); ++c) {
        std::snprintf(buffer, sizeof buffer, "%s%.9g", c == 0 ? "" : ", ",
                      static_cast<double>(r.channels[c]));
        out += buffer;
      }
      out += ']';
    }
    out += '}';
  }
  out += table.values.empty() ? "]}\n" : "\n]}\n";
  return out;
}

namespace {

// Reports what the table holds that it must not, as the reader reports what is not JSON: at the
// table's last line (the whole document has been read by then).
class TableErrors {
 public:
  TableErrors(std::string_view text, const std::string& origin) : text_(text), origin_(origin) {}
  [[noreturn]] void fail(const std::string& what) const {
    throw CalibrationError(
        json_error_text(text_, text_.size(), origin_, "calibration table", what));
  }

 private:
  std::string_view text_;
  const std::string& origin_;
};

float table_number(const TableErrors& reader, const JsonValue& entry, std::string_view name,
                   std::size_t index) {
  const JsonValue* v = entry.member(name);
  const std::string where = "values[" + std::to_string(index) + "]";
  if (v == nullptr) reader.fail(where + " has no '" + std::string(name) + "'");
  if (v->kind != JsonValue::Kind::kNumber || !std::isfinite(v->number) ||
      std::fabs(v->number) > std::numeric_limits<float>::max()) {
    reader.fail(where + "." + std::string(name) + " must be a finite number");
  }
  return static_cast<float>(v->number);
}

}  // namespace

CalibrationTable calibration_from_json(std::string_view text, const std::string& origin) {
  const TableErrors reader(text, origin);
  JsonValue doc;
  try {
    doc = parse_json(text, origin, "calibration table");
  } catch (const JsonError& e) {
    throw CalibrationError(e.what());
  }
  if (doc.kind != JsonValue::Kind::kObject) reader.fail("the table must be a JSON object");

  CalibrationTable table;
  const JsonValue* mode = doc.member("mode");
  if (mode == nullptr || mode->kind != JsonValue::Kind::kString) {
    reader.fail("'mode' must be the string \"minmax\", \"entropy\" or \"mse\"");
  }
  if (mode->text == "minmax") {
    table.mode = CalibrationMode::kMinMax;
  } else if (mode->text == "entropy") {
    table.mode = CalibrationMode::kEntropy;
  } else if (mode->text == "mse") {
    table.mode = CalibrationMode::kMse;
  } else {
    reader.fail("unknown mode '" + mode->text + "' (expected minmax, entropy or mse)");
  }

  // Tables written before fingerprints existed have none: they match no network and are remade.
  if (const JsonValue* f = doc.member("fingerprint"); f != nullptr) {
    if (f->kind != JsonValue::Kind::kString) reader.fail("'fingerprint' must be a string");
    table.fingerprint = f->text;
  }

  const JsonValue* values = doc.member("values");
  if (values == nullptr || values->kind != JsonValue::Kind::kArray) {
    reader.fail("'values' must be an array");
  }
  for (std::size_t i = 0; i < values->items.size(); ++i) {
    const JsonValue& entry = values->items[i];
    const std::string where = "values[" + std::to_string(i) + "]";
    if (entry.kind != JsonValue::Kind::kObject) reader.fail(where + " must be an object");
    const JsonValue* id = entry.member("id");
    if (id == nullptr || id->kind != JsonValue::Kind::kNumber || id->number < 0 ||
        id->number > std::numeric_limits<int>::max() || std::floor(id->number) != id->number) {
      reader.fail(where + ".id must be a non-negative integer");
    }
    ValueRange r;
    r.id = static_cast<int>(id->number);
    r.min = table_number(reader, entry, "min", i);
    r.max = table_number(reader, entry, "max", i);
    if (r.min > r.max) reader.fail(where + " has min > max");
    if (const JsonValue* channels = entry.member("channels"); channels != nullptr) {
      if (channels->kind != JsonValue::Kind::kArray || channels->items.empty()) {
        reader.fail(where + ".channels must be a non-empty array of numbers");
      }
      for (const JsonValue& c : channels->items) {
        if (c.kind != JsonValue::Kind::kNumber || !std::isfinite(c.number) || c.number < 0.0 ||
            c.number > std::numeric_limits<float>::max()) {
          reader.fail(where + ".channels must hold finite non-negative numbers");
        }
        r.channels.push_back(static_cast<float>(c.number));
      }
    }
    table.values.push_back(r);
  }
  std::sort(table.values.begin(), table.values.end(),
            [](const ValueRange& a, const ValueRange& b) { return a.id < b.id; });
  for (std::size_t i = 1; i < table.values.size(); ++i) {
    if (table.values[i].id == table.values[i - 1].id) {
      reader.fail("value " + std::to_string(table.values[i].id) + " is listed twice");
    }
  }
  return table;
}

namespace {

// FNV-1a over 64-bit words (bytes for the tail): a table key, not a cryptographic digest; words
// keep hashing a 100 MB model to tens of milliseconds.
class ModelHasher {
 public:
  void bytes(const void* data, std::size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    std::size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      std::uint64_t word = 0;
      std::memcpy(&word, p + i, 8);
      mix(word);
    }
    for (; i < size; ++i) mix(p[i]);
  }
  template <class T>
  void value(const T& v) {
    bytes(&v, sizeof v);
  }
  template <class T>
  void vector(const std::vector<T>& v) {
    value(v.size());
    bytes(v.data(), v.size() * sizeof(T));
  }
  std::uint64_t digest() const { return hash_; }

 private:
  void mix(std::uint64_t v) {
    hash_ ^= v;
    hash_ *= 0x100000001B3ULL;
  }
  std::uint64_t hash_ = 0xCBF29CE484222325ULL;
};

}  // namespace

std::uint64_t model_digest(const Model& model) {
  // The imported graph, not the file: what the ranges were measured on (weights after folding,
  // the ops and their wiring), and it also covers models built in memory.
  ModelHasher h;
  h.value(model.input);
  h.value(model.input_shape);
  h.value(model.output);
  for (const Op& op : model.ops) {
    h.value(op.kind);
    h.vector(op.inputs);
    h.value(op.output);
    h.value(op.kernel);
    h.value(op.stride);
    h.value(op.dilation);
    h.value(op.pads);
    h.value(op.groups);
    h.value(op.count_include_pad);
    h.value(op.ceil_mode);
    h.vector(op.weight.shape);
    h.vector(op.weight.data);
    h.vector(op.bias.shape);
    h.vector(op.bias.data);
    h.value(op.activation);
    h.value(op.clip_min);
    h.value(op.clip_max);
    h.value(op.axis);
  }
  return h.digest();
}

namespace {

// The fewest digits that read back as the same float: 116.28, not 116.279999.
std::string shortest(float v) {
  char buffer[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buffer, sizeof buffer, "%.*g", digits, static_cast<double>(v));
    if (std::strtof(buffer, nullptr) == v) break;
  }
  return buffer;
}

std::string three(const std::array<float, 3>& v) {
  std::string out = "[";
  for (std::size_t c = 0; c < v.size(); ++c) {
    if (c > 0) out += ", ";
    out += shortest(v[c]);
  }
  out += ']';
  return out;
}

// The fields of a fingerprint in order, as (key, value); empty for text that is not one (a table
// written before fingerprints had fields).
std::vector<std::pair<std::string, std::string>> fingerprint_fields(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> fields;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find("; ", start);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(start, end - start);
    const std::size_t space = part.find(' ');
    if (space == std::string::npos || space == 0) return {};
    fields.emplace_back(part.substr(0, space), part.substr(space + 1));
    start = end + 2;
  }
  return fields;
}

}  // namespace

std::string calibration_fingerprint(const Model& model, const InputFormat& input) {
  const std::uint64_t digest = model.digest != 0 ? model.digest : model_digest(model);
  const char* type = input.type == DType::kInt8 ? "s8" : input.type == DType::kUInt8 ? "u8" : "f32";
  std::string name = model.path.empty() ? std::string("(in memory)")
                                        : std::filesystem::path(model.path).filename().string();
  // The text goes into JSON unescaped and is split on "; ": a quote, backslash or semicolon in a
  // file name adds nothing to the key.
  for (char& c : name) {
    if (c == '"' || c == '\\' || c == ';') c = '_';
  }
  char hash[32];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(digest));
  return "model " + name + "; graph " + hash + "; input " + type + "; layout " +
         (input.layout == Layout::kNHWC ? "nhwc" : "nchw") + "; mean " + three(input.mean) +
         "; unit " + three(input.unit) + "; zero_point " + shortest(input.zero_point) +
         "; model_std " + three(input.model_std);
}

std::string fingerprint_mismatch(const std::string& table, const std::string& ours) {
  const auto theirs = fingerprint_fields(table);
  const auto mine = fingerprint_fields(ours);
  if (theirs.empty()) {
    return table.empty() ? "the table has no fingerprint (an earlier version wrote it)"
                         : "the table's fingerprint is in an earlier version's form";
  }
  std::string out;
  for (const auto& [key, value] : mine) {
    if (key == "model") continue;  // a renamed or moved file is the same model
    std::string other = "(none)";
    for (const auto& [k, v] : theirs) {
      if (k == key) other = v;
    }
    if (other == value) continue;
    out += (out.empty() ? "" : "; ") + key + " " + other + " in the table, " + value + " here";
  }
  return out;
}

void save_calibration_table(const CalibrationTable& table, const std::string& path) {
  try {
    write_file_atomically(path, calibration_to_json(table), "calibration table");
  } catch (const FileError& e) {
    throw CalibrationError(path + ": error: " + e.detail());
  }
}

CalibrationTable load_calibration_table(const std::string& path) {
  std::string text;
  try {
    text = read_regular_file(path, kMaxCalibrationTableBytes, "calibration table");
  } catch (const FileError& e) {
    throw CalibrationError(path + ": error: " + e.detail());
  }
  return calibration_from_json(text, path);
}

}  // namespace millrace::infer
