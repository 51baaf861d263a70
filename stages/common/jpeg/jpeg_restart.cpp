#include "stages/common/jpeg/jpeg_restart.hpp"

// jpeglib.h needs FILE and size_t declared before it.
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <algorithm>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <string>

namespace millrace::recordio {
namespace {

// libjpeg's error callbacks must not return after a fatal error: they keep the message and jump
// back to the step that made the library call. A warning (corrupt data libjpeg would patch over)
// stops the rewrite as well: a patched image would not be lossless.
struct Errors {
  jpeg_error_mgr manager;  // first: libjpeg hands this object back as a jpeg_error_mgr*
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

Errors& errors_of(j_common_ptr cinfo) {
  // Sound: `manager` is the first member of a standard-layout struct.
  return *reinterpret_cast<Errors*>(cinfo->err);
}

[[noreturn]] void error_exit(j_common_ptr cinfo) {
  Errors& errors = errors_of(cinfo);
  (*cinfo->err->format_message)(cinfo, errors.message);
  std::longjmp(errors.jump, 1);
}

void emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace output
  error_exit(cinfo);
}

// Both codec objects and the memory destination; destroyed however the rewrite ends.
struct Transcoder {
  Transcoder() {
    src.err = jpeg_std_error(&src_errors.manager);
    src_errors.manager.error_exit = error_exit;
    src_errors.manager.emit_message = emit_message;
    dst.err = jpeg_std_error(&dst_errors.manager);
    dst_errors.manager.error_exit = error_exit;
    dst_errors.manager.emit_message = emit_message;
  }
  Transcoder(const Transcoder&) = delete;
  Transcoder& operator=(const Transcoder&) = delete;
  ~Transcoder() {
    if (src_created) jpeg_destroy_decompress(&src);
    if (dst_created) jpeg_destroy_compress(&dst);
    std::free(buffer);
  }

  jpeg_decompress_struct src{};
  jpeg_compress_struct dst{};
  Errors src_errors;
  Errors dst_errors;
  bool src_created = false;
  bool dst_created = false;
  unsigned char* buffer = nullptr;  // jpeg_mem_dest's, from malloc
  unsigned long buffer_size = 0;
};

// Each step guards its library calls with setjmp and reports a libjpeg error by returning false.
// Nothing with a destructor lives in their frames, so the jump skips nothing.

bool read_source(Transcoder& t, const std::uint8_t* d, std::size_t n, jvirt_barray_ptr*& coefs) {
  if (setjmp(t.src_errors.jump) != 0) return false;
  jpeg_create_decompress(&t.src);
  t.src_created = true;
  jpeg_mem_src(&t.src, d, static_cast<unsigned long>(n));
  jpeg_save_markers(&t.src, JPEG_COM, 0xFFFF);
  for (int m = 0; m < 16; ++m) jpeg_save_markers(&t.src, JPEG_APP0 + m, 0xFFFF);
  if (jpeg_read_header(&t.src, TRUE) != JPEG_HEADER_OK) return false;
  coefs = jpeg_read_coefficients(&t.src);
  return coefs != nullptr;
}

bool is_marker(const jpeg_saved_marker_ptr m, int code, const char* id, std::size_t id_size) {
  return m->marker == code && m->data_length >= id_size && std::memcmp(m->data, id, id_size) == 0;
}

bool write_destination(Transcoder& t, jvirt_barray_ptr* coefs, int interval, int& chosen) {
  if (setjmp(t.dst_errors.jump) != 0) return false;
  // The destination reads the coefficients through the source's memory manager: an error there
  // lands in the source's handler.
  if (setjmp(t.src_errors.jump) != 0) return false;
  jpeg_create_compress(&t.dst);
  t.dst_created = true;
  jpeg_mem_dest(&t.dst, &t.buffer, &t.buffer_size);
  jpeg_copy_critical_parameters(&t.src, &t.dst);
  t.dst.optimize_coding = TRUE;
  t.dst.arith_code = FALSE;
  if (interval == 0) {
    int h_max = 1;
    for (int c = 0; c < t.dst.num_components; ++c) {
      h_max = std::max(h_max, t.dst.comp_info[c].h_samp_factor);
    }
    // A one-component scan is not interleaved: its MCU is one block.
    const int mcu_width = t.dst.num_components == 1 ? 8 : 8 * h_max;
    const auto mcus_per_row =
        static_cast<int>((t.dst.image_width + static_cast<unsigned>(mcu_width) - 1) /
                         static_cast<unsigned>(mcu_width));
    interval = auto_restart_interval(mcus_per_row, mcu_width);
  }
  chosen = interval;
  t.dst.restart_interval = static_cast<unsigned int>(interval);
  t.dst.restart_in_rows = 0;
  jpeg_write_coefficients(&t.dst, coefs);
  // libjpeg writes its own JFIF and Adobe markers where the colour space calls for them.
  for (jpeg_saved_marker_ptr m = t.src.marker_list; m != nullptr; m = m->next) {
    if (t.dst.write_JFIF_header && is_marker(m, JPEG_APP0, "JFIF\0", 5)) continue;
    if (t.dst.write_Adobe_marker && is_marker(m, JPEG_APP0 + 14, "Adobe", 5)) continue;
    jpeg_write_marker(&t.dst, m->marker, m->data, m->data_length);
  }
  jpeg_finish_compress(&t.dst);
  return true;
}

bool finish_source(Transcoder& t) {
  if (setjmp(t.src_errors.jump) != 0) return false;
  jpeg_finish_decompress(&t.src);
  return true;
}

}  // namespace

int auto_restart_interval(int mcus_per_row, int mcu_width) {
  int best = 1;
  for (int d = 1; d <= mcus_per_row && d * mcu_width <= kRestartSegmentPixels; ++d) {
    if (mcus_per_row % d == 0) best = d;
  }
  return best;
}

RestartResult add_restart_grid(const std::uint8_t* data, std::size_t size, int interval,
                               std::vector<std::uint8_t>& out) {
  RestartResult result;
  if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) return result;
  if (interval < 0 || interval > 65535) {
    result.outcome = RestartOutcome::kUnreadable;
    result.message = "restart interval " + std::to_string(interval) + " is outside 0..65535";
    return result;
  }
  Transcoder t;
  jvirt_barray_ptr* coefs = nullptr;
  if (!read_source(t, data, size, coefs)) {
    result.outcome = RestartOutcome::kUnreadable;
    result.message = t.src_errors.message;
    return result;
  }
  int chosen = 0;
  if (!write_destination(t, coefs, interval, chosen) || !finish_source(t)) {
    result.outcome = RestartOutcome::kUnreadable;
    result.message = t.dst_errors.message[0] != '\0' ? t.dst_errors.message : t.src_errors.message;
    return result;
  }
  out.assign(t.buffer, t.buffer + t.buffer_size);
  result.outcome = RestartOutcome::kRewritten;
  result.interval = chosen;
  return result;
}

}  // namespace millrace::recordio
