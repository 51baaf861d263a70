#include "stages/recordio/pack.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <stdexcept>
#include <system_error>
#include <utility>
#include <vector>

#include "stages/common/jpeg/jpeg_restart.hpp"
#include "stages/common/source/image_list.hpp"
#include "stages/recordio/recordio_kernel.hpp"

namespace millrace::recordio {

namespace fs = std::filesystem;

namespace {

constexpr int kDefaultQuality = 95;  // im2rec's default

struct Item {
  std::uint64_t id = 0;
  std::vector<float> labels;
  std::string path;
};

std::string errno_text() { return std::error_code(errno, std::generic_category()).message(); }

void read_file(const std::string& path, std::vector<std::uint8_t>& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + ": not a regular file");
  }
  out.resize(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? errno_text() : "the file shrank while it was read";
      ::close(fd);
      throw std::runtime_error(path + ": cannot read: " + why);
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

// Decodes, scales the shorter side to `resize` (im2rec's arithmetic: the other side is
// floor(other * resize / shorter)) and encodes as JPEG.
void reencode(const std::string& path, int resize, int quality, std::vector<std::uint8_t>& bytes) {
  const cv::Mat encoded(1, static_cast<int>(bytes.size()), CV_8U, bytes.data());
  cv::Mat image = cv::imdecode(encoded, cv::IMREAD_COLOR);
  if (image.empty()) throw std::runtime_error(path + ": not an image OpenCV can decode");
  if (resize > 0) {
    const std::int64_t w = image.cols;
    const std::int64_t h = image.rows;
    const cv::Size size = h > w ? cv::Size(resize, static_cast<int>(h * resize / w))
                                : cv::Size(static_cast<int>(w * resize / h), resize);
    if (size != image.size()) {
      cv::Mat scaled;
      cv::resize(image, scaled, size, 0, 0, cv::INTER_AREA);
      image = scaled;
    }
  }
  std::vector<std::uint8_t> out;
  if (!cv::imencode(".jpg", image, out, {cv::IMWRITE_JPEG_QUALITY, quality})) {
    throw std::runtime_error(path + ": JPEG encoding failed");
  }
  bytes = std::move(out);
}

std::vector<Item> items_of(const PackOptions& o, std::vector<std::string>& skipped) {
  std::vector<Item> items;
  if (!o.list.empty()) {
    const std::string root = o.root.empty() ? fs::path(o.list).parent_path().string() : o.root;
    for (auto& e : read_list(o.list)) {
      const fs::path p(e.path);
      items.push_back(
          {e.index, std::move(e.labels),
           p.is_absolute() || root.empty() ? p.string() : (fs::path(root) / p).string()});
    }
    if (items.empty()) throw std::runtime_error(o.list + ": the list is empty");
    return items;
  }
  std::error_code ec;
  if (!fs::is_directory(o.folder, ec)) {
    throw std::runtime_error(o.folder + ": not a folder");
  }
  FileIndex entries;
  std::vector<UnreadableEntry> unreadable;
  try {
    entries = scan_image_folder(o.folder, &unreadable);
  } catch (const fs::filesystem_error& e) {
    throw std::runtime_error(o.folder + ": cannot scan: " + e.code().message());
  }
  // Entries named like images that are not read (a dangling link, a FIFO, a file with no class)
  // are reported, never dropped without a word.
  std::size_t next_unreadable = 0;  // both are in id order
  for (std::size_t i = 0; i < entries.size(); ++i) {
    FileEntry e = entries[i];
    if (next_unreadable < unreadable.size() && unreadable[next_unreadable].id == e.id) {
      skipped.push_back(e.path + ": " + unreadable[next_unreadable++].reason);
      continue;
    }
    items.push_back({e.id, std::move(e.labels), std::move(e.path)});
  }
  if (items.empty()) throw std::runtime_error(o.folder + ": no images found");
  return items;
}

}  // namespace

std::string temporary_name_for(const std::string& path) {
  const fs::path p(path);
  return (p.parent_path() / ("." + p.filename().string() + ".tmp")).string();
}

std::string index_path_for(const std::string& rec_path) {
  return fs::path(rec_path).replace_extension(".idx").string();
}

PackReport pack(const PackOptions& o, const PackProgress& progress) {
  if (o.list.empty() == o.folder.empty()) {
    throw std::invalid_argument("pack takes either a list or a folder");
  }
  if (!o.root.empty() && o.list.empty()) throw std::invalid_argument("a root goes with a list");
  if (o.output.empty()) throw std::invalid_argument("pack needs an output .rec path");
  if (o.resize < 0) throw std::invalid_argument("resize must be positive");
  if (o.quality < 0 || o.quality > 100) throw std::invalid_argument("quality must be in 1..100");
  if (o.restart < -1 || o.restart > 65535) {
    throw std::invalid_argument("the restart interval must be in 0..65535 MCUs");
  }

  PackReport report;
  const std::vector<Item> items = items_of(o, report.skipped);
  report.rec_path = o.output;
  report.idx_path = index_path_for(o.output);
  if (fs::path(report.rec_path) == fs::path(report.idx_path)) {
    throw std::invalid_argument("the output '" + o.output + "' would be its own index");
  }
  const fs::path parent = fs::path(o.output).parent_path();
  if (!parent.empty()) fs::create_directories(parent);

  const bool recode = o.resize > 0 || o.quality > 0;
  const int quality = o.quality > 0 ? o.quality : kDefaultQuality;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> index;
  index.reserve(items.size());
  std::vector<std::uint8_t> image;
  std::vector<std::uint8_t> payload;
  std::vector<std::uint8_t> regridded;
  // Written under hidden temporary names and renamed into place when whole: an interrupted pack
  // (a signal, a full disk) leaves no .rec that a run would read as a smaller data set. The next
  // pack to the same output overwrites the temporary files.
  const std::string rec_temp = temporary_name_for(report.rec_path);
  const std::string idx_temp = temporary_name_for(report.idx_path);
  RecordWriter writer(rec_temp);
  try {
    for (std::size_t i = 0; i < items.size(); ++i) {
      const Item& item = items[i];
      read_file(item.path, image);
      if (recode) reencode(item.path, o.resize, quality, image);
      if (o.restart >= 0) {
        const RestartResult r = add_restart_grid(image.data(), image.size(), o.restart, regridded);
        if (r.outcome == RestartOutcome::kRewritten) {
          image.swap(regridded);
          ++report.restart_rewritten;
        } else if (r.outcome == RestartOutcome::kUnreadable) {
          ++report.restart_unreadable;
        }
      }
      build_image_payload(item.id, item.labels, image, payload);
      index.emplace_back(item.id, writer.write(payload));
      report.image_bytes += image.size();
      if (progress) progress(i + 1, items.size());
    }
    writer.close();
    write_index(idx_temp, index);
    // The .rec first, with any older index out of the way: stopped between the renames, the
    // output is a whole .rec without an index (read sequentially), never one beside an index of
    // another file.
    std::error_code ec;
    fs::remove(report.idx_path, ec);
    if (ec) throw std::runtime_error(report.idx_path + ": cannot remove: " + ec.message());
    fs::rename(rec_temp, report.rec_path, ec);
    if (ec)
      throw std::runtime_error(report.rec_path + ": cannot rename into place: " + ec.message());
    fs::rename(idx_temp, report.idx_path, ec);
    if (ec)
      throw std::runtime_error(report.idx_path + ": cannot rename into place: " + ec.message());
  } catch (...) {
    try {
      writer.close();
    } catch (const std::exception&) {
      // The first error is the one reported.
    }
    std::error_code ec;
    fs::remove(rec_temp, ec);
    fs::remove(idx_temp, ec);
    throw;
  }
  report.records = items.size();
  report.file_bytes = writer.size();
  return report;
}

}  // namespace millrace::recordio
