// Steady state allocates nothing per sample or per batch: once a pipeline has warmed up, it runs
// batch after batch without heap allocations from its own code, on any thread.
//
// What is counted.
// - operator new, every form (plain, array, nothrow, aligned): this binary replaces them, so every
//   C++ allocation of every thread goes through a counter that keeps its call stack. That covers
//   our containers, strings, std::function and exceptions, and the C++ inside the libraries. After
//   the window each call is attributed to the innermost function outside the standard library that
//   asked for it (addr2line names the inlined and internal ones): millrace's own code, oneTBB's
//   flow graph (its reserving joins register and drop successors in std::list and std::deque
//   caches for every message: about 12 calls per sample) or OpenCV (cv::resize allocates its
//   coefficient tables: 1 or 2 calls per resize). The library ones are printed, not asserted.
// - What is asserted: a run built through the public API on generated JPEGs warms up for
//   kFirstBatch batches, and while the consumer goes on to batch kLastBatch, millrace's own code
//   makes fewer allocations than there are batches in that window: nothing per sample or per
//   batch (one per batch would already reach the bound, one per sample would pass it eightfold).
//   What remains, when anything does, is a pooled buffer meeting its first image larger than it
//   has seen (buffers grow with headroom, so this stops), or a pool object created late because a
//   preempted worker let more samples pile up than ever before. For the training and the
//   validation recipe, from files and from a packed .rec, at 1 and 2 threads. A failure lists the
//   call stacks.
// - The C allocator, reported and not asserted: unless a sanitizer owns malloc, this binary also
//   defines malloc, calloc, realloc and the aligned forms on top of glibc's __libc_* entry points,
//   so that the calls every shared library makes go through a counter that notes the library of
//   the caller. libjpeg allocates each image's working memory with malloc and frees it when the
//   image is done (about 9 calls per image); oneTBB's own allocator does not use malloc. glibc's
//   calls to its own malloc (inside fopen, strdup, ...) bypass the symbol and are not seen.
#include <cxxabi.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "datasets/make_dataset.hpp"
#include "millrace/millrace.hpp"
#include "stages/recordio/pack.hpp"
#include "tests/support/temp_dir.hpp"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MILLRACE_ALLOC_TEST_MALLOC 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MILLRACE_ALLOC_TEST_MALLOC 0
#endif
#endif
#ifndef MILLRACE_ALLOC_TEST_MALLOC
#define MILLRACE_ALLOC_TEST_MALLOC 1
#endif

// ---- The counters
// --------------------------------------------------------------------------------
//
// Everything below is reached from inside the allocator: it uses fixed arrays and atomics only,
// and reads thread-local state only while a window is open (a malloc made by the dynamic loader
// before the thread's TLS exists never gets that far).

namespace alloc_count {

constexpr std::size_t kStackDepth = 24;
constexpr std::size_t kStacksKept = 1 << 14;
constexpr std::size_t kCallersKept = 1 << 16;

std::atomic<bool> armed{false};
std::atomic<std::uint64_t> news{0};
std::atomic<std::uint64_t> mallocs{0};

struct Stack {
  std::array<void*, kStackDepth> frames{};
  int depth = 0;
};
std::array<Stack, kStacksKept> new_stacks;
std::atomic<std::size_t> new_stacks_used{0};
std::array<void*, kCallersKept> malloc_callers;
std::atomic<std::size_t> malloc_callers_used{0};

thread_local bool in_hook = false;

void note_new() {
  if (!armed.load(std::memory_order_relaxed)) return;
  news.fetch_add(1, std::memory_order_relaxed);
  if (in_hook) return;
  const std::size_t slot = new_stacks_used.fetch_add(1, std::memory_order_relaxed);
  if (slot >= kStacksKept) return;
  in_hook = true;  // backtrace() may allocate the first time it runs
  new_stacks[slot].depth = ::backtrace(new_stacks[slot].frames.data(), kStackDepth);
  in_hook = false;
}

void note_malloc(void* caller) {
  if (!armed.load(std::memory_order_relaxed)) return;
  if (in_hook) return;  // the counter's own work
  mallocs.fetch_add(1, std::memory_order_relaxed);
  const std::size_t slot = malloc_callers_used.fetch_add(1, std::memory_order_relaxed);
  if (slot < kCallersKept) malloc_callers[slot] = caller;
}

}  // namespace alloc_count

#if MILLRACE_ALLOC_TEST_MALLOC
// glibc's own allocator entry points, which the counting allocator forwards to; their names are
// glibc's, hence reserved.
extern "C" {
// NOLINTBEGIN(bugprone-reserved-identifier)
void* __libc_malloc(std::size_t size);
void __libc_free(void* p);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void* __libc_valloc(std::size_t size);
void* __libc_pvalloc(std::size_t size);
// NOLINTEND(bugprone-reserved-identifier)

void* malloc(std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_malloc(size);
}
void* calloc(std::size_t count, std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_calloc(count, size);
}
void* realloc(void* p, std::size_t size) noexcept {
  if (size != 0) alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_realloc(p, size);
}
void* memalign(std::size_t alignment, std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  *out = p;
  return 0;
}
void* valloc(std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_valloc(size);
}
void* pvalloc(std::size_t size) noexcept {
  alloc_count::note_malloc(__builtin_return_address(0));
  return __libc_pvalloc(size);
}
}  // extern "C"
#endif

namespace {

// operator new's memory comes straight from glibc (or the sanitizer), so that it is not counted a
// second time as a malloc.
void* raw_allocate(std::size_t size, std::size_t alignment) {
#if MILLRACE_ALLOC_TEST_MALLOC
  return alignment == 0 ? __libc_malloc(size) : __libc_memalign(alignment, size);
#else
  if (alignment == 0) return std::malloc(size);
  return std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
#endif
}

void raw_free(void* p) {
#if MILLRACE_ALLOC_TEST_MALLOC
  __libc_free(p);
#else
  std::free(p);
#endif
}

void* counted_new(std::size_t size, std::size_t alignment) {
  alloc_count::note_new();
  for (;;) {
    if (void* p = raw_allocate(size == 0 ? 1 : size, alignment)) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
  }
}

void* counted_new_nothrow(std::size_t size, std::size_t alignment) noexcept {
  try {
    return counted_new(size, alignment);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

void* operator new(std::size_t size) { return counted_new(size, 0); }
void* operator new[](std::size_t size) { return counted_new(size, 0); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return counted_new_nothrow(size, 0);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return counted_new_nothrow(size, 0);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  return counted_new(size, static_cast<std::size_t>(alignment));
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  return counted_new(size, static_cast<std::size_t>(alignment));
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return counted_new_nothrow(size, static_cast<std::size_t>(alignment));
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return counted_new_nothrow(size, static_cast<std::size_t>(alignment));
}
void operator delete(void* p) noexcept { raw_free(p); }
void operator delete[](void* p) noexcept { raw_free(p); }
void operator delete(void* p, std::size_t) noexcept { raw_free(p); }
void operator delete[](void* p, std::size_t) noexcept { raw_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { raw_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { raw_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { raw_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { raw_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { raw_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { raw_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { raw_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { raw_free(p); }

namespace millrace {
namespace {

namespace fs = std::filesystem;

constexpr int kBatchSize = 8;
constexpr int kFirstBatch = 25;  // the pools and buffers have warmed up by then
constexpr int kLastBatch = 55;
// Enough images for kLastBatch full batches plus what is in flight when the window closes.
constexpr int kImages = 480;

std::string demangled(const char* symbol) {
  // backtrace_symbols gives "file(mangled+0xoffset) [address]".
  std::string text = symbol;
  const std::size_t open = text.find('(');
  const std::size_t plus = text.find('+', open == std::string::npos ? 0 : open);
  if (open == std::string::npos || plus == std::string::npos || plus == open + 1) return text;
  const std::string mangled = text.substr(open + 1, plus - open - 1);
  int status = 0;
  char* name = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  if (status != 0 || name == nullptr) return text;
  std::string out = name;
  std::free(name);
  return out;
}

// Names the frames of call stacks: the executable's through addr2line (so that inlined functions
// and internal symbols have names too), shared libraries' through the dynamic symbol table. Runs
// outside any counting window: it allocates and starts a process.
class Symbolizer {
 public:
  // Names at each address, innermost inlined function first. A shared-library frame without a
  // symbol is named by its library, in brackets.
  void resolve(const std::vector<void*>& addresses) {
    Dl_info self{};
    if (::dladdr(reinterpret_cast<void*>(&raw_free), &self) == 0) return;
    std::vector<void*> local;
    std::vector<void*> unique = addresses;
    std::sort(unique.begin(), unique.end());
    unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
    for (void* a : unique) {
      if (names_.count(a) != 0) continue;
      Dl_info info{};
      if (::dladdr(a, &info) == 0 || info.dli_fname == nullptr) {
        names_[a] = {};
      } else if (info.dli_fbase == self.dli_fbase) {
        local.push_back(a);
      } else {
        std::vector<std::string> n;
        if (info.dli_sname != nullptr) {
          int status = 0;
          char* name = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
          n.push_back(status == 0 && name != nullptr ? name : info.dli_sname);
          std::free(name);
        }
        n.push_back("[" + fs::path(info.dli_fname).filename().string() + "]");
        names_[a] = n;
      }
    }
    if (local.empty()) return;
    const testing::TempDir scratch("millrace_alloc_test_names");
    const std::string base = scratch.file("addresses");
    {
      std::ofstream in(base + ".in");
      for (void* a : local) {
        // A return address: the call is the instruction before it.
        in << std::hex << "0x"
           << (reinterpret_cast<std::uintptr_t>(a) - 1 -
               reinterpret_cast<std::uintptr_t>(self.dli_fbase))
           << "\n";
      }
    }
    const std::string command = "addr2line -a -f -C -i -e /proc/" + std::to_string(::getpid()) +
                                "/exe < " + base + ".in > " + base + ".out 2> /dev/null";
    available_ = std::system(command.c_str()) == 0;  // NOLINT(concurrency-mt-unsafe)
    std::ifstream out(base + ".out");
    std::string line;
    std::size_t index = 0;
    std::vector<std::string>* current = nullptr;
    bool function_line = false;
    while (std::getline(out, line)) {
      if (line.rfind("0x", 0) == 0) {
        current = index < local.size() ? &names_[local[index++]] : nullptr;
        function_line = true;
      } else if (current != nullptr) {
        if (function_line && line != "??") current->push_back(line);
        function_line = !function_line;
      }
    }
  }

  const std::vector<std::string>& names(void* address) const {
    static const std::vector<std::string> kNone;
    const auto it = names_.find(address);
    return it == names_.end() ? kNone : it->second;
  }
  bool available() const { return available_; }

 private:
  std::map<void*, std::vector<std::string>> names_;
  bool available_ = true;
};

// Whose code asked for memory, from one function name: the namespace that comes first in it
// (a demangled template may start with its return type). Empty: keep looking further out (the
// counter itself, the standard library).
std::string owner_of_name(const std::string& name) {
  if (name.find("counted_new") != std::string::npos || name.rfind("operator new", 0) == 0 ||
      name.find("alloc_count::") != std::string::npos) {
    return "";
  }
  if (name.front() == '[') {
    static const std::vector<std::pair<std::string, std::string>> kLibraries = {
        {"[libtbb", "oneTBB"},   {"[libopencv", "OpenCV"},    {"[libturbojpeg", "libjpeg"},
        {"[libjpeg", "libjpeg"}, {"[libstdc++", ""},          {"[libc.so", ""},
        {"[libgcc_s", ""},       {"[libyaml-cpp", "yaml-cpp"}};
    for (const auto& [prefix, owner] : kLibraries) {
      if (name.rfind(prefix, 0) == 0) return owner;
    }
    return name;
  }
  static const std::vector<std::pair<std::string, std::string>> kNamespaces = {
      {"tbb::", "oneTBB"}, {"cv::", "OpenCV"},          {"millrace::", "millrace"}, {"std::", ""},
      {"__gnu_cxx::", ""}, {"testing::", "GoogleTest"}, {"YAML::", "yaml-cpp"}};
  std::size_t first = std::string::npos;
  std::string owner = "unknown";
  for (const auto& [prefix, who] : kNamespaces) {
    for (std::size_t at = name.find(prefix); at != std::string::npos;
         at = name.find(prefix, at + 1)) {
      const bool word_start =
          at == 0 || (std::isalnum(static_cast<unsigned char>(name[at - 1])) == 0 &&
                      name[at - 1] != '_' && name[at - 1] != ':');
      if (!word_start) continue;
      if (at < first) {
        first = at;
        owner = who;
      }
      break;
    }
  }
  return owner;
}

// The allocations made, by any thread, between open() and close().
class AllocationWindow {
 public:
  void open() {
    alloc_count::news.store(0);
    alloc_count::mallocs.store(0);
    alloc_count::new_stacks_used.store(0);
    alloc_count::malloc_callers_used.store(0);
    alloc_count::armed.store(true);
  }
  void close() {
    alloc_count::armed.store(false);
    news_ = alloc_count::news.load();
    mallocs_ = alloc_count::mallocs.load();
    attribute();
  }

  std::uint64_t news() const { return news_; }
  std::uint64_t mallocs() const { return mallocs_; }
  bool symbolized() const { return symbolizer_.available(); }

  // operator new calls by owner (the innermost function outside the standard library that asked
  // for the memory): "millrace", "oneTBB", "OpenCV", ...; "unattributed" counts the calls beyond
  // the stacks kept.
  const std::map<std::string, std::uint64_t>& news_by_owner() const { return by_owner_; }
  std::uint64_t news_except(const std::vector<std::string>& owners) const {
    std::uint64_t n = 0;
    for (const auto& [owner, count] : by_owner_) {
      if (std::find(owners.begin(), owners.end(), owner) == owners.end()) n += count;
    }
    return n;
  }

  // The distinct call stacks of the operator new calls of the owners not listed, most frequent
  // first, one function a line (inlined ones included).
  std::string stacks_except(const std::vector<std::string>& owners, std::size_t shown = 6) const {
    std::map<std::vector<void*>, std::size_t> distinct;
    for (std::size_t i = 0; i < stacks_.size(); ++i) {
      if (std::find(owners.begin(), owners.end(), owners_[i]) == owners.end())
        ++distinct[stacks_[i]];
    }
    std::vector<std::pair<std::size_t, const std::vector<void*>*>> order;
    order.reserve(distinct.size());
    for (const auto& [frames, count] : distinct) order.emplace_back(count, &frames);
    std::sort(order.begin(), order.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    std::string out;
    for (std::size_t i = 0; i < order.size() && i < shown; ++i) {
      out += std::to_string(order[i].first) + " call(s) from:\n";
      for (void* frame : *order[i].second) {
        for (const std::string& name : symbolizer_.names(frame)) out += "    " + name + "\n";
      }
    }
    return out;
  }

  // malloc calls by the shared object of their caller, most first.
  std::vector<std::pair<std::string, std::uint64_t>> mallocs_by_library() const {
    std::map<std::string, std::uint64_t> counts;
    const std::size_t kept =
        std::min(alloc_count::malloc_callers_used.load(), alloc_count::kCallersKept);
    for (std::size_t i = 0; i < kept; ++i) {
      Dl_info info{};
      std::string library = "?";
      if (::dladdr(alloc_count::malloc_callers[i], &info) != 0 && info.dli_fname != nullptr) {
        library = fs::path(info.dli_fname).filename().string();
      }
      ++counts[library];
    }
    std::vector<std::pair<std::string, std::uint64_t>> out(counts.begin(), counts.end());
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    return out;
  }

 private:
  void attribute() {
    const std::size_t kept =
        std::min<std::size_t>(alloc_count::new_stacks_used.load(), alloc_count::kStacksKept);
    stacks_.clear();
    owners_.clear();
    by_owner_.clear();
    std::vector<void*> addresses;
    for (std::size_t i = 0; i < kept; ++i) {
      const alloc_count::Stack& s = alloc_count::new_stacks[i];
      stacks_.emplace_back(s.frames.begin(), s.frames.begin() + s.depth);
      addresses.insert(addresses.end(), stacks_.back().begin(), stacks_.back().end());
    }
    symbolizer_.resolve(addresses);
    for (const auto& frames : stacks_) {
      std::string owner = "unknown";
      for (std::size_t f = 0; f < frames.size() && owner == "unknown"; ++f) {
        for (const std::string& name : symbolizer_.names(frames[f])) {
          const std::string who = owner_of_name(name);
          if (!who.empty()) {
            owner = who;
            break;
          }
        }
      }
      owners_.push_back(owner);
      ++by_owner_[owner];
    }
    if (news_ > kept) by_owner_["unattributed"] += news_ - kept;
  }

  std::uint64_t news_ = 0;
  std::uint64_t mallocs_ = 0;
  Symbolizer symbolizer_;
  std::vector<std::vector<void*>> stacks_;
  std::vector<std::string> owners_;
  std::map<std::string, std::uint64_t> by_owner_;
};

void* volatile g_escape = nullptr;  // keeps the compiler from eliding the probe allocations

// A folder of generated ImageNet-like JPEGs with its labels.lst, and the same images packed into
// one .rec: made once for the whole binary.
class Dataset : public ::testing::Environment {
 public:
  void SetUp() override {
    dir_ = std::make_unique<testing::TempDir>("millrace_alloc_test");
    datasets::DatasetSpec spec;
    spec.dir = images();
    spec.count = kImages;
    spec.classes = 10;
    spec.seed = 11;
    datasets::make_dataset(spec, {});
    recordio::PackOptions pack;
    pack.list = dir_->file("images/labels.lst");
    pack.output = rec();
    recordio::pack(pack);
    // backtrace() loads its unwinder on first use: do that now, outside any window.
    std::array<void*, 4> frames{};
    ::backtrace(frames.data(), static_cast<int>(frames.size()));
  }
  void TearDown() override { dir_.reset(); }

  static std::string images() { return dir_->file("images"); }
  static std::string rec() { return dir_->file("images.rec"); }

 private:
  static inline std::unique_ptr<testing::TempDir> dir_;
};

const auto* const kDatasetEnvironment = ::testing::AddGlobalTestEnvironment(new Dataset);

enum class Recipe { kTrain, kValidation };
enum class Source { kFiles, kRecordIo };

// The stages of configs/train.yaml and configs/default.yaml with smaller batches, a discarding
// sink and the generated data. The edges queue 1 item instead of the configs' 8 (each also holds
// one per slot of its producer): the pools create their objects on demand, up to what the edges
// let be in flight at once, and with an ordering window of 39 the last few are created only when
// a worker is held up long enough for 39 samples to pile up behind one (on a busy machine, at any
// time in a run). Objects created and buffers grown for the first time are warm-up, not steady
// state; small edges get the warm-up done within the first batches.
std::string recipe_yaml(Recipe recipe, Source source, int threads) {
  const bool train = recipe == Recipe::kTrain;
  std::string yaml = "pipeline: {threads: " + std::to_string(threads) +
                     ", queue: 1, ordered: true, seed: 1}\nstages:\n";
  if (source == Source::kFiles) {
    yaml += "  - {type: files, root: '" + Dataset::images() +
            "', list: labels.lst, shuffle: " + (train ? "true" : "false") + "}\n";
  } else {
    yaml += "  - {type: recordio, path: '" + Dataset::rec() +
            "', shuffle: " + (train ? "true" : "false") + "}\n";
  }
  yaml += "  - {type: decode, on_error: skip}\n";
  yaml += train ? "  - {type: augment, crop: random_resized, size: [224, 224], scale: [0.08, 1.0], "
                  "ratio: [0.75, 1.3333333], mirror: 0.5}\n"
                : "  - {type: augment, resize: 256, crop: center, size: [224, 224]}\n";
  yaml += "  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939], layout: NCHW}\n";
  yaml += "  - {type: batch, size: " + std::to_string(kBatchSize) +
          ", last: " + (train ? "drop" : "pad") + "}\n";
  yaml += "  - {type: discard}\n";
  return yaml;
}

TEST(AllocationCounter, SeesOperatorNewAndMallocOnAnyThread) {
  AllocationWindow window;
  window.open();
  g_escape = new int(7);
  delete static_cast<int*>(g_escape);
  std::thread other([] {
    g_escape = new std::string(100, 'x');
    delete static_cast<std::string*>(g_escape);
  });
  other.join();
#if MILLRACE_ALLOC_TEST_MALLOC
  void* (*volatile c_malloc)(std::size_t) = &std::malloc;
  g_escape = c_malloc(64);
  std::free(g_escape);
#endif
  window.close();
  // The int, the thread's state, the string object and its characters: all asked for by this
  // test's code, which lives in namespace millrace.
  EXPECT_GE(window.news(), 4U);
  EXPECT_TRUE(window.symbolized()) << "addr2line (binutils) is needed to name the callers";
  // The int and the thread's state are asked for by this test's own code (namespace millrace).
  const auto& owners = window.news_by_owner();
  EXPECT_GE(owners.count("millrace") != 0 ? owners.at("millrace") : 0U, 2U)
      << window.stacks_except({});
  EXPECT_NE(window.stacks_except({}).find("AllocationCounter_SeesOperatorNewAndMallocOnAnyThread"),
            std::string::npos)
      << window.stacks_except({});
#if MILLRACE_ALLOC_TEST_MALLOC
  EXPECT_GE(window.mallocs(), 1U);
  const auto libraries = window.mallocs_by_library();
  bool from_test = false;
  for (const auto& [library, count] : libraries) from_test |= library == "alloc_test";
  EXPECT_TRUE(from_test) << "the test's own malloc was not attributed to it";
#endif
  window.open();
  window.close();
  EXPECT_EQ(window.news(), 0U);
}

using Case = std::tuple<Recipe, Source, int>;

class SteadyState : public ::testing::TestWithParam<Case> {};

TEST_P(SteadyState, AllocatesNothingBetweenBatches) {
  const auto [recipe, source, threads] = GetParam();
  Pipeline pipeline = Pipeline::from_string(recipe_yaml(recipe, source, threads), "alloc_test");
  AllocationWindow window;
  int received = 0;
  while (auto batch = pipeline.next()) {
    if (received == kFirstBatch) window.open();
    if (received == kLastBatch) window.close();
    ++received;
  }
  const RunStats stats = pipeline.stats();
  ASSERT_TRUE(stats.error.empty()) << stats.error;
  ASSERT_TRUE(stats.skipped.empty())
      << stats.skipped.front().path << ": " << stats.skipped.front().error;
  ASSERT_GT(received, kLastBatch) << "the data set is too small for the window";
  const int delivered = recipe == Recipe::kTrain ? kImages / kBatchSize * kBatchSize : kImages;
  EXPECT_EQ(stats.images, static_cast<std::uint64_t>(delivered));

  // oneTBB's flow graph and OpenCV's resize allocate inside their own code (see the top of this
  // file); ours must not allocate per sample or per batch.
  const std::vector<std::string> third_party = {"oneTBB", "OpenCV"};
  EXPECT_TRUE(window.symbolized()) << "addr2line (binutils) is needed to name the callers";
  EXPECT_LT(window.news_except(third_party), static_cast<std::uint64_t>(kLastBatch - kFirstBatch))
      << "operator new ran " << window.news_except(third_party) << " times outside oneTBB and "
      << "OpenCV in batches " << kFirstBatch << " to " << kLastBatch << ":\n"
      << window.stacks_except(third_party);
  std::string owners;
  for (const auto& [owner, count] : window.news_by_owner()) {
    owners += " " + owner + " " + std::to_string(count);
  }
  std::string libraries;
  for (const auto& [library, count] : window.mallocs_by_library()) {
    libraries += " " + library + " " + std::to_string(count);
  }
  std::printf(
      "[ counts   ] batches %d-%d (%d samples): operator new %llu (by%s), malloc %llu%s%s\n",
      kFirstBatch, kLastBatch, (kLastBatch - kFirstBatch) * kBatchSize,
      static_cast<unsigned long long>(window.news()), owners.c_str(),
      static_cast<unsigned long long>(window.mallocs()), libraries.empty() ? "" : " from",
      libraries.c_str());
  RecordProperty("operator_new", static_cast<int>(window.news()));
  RecordProperty("malloc", static_cast<int>(window.mallocs()));
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [recipe, source, threads] = info.param;
  return std::string(recipe == Recipe::kTrain ? "Train" : "Validation") +
         (source == Source::kFiles ? "Files" : "RecordIo") + "Threads" + std::to_string(threads);
}

INSTANTIATE_TEST_SUITE_P(Recipes, SteadyState,
                         ::testing::Combine(::testing::Values(Recipe::kTrain, Recipe::kValidation),
                                            ::testing::Values(Source::kFiles, Source::kRecordIo),
                                            ::testing::Values(1, 2)),
                         case_name);

}  // namespace
}  // namespace millrace
