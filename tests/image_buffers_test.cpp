// The large intermediate images (decoded by decode, resized by augment) live in pools, one per
// stage that writes them, and go back as soon as the sample no longer needs them: the number of
// such buffers a pipeline ever creates is bounded by the items between the stage that writes an
// image and the one that reads it, not by the samples waiting in the ordering window or by the
// data set's size.
//
// The bound, derived from the graph's tokens (docs/ARCHITECTURE.md): a sample in decode's body
// or queued after it holds a token of the edge into the next stage, one in that stage's body or
// queued after it a token of the edge after that, and so on; a sample in the body of the stage
// that reads the image has given its input token back. So the samples holding a decoded image are
// at most, for each stage after decode up to the one that reads it (augment when it resizes or
// resamples, else normalize), the capacity of the edge into the stage (its queue plus one per slot
// of the stage before it) plus the stage's concurrency; the same for a resized image from augment
// to normalize. Each sample holds at most one buffer of each pool. The ordering window in front of
// the batch stage appears in neither.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "datasets/make_dataset.hpp"
#include "engine/pipeline_access.hpp"
#include "engine/pool.hpp"
#include "engine/random.hpp"
#include "millrace/millrace.hpp"
#include "stages/augment/augment_stage.hpp"
#include "stages/common/stage_testing.hpp"
#include "stages/decode/decode_stage.hpp"
#include "stages/normalize/normalize_stage.hpp"
#include "stages/recordio/pack.hpp"
#include "tests/support/temp_dir.hpp"

namespace millrace {
namespace {

namespace fs = std::filesystem;

// ---- The pool and the lease ---------------------------------------------------------------------

// Takes every free buffer out of `pool`: true when all `pool.created()` buffers were free, that
// is, when every buffer ever lent has come back. Gives them back before returning.
bool all_returned(BufferPool& pool) {
  const std::size_t created = pool.created();
  std::vector<PooledBuffer*> taken;
  for (std::size_t i = 0; i < created; ++i) taken.push_back(pool.acquire());
  const bool all = pool.created() == created;
  for (PooledBuffer* b : taken) pool.release(b);
  return all;
}

TEST(BufferPool, CreatesOnlyWhenEmptyAndReusesWhatComesBack) {
  BufferPool pool;
  EXPECT_EQ(pool.created(), 0U);
  PooledBuffer* a = pool.acquire();
  PooledBuffer* b = pool.acquire();
  EXPECT_NE(a, b);
  EXPECT_EQ(pool.created(), 2U);
  a->bytes.resize(1000);
  const std::uint8_t* memory = a->bytes.data();
  pool.release(a);
  PooledBuffer* again = pool.acquire();
  EXPECT_EQ(again, a);
  EXPECT_EQ(again->bytes.data(), memory) << "a buffer keeps its memory across uses";
  EXPECT_EQ(pool.created(), 2U);
  pool.release(again);
  pool.release(b);
  EXPECT_TRUE(all_returned(pool));
}

TEST(BufferPool, ATensorLendsItsStorageOutAndGetsItsOwnMemoryBack) {
  auto pool = std::make_shared<BufferPool>();
  Tensor t;
  t.reshape(DType::kInt8, {4, 5, 3}, "HWC");
  const std::uint8_t* own = t.storage.data();
  EXPECT_FALSE(t.borrowed());

  t.borrow(pool);
  EXPECT_TRUE(t.borrowed());
  t.reshape(DType::kUInt8, {300, 200, 3}, "HWC");
  const std::uint8_t* lent = t.storage.data();
  EXPECT_NE(lent, own);
  t.borrow(pool);  // already borrowing: keeps its buffer
  EXPECT_EQ(t.storage.data(), lent);
  EXPECT_EQ(pool->created(), 1U);

  t.give_back();
  EXPECT_FALSE(t.borrowed());
  EXPECT_EQ(t.rank, 0);
  EXPECT_EQ(t.storage.data(), own);
  EXPECT_TRUE(all_returned(*pool));

  // The next borrower gets the same memory, with its capacity: no allocation.
  Tensor u;
  u.borrow(pool);
  EXPECT_EQ(u.storage.data(), lent);
  EXPECT_GE(u.storage.capacity(), std::size_t{300} * 200 * 3);
  u.give_back();
  EXPECT_EQ(pool->created(), 1U);
  t.give_back();  // nothing borrowed: nothing happens
  EXPECT_EQ(t.storage.data(), own);
}

TEST(BufferPool, SwappedTensorsKeepEachStorageWithItsLease) {
  auto pool = std::make_shared<BufferPool>();
  Sample s;
  s.scratch.reshape(DType::kUInt8, {8, 8, 3}, "HWC");
  const std::uint8_t* own = s.scratch.storage.data();
  s.tensor.borrow(pool);
  s.tensor.reshape(DType::kUInt8, {100, 100, 3}, "HWC");
  const std::uint8_t* lent = s.tensor.storage.data();
  std::swap(s.tensor, s.scratch);
  EXPECT_FALSE(s.tensor.borrowed());
  EXPECT_TRUE(s.scratch.borrowed());
  EXPECT_EQ(s.tensor.storage.data(), own);
  EXPECT_EQ(s.scratch.storage.data(), lent);
  s.scratch.give_back();
  EXPECT_TRUE(all_returned(*pool));
}

TEST(BufferPool, ResetGivesBackAndALeaseKeepsItsPoolAlive) {
  auto pool = std::make_shared<BufferPool>();
  std::weak_ptr<BufferPool> watch = pool;
  Sample s;
  s.tensor.borrow(pool);
  s.scratch.borrow(pool);
  EXPECT_EQ(pool->created(), 2U);
  pool.reset();
  EXPECT_FALSE(watch.expired()) << "the leases hold the pool";
  s.reset();
  EXPECT_FALSE(s.tensor.borrowed());
  EXPECT_FALSE(s.scratch.borrowed());
  EXPECT_TRUE(watch.expired()) << "the last lease given back releases the pool";

  // A tensor destroyed while it borrows returns the buffer too.
  auto other = std::make_shared<BufferPool>();
  {
    Tensor t;
    t.borrow(other);
  }
  EXPECT_TRUE(all_returned(*other));
}

TEST(BufferPool, ACopyOfABorrowingTensorOwnsItsBytes) {
  auto pool = std::make_shared<BufferPool>();
  Tensor t;
  t.borrow(pool);
  t.reshape(DType::kUInt8, {2, 2, 3}, "HWC");
  t.storage[5] = 42;
  Tensor copy = t;
  EXPECT_FALSE(copy.borrowed());
  EXPECT_NE(copy.storage.data(), t.storage.data());
  EXPECT_EQ(copy.storage[5], 42);
  Tensor target;
  target.borrow(pool);
  target.reshape(DType::kUInt8, {2, 2, 3}, "HWC");
  const std::uint8_t* lent = target.storage.data();
  target = t;  // copies the bytes into the target's own (borrowed) storage
  EXPECT_TRUE(target.borrowed());
  EXPECT_EQ(target.storage.data(), lent);
  EXPECT_EQ(target.storage[5], 42);
  target.give_back();
  t.give_back();
  EXPECT_TRUE(all_returned(*pool));
}

// ---- The stages, one sample at a time
// ------------------------------------------------------------

using testing::NullReporter;

StageContext context_for(const std::string& name) { return testing::stage_context(name, 5); }

std::vector<std::uint8_t> jpeg(int width, int height) {
  cv::Mat bgr(height, width, CV_8UC3);
  cv::randu(bgr, cv::Scalar::all(0), cv::Scalar::all(255));
  std::vector<std::uint8_t> out;
  cv::imencode(".jpg", bgr, out, {cv::IMWRITE_JPEG_QUALITY, 90});
  return out;
}

NormalizeStage::Params int8_mean() {
  NormalizeStage::Params p;
  p.mean = {123.68, 116.779, 103.939};
  return p;
}

// decode -> [augment] -> normalize, linked as a pipeline links them.
struct Chain {
  std::unique_ptr<DecodeStage> decode;
  std::unique_ptr<AugmentStage> augment;
  std::unique_ptr<NormalizeStage> normalize;
  NullReporter reporter;

  Chain(DecodeStage::Params dp, const AugmentStage::Params* ap,
        const NormalizeStage::Params& np = int8_mean()) {
    decode = std::make_unique<DecodeStage>(context_for("decode"), dp);
    if (ap != nullptr) augment = std::make_unique<AugmentStage>(context_for("augment"), *ap);
    normalize = std::make_unique<NormalizeStage>(context_for("normalize"), np);
    Diagnostics d;
    std::vector<Stage*> stages;
    for (Stage* s : std::vector<Stage*>{decode.get(), augment.get(), normalize.get()}) {
      if (s != nullptr) stages.push_back(s);
    }
    link_stream(stages, d);
    EXPECT_FALSE(d.has_errors());
    normalize->prepare();
  }
  BufferPool& decoded() const { return *decode->buffer_pool(); }
  BufferPool& resized() const { return *augment->buffer_pool(); }
};

AugmentStage::Params center(int resize) {
  AugmentStage::Params p;
  p.resize = resize;
  p.crop = AugmentStage::Crop::kCenter;
  p.size = {64, 64};
  return p;
}

AugmentStage::Params random_resized() {
  AugmentStage::Params p;
  p.crop = AugmentStage::Crop::kRandomResized;
  p.size = {48, 48};
  p.mirror = 0.5;
  return p;
}

// What the bottleneck report may offer for a limiting decode or augment: only settings they
// leave off.
TEST(CheaperSettings, DecodeOffersReduceAndFastDctWhileTheyAreOff) {
  auto changes = [](const DecodeStage::Params& p) {
    std::vector<std::string> out;
    for (const CheaperSetting& c : DecodeStage(context_for("decode"), p).cheaper_settings()) {
      EXPECT_FALSE(c.effect.empty()) << c.change;
      out.push_back(c.change);
    }
    return out;
  };
  DecodeStage::Params p;
  EXPECT_EQ(changes(p), (std::vector<std::string>{"reduce: auto", "dct: fast"}));
  p.reduce = DecodeStage::Reduce::kAuto;
  EXPECT_EQ(changes(p), (std::vector<std::string>{"dct: fast"}));
  p.dct = DecodeStage::Dct::kFast;
  EXPECT_TRUE(changes(p).empty());
  EXPECT_EQ(AugmentStage(context_for("augment"), center(256)).cheaper_settings().size(), 1U);
  EXPECT_TRUE(AugmentStage(context_for("augment"), random_resized()).cheaper_settings().empty());
}

TEST(ImageBuffers, EachBufferGoesBackToThePoolItCameFrom) {
  const AugmentStage::Params ap = center(80);
  Chain chain({}, &ap);
  EXPECT_NE(chain.decode->buffer_pool(), chain.augment->buffer_pool());
  Sample s;
  s.bytes = jpeg(160, 100);
  chain.decode->process(s, chain.reporter);
  const std::uint8_t* decoded = s.tensor.storage.data();
  chain.augment->process(s, chain.reporter);
  const std::uint8_t* resized = s.tensor.storage.data();
  chain.normalize->process(s, chain.reporter);
  // The next borrower of each pool gets the memory of that pool's buffer back.
  Tensor a;
  a.borrow(chain.decode->buffer_pool());
  EXPECT_EQ(a.storage.data(), decoded);
  Tensor b;
  b.borrow(chain.augment->buffer_pool());
  EXPECT_EQ(b.storage.data(), resized);
  a.give_back();
  b.give_back();
}

TEST(ImageBuffers, DecodeBorrowsAndNormalizeGivesBackWithoutAugment) {
  Chain chain({}, nullptr);
  Sample s;
  s.bytes = jpeg(120, 90);
  chain.decode->process(s, chain.reporter);
  EXPECT_TRUE(s.tensor.borrowed());
  EXPECT_EQ(s.tensor.shape[0], 90);
  chain.normalize->process(s, chain.reporter);
  EXPECT_FALSE(s.tensor.borrowed());
  EXPECT_FALSE(s.scratch.borrowed());
  EXPECT_EQ(s.tensor.dtype, DType::kInt8);
  EXPECT_EQ(s.tensor.bytes(), std::size_t{3} * 90 * 120);
  EXPECT_EQ(chain.decoded().created(), 1U);
  EXPECT_TRUE(all_returned(chain.decoded()));
}

TEST(ImageBuffers, APlainCropStaysBorrowedUntilNormalizeHasReadIt) {
  for (int resize : {0, 80}) {
    const AugmentStage::Params ap = center(resize);
    Chain chain({}, &ap);
    Sample s;
    s.bytes = jpeg(160, 100);
    chain.decode->process(s, chain.reporter);
    chain.augment->process(s, chain.reporter);
    EXPECT_TRUE(s.tensor.borrowed()) << "resize " << resize << ": the crop is a region of it";
    EXPECT_FALSE(s.scratch.borrowed()) << "resize " << resize << ": the decoded image went back";
    EXPECT_EQ(s.geometry.roi.height, 64);
    chain.normalize->process(s, chain.reporter);
    EXPECT_FALSE(s.tensor.borrowed());
    EXPECT_FALSE(s.scratch.borrowed());
    EXPECT_EQ(s.tensor.shape[1], 64);
    EXPECT_EQ(chain.decoded().created(), 1U);
    EXPECT_EQ(chain.resized().created(), resize > 0 ? 1U : 0U);
    EXPECT_TRUE(all_returned(chain.decoded()));
    EXPECT_TRUE(all_returned(chain.resized()));
  }
}

TEST(ImageBuffers, AugmentGivesBackOnceItHasWrittenItsOutput) {
  const AugmentStage::Params ap = random_resized();
  for (auto reduce : {DecodeStage::Reduce::kOff, DecodeStage::Reduce::kAuto}) {
    DecodeStage::Params dp;
    dp.reduce = reduce;
    Chain chain(dp, &ap);
    for (std::uint64_t id = 0; id < 8; ++id) {
      Sample s;
      s.id = id;
      s.bytes = jpeg(400, 300);
      chain.decode->process(s, chain.reporter);
      EXPECT_TRUE(s.tensor.borrowed());
      chain.augment->process(s, chain.reporter);
      EXPECT_FALSE(s.tensor.borrowed()) << "the crop is augment's own output";
      EXPECT_FALSE(s.scratch.borrowed());
      EXPECT_EQ(s.tensor.shape[0], 48);
      chain.normalize->process(s, chain.reporter);
      EXPECT_FALSE(s.tensor.borrowed());
    }
    EXPECT_EQ(chain.decoded().created(), 1U) << "one sample at a time needs one buffer";
    EXPECT_EQ(chain.resized().created(), 0U) << "no resize, nothing borrowed for one";
    EXPECT_TRUE(all_returned(chain.decoded()));
  }
}

TEST(ImageBuffers, RecycledBuffersGiveTheSameBytesAsFreshOnes) {
  // Buffers that held larger and smaller images before, in recycled samples, must not change a
  // single output byte: the stages write every byte they later read.
  const std::vector<std::vector<std::uint8_t>> images = {jpeg(320, 240), jpeg(96, 160),
                                                         jpeg(500, 375), jpeg(200, 150)};
  for (const AugmentStage::Params& ap : {center(80), random_resized()}) {
    for (auto reduce : {DecodeStage::Reduce::kOff, DecodeStage::Reduce::kAuto}) {
      DecodeStage::Params dp;
      dp.reduce = reduce;
      auto output = [&](Chain& chain, Sample& s, std::size_t i) {
        s.reset();
        s.id = i;
        s.bytes = images[i];
        chain.decode->process(s, chain.reporter);
        chain.augment->process(s, chain.reporter);
        chain.normalize->process(s, chain.reporter);
        return std::vector<std::uint8_t>(
            s.tensor.storage.begin(),
            s.tensor.storage.begin() + static_cast<std::ptrdiff_t>(s.tensor.bytes()));
      };
      std::vector<std::vector<std::uint8_t>> fresh;
      for (std::size_t i = 0; i < images.size(); ++i) {
        Chain chain(dp, &ap);
        Sample s;
        fresh.push_back(output(chain, s, i));
      }
      Chain chain(dp, &ap);
      Sample recycled;
      for (int round = 0; round < 2; ++round) {
        for (std::size_t i = images.size(); i-- > 0;) {
          EXPECT_EQ(output(chain, recycled, i), fresh[i]) << "image " << i << " round " << round;
        }
      }
    }
  }
}

TEST(ImageBuffers, ASampleThatFailsGivesItsBufferBack) {
  const AugmentStage::Params too_big = [] {
    AugmentStage::Params p;
    p.crop = AugmentStage::Crop::kCenter;
    p.size = {500, 500};
    return p;
  }();
  Chain chain({}, &too_big);
  Sample corrupt;
  corrupt.bytes = jpeg(64, 64);
  corrupt.bytes.resize(corrupt.bytes.size() / 3);  // truncated: an error under `strict`
  EXPECT_THROW(chain.decode->process(corrupt, chain.reporter), SampleError);
  EXPECT_FALSE(corrupt.tensor.borrowed());
  EXPECT_TRUE(all_returned(chain.decoded()));

  Sample small;
  small.bytes = jpeg(64, 64);
  chain.decode->process(small, chain.reporter);
  EXPECT_TRUE(small.tensor.borrowed());
  EXPECT_THROW(chain.augment->process(small, chain.reporter), SampleError);
  EXPECT_FALSE(small.tensor.borrowed());
  EXPECT_FALSE(small.scratch.borrowed());
  EXPECT_TRUE(all_returned(chain.decoded()));
}

TEST(ImageBuffers, NormalizeGivesBackWhenTheMeanImageDoesNotFit) {
  const testing::TempDir dir;
  const fs::path npy = dir / "mean.npy";
  {
    // A (3, 4, 4) float32 mean image: the crop below is 64x64, so every sample is an error.
    const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4, 4), }";
    std::string padded = header + std::string(118 - header.size(), ' ') + "\n";
    std::ofstream out(npy, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const char length[2] = {static_cast<char>(padded.size()), 0};
    out.write(length, 2);
    out << padded;
    const std::vector<float> zeros(48, 0.0F);
    out.write(reinterpret_cast<const char*>(zeros.data()),
              static_cast<std::streamsize>(zeros.size() * sizeof(float)));
  }
  NormalizeStage::Params np;
  np.mean_image = npy.string();
  const AugmentStage::Params ap = center(0);
  Chain chain({}, &ap, np);
  Sample s;
  s.bytes = jpeg(100, 100);
  chain.decode->process(s, chain.reporter);
  chain.augment->process(s, chain.reporter);
  EXPECT_TRUE(s.tensor.borrowed());
  EXPECT_THROW(chain.normalize->process(s, chain.reporter), SampleError);
  EXPECT_FALSE(s.tensor.borrowed());
  EXPECT_FALSE(s.scratch.borrowed());
  EXPECT_TRUE(all_returned(chain.decoded()));
}

// ---- Whole pipelines ----------------------------------------------------------------------------

constexpr int kImages = 320;
constexpr int kCorrupt = 12;

// Generated ImageNet-like JPEGs (shorter side 333..500), a list of them, a list with corrupt files
// among them, and the same images packed into a .rec: made once for the binary.
class Dataset : public ::testing::Environment {
 public:
  void SetUp() override {
    dir_ = std::make_unique<testing::TempDir>("millrace_image_buffers");
    datasets::DatasetSpec spec;
    spec.dir = images();
    spec.count = kImages;
    spec.classes = 4;
    spec.seed = 3;
    datasets::make_dataset(spec, {});
    // Every 27th entry is followed by a file that does not decode: a garbage one or a truncated
    // JPEG, skipped as tombstones.
    std::ifstream in(fs::path(images()) / "labels.lst");
    std::ofstream out(fs::path(images()) / "with_errors.lst");
    std::string line;
    int index = 0;
    int corrupt = 0;
    while (std::getline(in, line)) {
      const std::string rest = line.substr(line.find('\t'));
      out << index++ << rest << "\n";
      if (index % 27 == 0 && corrupt < kCorrupt) {
        const std::string name = "corrupt_" + std::to_string(corrupt) + ".jpg";
        std::ofstream bad(fs::path(images()) / name, std::ios::binary);
        if (corrupt % 2 == 0) {
          bad << "not an image at all";
        } else {
          const std::string good = (fs::path(images()) / rest.substr(rest.rfind('\t') + 1));
          std::ifstream source(good, std::ios::binary);
          std::string bytes((std::istreambuf_iterator<char>(source)), {});
          bad << bytes.substr(0, bytes.size() / 2);
        }
        out << index++ << "\t0.000000\t" << name << "\n";
        ++corrupt;
      }
    }
    // Images of one size, for a pipeline without augment (whose batches need equal shapes).
    fs::create_directories(fixed());
    std::ofstream fixed_list(fs::path(fixed()) / "labels.lst");
    for (int i = 0; i < kImages; ++i) {
      const std::string name = "img_" + std::to_string(i) + ".jpg";
      const std::vector<std::uint8_t> bytes = jpeg(128, 96);
      std::ofstream(fs::path(fixed()) / name, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
      fixed_list << i << "\t0.000000\t" << name << "\n";
    }
    recordio::PackOptions pack;
    pack.list = (fs::path(images()) / "labels.lst").string();
    pack.output = rec();
    recordio::pack(pack);
  }
  void TearDown() override { dir_.reset(); }
  static std::string images() { return dir_->file("images"); }
  static std::string rec() { return dir_->file("images.rec"); }
  static std::string fixed() { return dir_->file("fixed"); }

 private:
  static inline std::unique_ptr<testing::TempDir> dir_;
};

const auto* const kDatasetEnvironment = ::testing::AddGlobalTestEnvironment(new Dataset);

struct Recipe {
  const char* name;
  const char* source;  // files | recordio
  const char* list;    // files: the list
  const char* decode;
  const char* augment;  // empty: no augment stage
};

const Recipe kRecipes[] = {
    {"validation", "files", "labels.lst", "{type: decode, on_error: skip}",
     "{type: augment, resize: 96, crop: center, size: [64, 64]}"},
    {"train", "files", "labels.lst", "{type: decode, on_error: skip}",
     "{type: augment, crop: random_resized, size: [64, 64], mirror: 0.5}"},
    {"train_reduced", "files", "labels.lst", "{type: decode, on_error: skip, reduce: auto}",
     "{type: augment, crop: random_resized, size: [64, 64], mirror: 0.5}"},
    {"validation_reduced", "files", "labels.lst", "{type: decode, on_error: skip, reduce: auto}",
     "{type: augment, resize: 96, crop: center, size: [64, 64]}"},
    {"crop_without_resize", "files", "labels.lst", "{type: decode, on_error: skip}",
     "{type: augment, crop: random, size: [300, 300]}"},
    // Without augment the images come from a folder of equally sized ones.
    {"no_augment", "files", "labels.lst", "{type: decode, on_error: skip}", ""},
    {"recordio", "recordio", "", "{type: decode, on_error: skip}",
     "{type: augment, resize: 96, crop: center, size: [64, 64]}"},
    {"with_tombstones", "files", "with_errors.lst", "{type: decode, on_error: skip}",
     "{type: augment, resize: 96, crop: center, size: [64, 64]}"},
};

std::string recipe_yaml(const Recipe& r, int threads, int queue) {
  std::string yaml = "pipeline: {threads: " + std::to_string(threads) +
                     ", queue: " + std::to_string(queue) + ", ordered: true, seed: 1}\nstages:\n";
  if (std::string(r.source) == "files") {
    const bool whole = *r.augment == '\0';
    yaml += "  - {type: files, root: '" + (whole ? Dataset::fixed() : Dataset::images()) +
            "', list: " + r.list + ", shuffle: true}\n";
  } else {
    yaml += "  - {type: recordio, path: '" + Dataset::rec() + "', shuffle: true}\n";
  }
  yaml += std::string("  - ") + r.decode + "\n";
  if (*r.augment != '\0') yaml += std::string("  - ") + r.augment + "\n";
  yaml += "  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939]}\n";
  // A wide ordering window (the capacity of the edge into batch): samples wait there with their
  // output only.
  yaml += "  - {type: batch, size: 4, last: partial, queue: 24}\n";
  yaml += "  - {type: discard}\n";
  return yaml;
}

// The bound of the file's opening comment, from the plan: for each stage after `lender` up to
// `reader` (indices into plan.stages), its input edge's capacity (its queue plus one token per
// slot of the stage before it) plus its concurrency.
std::size_t bound_between(const PipelinePlan& plan, std::size_t lender, std::size_t reader,
                          int threads) {
  auto concurrency = [&](const StagePlan& s) {
    return static_cast<std::size_t>(s.concurrency_auto ? threads : s.concurrency);
  };
  std::size_t bound = 0;
  for (std::size_t i = lender + 1; i <= reader; ++i) {
    const StagePlan& s = plan.stages[i];
    bound += static_cast<std::size_t>(s.queue) + concurrency(plan.stages[i - 1]) + concurrency(s);
  }
  return bound;
}

// The two pools of a decode [-> augment] -> normalize pipeline and the bounds on their buffers.
struct Pools {
  std::shared_ptr<BufferPool> decoded;
  std::shared_ptr<BufferPool> resized;  // null without augment
  std::size_t decoded_bound = 0;
  std::size_t resized_bound = 0;

  Pools(Pipeline& p, int threads) {
    const PipelinePlan& plan = PipelineAccess::impl(p).plan();
    std::size_t decode = 0;
    std::size_t augment = 0;
    std::size_t normalize = 0;
    const AugmentStage* augment_stage = nullptr;
    for (std::size_t i = 0; i < plan.stages.size(); ++i) {
      const Stage* stage = plan.stages[i].stage.get();
      if (const auto* d = dynamic_cast<const DecodeStage*>(stage)) {
        decode = i;
        decoded = d->buffer_pool();
      } else if (const auto* a = dynamic_cast<const AugmentStage*>(stage)) {
        augment = i;
        augment_stage = a;
        resized = a->buffer_pool();
      } else if (dynamic_cast<const NormalizeStage*>(stage) != nullptr) {
        normalize = i;
      }
    }
    // Augment reads the decoded image and writes an image of its own when it resizes or
    // resamples a crop; a plain crop leaves normalize to read it.
    const bool augment_reads = augment_stage != nullptr &&
                               (augment_stage->params().resize > 0 ||
                                augment_stage->params().crop == AugmentStage::Crop::kRandomResized);
    decoded_bound = bound_between(plan, decode, augment_reads ? augment : normalize, threads);
    if (augment_stage != nullptr) resized_bound = bound_between(plan, augment, normalize, threads);
  }
};

class PipelineBuffers : public ::testing::TestWithParam<int> {};

TEST_P(PipelineBuffers, BoundedByTheEdgesAfterDecodeNotByTheWindowOrTheDataSet) {
  const int threads = GetParam();
  constexpr int kQueue = 3;
  for (const Recipe& r : kRecipes) {
    SCOPED_TRACE(r.name);
    Pipeline p = Pipeline::from_string(recipe_yaml(r, threads, kQueue), r.name);
    Pipeline::Impl& impl = PipelineAccess::impl(p);
    const Pools pools(p, threads);
    // Nothing is consumed at first: the batches fill the edges after the batch stage and the
    // consumer's prefetch, the batch stage stops, and samples pile up in its input edge, the
    // ordering window, until the window's tokens stop the source. That always comes; the
    // deadline only turns a hang into a failure.
    std::size_t window = 0;
    for (const StagePlan& s : impl.plan().stages) {
      if (s.type == "batch") window = static_cast<std::size_t>(s.queue);
    }
    p.start();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (impl.samples_created() < window && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_GE(impl.samples_created(), window) << "the ordering window never filled";
    std::uint64_t rows = 0;
    while (auto b = p.next()) rows += b->size() - static_cast<std::size_t>(b->pad());
    const RunStats stats = p.stats();
    const bool tombstones = std::string(r.list) == "with_errors.lst";
    EXPECT_EQ(rows, static_cast<std::uint64_t>(kImages));
    EXPECT_EQ(stats.skipped.size(), tombstones ? static_cast<std::size_t>(kCorrupt) : 0U);
    // Far more samples were alive at once than buffers may be: the buffers do not follow them.
    EXPECT_GT(impl.samples_created(), pools.decoded_bound + pools.resized_bound);
    EXPECT_GE(pools.decoded->created(), 1U);
    EXPECT_LE(pools.decoded->created(), pools.decoded_bound)
        << "samples created " << impl.samples_created() << " of " << impl.samples_limit();
    EXPECT_TRUE(all_returned(*pools.decoded)) << "every buffer is back once the stream has ended";
    std::size_t resized = 0;
    if (pools.resized != nullptr) {
      resized = pools.resized->created();
      EXPECT_LE(resized, pools.resized_bound);
      EXPECT_TRUE(all_returned(*pools.resized));
    }
    std::printf(
        "%-20s threads %d: %zu decoded-image buffers (bound %zu), %zu resized (bound %zu), %zu "
        "samples (limit %zu)\n",
        r.name, threads, pools.decoded->created(), pools.decoded_bound, resized,
        pools.resized_bound, impl.samples_created(), impl.samples_limit());
  }
}

TEST_P(PipelineBuffers, ACancelledRunGivesEveryBufferBack) {
  const int threads = GetParam();
  std::shared_ptr<BufferPool> decoded;
  std::shared_ptr<BufferPool> resized;
  {
    Pipeline p = Pipeline::from_string(recipe_yaml(kRecipes[0], threads, 4), "cancelled");
    const Pools pools(p, threads);
    decoded = pools.decoded;
    resized = pools.resized;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.next().has_value());
    p.cancel();
    while (p.next()) {
    }
    EXPECT_LE(decoded->created(), pools.decoded_bound);
    EXPECT_LE(resized->created(), pools.resized_bound);
  }
  // The pipeline is gone; the pools live on in these handles, with every buffer back.
  EXPECT_GE(decoded->created(), 1U);
  EXPECT_GE(resized->created(), 1U);
  EXPECT_TRUE(all_returned(*decoded));
  EXPECT_TRUE(all_returned(*resized));
}

INSTANTIATE_TEST_SUITE_P(Threads, PipelineBuffers, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "_threads";
                         });

}  // namespace
}  // namespace millrace
