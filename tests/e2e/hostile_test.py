"""Hostile input through the command line: paths that are not regular files, outputs on a disk
that fills up, images whose resize would take the machine's memory, folders with entries that
cannot be read. Each case once hung, crashed, left a partial file or lost data without a word.

    python3 tests/e2e/hostile_test.py --millrace build/millrace --example build/millrace_example \
        --source .
"""

import sys

sys.dont_write_bytecode = True  # imports must not leave __pycache__ folders in the source tree

import json
import os
import resource
import signal
import struct
import subprocess
import unittest
import zlib

import e2e_support as e2e

# A FIFO nobody writes to hangs an open for reading or writing: a hang shows as a timeout here.
QUICK_S = 60


def png(width, height):
    """A grey RGB PNG of any size, a few hundred bytes for a thin one."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x80" * (3 * width)
    raw = zlib.compress(row * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) +
            chunk(b"IEND", b""))


def small_config(folder, root, sink="discard", extra=""):
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as f:
        f.write("pipeline: {threads: 2}\nstages:\n"
                f"  - {{type: files, root: {root}}}\n"
                "  - {type: decode, on_error: skip}\n"
                f"  - {{type: augment, resize: 40, size: 32{extra}}}\n"
                "  - {type: normalize, mean: [0, 0, 0]}\n"
                "  - {type: batch, size: 4, last: partial}\n"
                f"  - {{type: {sink}}}\n")
    return path


def limited_file_size(limit):
    """A preexec_fn: writes past `limit` bytes fail with EFBIG (a full disk, for one process)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


class HostileCase(unittest.TestCase):
    def millrace(self, *args, expect=None, **kwargs):
        result = e2e.run([e2e.Env.millrace] + [str(a) for a in args], timeout=QUICK_S, **kwargs)
        if expect is not None:
            self.assertEqual(result.returncode, expect, e2e.describe(result))
        return result


class PathsTest(HostileCase):
    def test_a_fifo_as_config_json_or_trace_is_refused_at_once(self):
        folder = e2e.new_dir("fifo")
        fifo = os.path.join(folder, "pipe")
        os.mkfifo(fifo)
        config = small_config(folder, e2e.dataset())
        for args in (["run", fifo], ["validate", fifo], ["run", config, "--json", fifo],
                     ["run", config, "--trace", fifo], ["bench", config, "--json", fifo]):
            with self.subTest(args=args[0::2]):
                result = self.millrace(*args, expect=2)
                self.assertIn(fifo, result.stderr)
                self.assertIn("FIFO", result.stderr)

    def test_dev_zero_as_config_is_refused(self):
        result = self.millrace("validate", "/dev/zero", expect=2)
        self.assertIn("/dev/zero: error: cannot read the config file: a character device",
                      result.stderr)

    def test_bench_repeats_zero_is_a_usage_error(self):
        folder = e2e.new_dir("bench")
        result = self.millrace("bench", small_config(folder, e2e.dataset()), "--repeats", "0",
                               expect=2)
        self.assertIn("--repeats expects a positive integer, got '0'", result.stderr)


class FullDiskTest(HostileCase):
    def test_a_trace_that_cannot_be_written_whole_is_not_written_at_all(self):
        folder = e2e.new_dir("trace")
        trace = os.path.join(folder, "trace.json")
        result = e2e.run([e2e.Env.millrace, "run", small_config(folder, e2e.dataset()), "--quiet",
                          "--trace", trace], timeout=QUICK_S)
        self.assertEqual(result.returncode, 0, e2e.describe(result))
        size = os.path.getsize(trace)
        os.remove(trace)
        result = self.run_limited(["run", small_config(folder, e2e.dataset()), "--quiet",
                                   "--trace", trace], size // 2)
        self.assertEqual(result.returncode, 1, e2e.describe(result))
        self.assertIn("File too large", result.stderr)
        self.assertFalse(os.path.exists(trace), "a partial trace was left")
        self.assertEqual([f for f in os.listdir(folder) if f.endswith(".tmp")], [])

    def test_a_json_summary_that_cannot_be_written_says_why(self):
        folder = e2e.new_dir("json")
        summary = os.path.join(folder, "summary.json")
        result = self.run_limited(["run", small_config(folder, e2e.dataset()), "--quiet",
                                   "--json", summary], 200)
        self.assertEqual(result.returncode, 1, e2e.describe(result))
        self.assertIn(summary, result.stderr)
        self.assertIn("File too large", result.stderr)
        self.assertFalse(os.path.exists(summary))

    def run_limited(self, args, limit):
        return subprocess.run([e2e.Env.millrace] + args, cwd=e2e.scratch_dir(),
                              capture_output=True, text=True, timeout=QUICK_S, check=False,
                              preexec_fn=limited_file_size(limit))


class HostileImagesTest(HostileCase):
    def test_a_thin_png_is_a_skipped_sample_not_gigabytes(self):
        root = e2e.new_dir("thin")
        os.makedirs(os.path.join(root, "a"))
        for name, (w, h) in {"thin.png": (20000, 1), "thinner.png": (100000, 1),
                             "ok.png": (64, 48)}.items():
            with open(os.path.join(root, "a", name), "wb") as f:
                f.write(png(w, h))
        folder = e2e.new_dir("thin-run")
        summary = os.path.join(folder, "summary.json")
        result = self.millrace("run", small_config(folder, root), "--quiet", "--json", summary,
                               expect=0)
        with open(summary) as f:
            s = json.load(f)
        self.assertEqual(s["images"], 1, e2e.describe(result))
        reasons = {os.path.basename(k["path"]): k["error"] for k in s["skipped"]}
        self.assertEqual(sorted(reasons), ["thin.png", "thinner.png"])
        for reason in reasons.values():
            self.assertIn("max_aspect_ratio", reason)

    def test_a_folder_lists_every_entry_it_does_not_read(self):
        root = e2e.new_dir("odd")
        os.makedirs(os.path.join(root, "a"))
        os.makedirs(os.path.join(root, "b"))
        for name in ("a/1.png", "b/2.png", "stray.png"):
            with open(os.path.join(root, name), "wb") as f:
                f.write(png(64, 48))
        os.symlink(os.path.join(root, "gone.png"), os.path.join(root, "a", "dangling.png"))
        os.mkfifo(os.path.join(root, "b", "fifo.png"))
        os.symlink("/dev/null", os.path.join(root, "b", "null.jpg"))
        os.symlink(root, os.path.join(root, "b", "loop"))
        folder = e2e.new_dir("odd-run")
        summary = os.path.join(folder, "summary.json")
        self.millrace("run", small_config(folder, root), "--quiet", "--json", summary, expect=0)
        with open(summary) as f:
            s = json.load(f)
        self.assertEqual(s["images"], 2)
        reasons = {os.path.relpath(k["path"], root): k["error"] for k in s["skipped"]}
        self.assertEqual(sorted(reasons),
                         ["a/dangling.png", "b/fifo.png", "b/loop", "b/null.jpg", "stray.png"])
        self.assertIn("dangling", reasons["a/dangling.png"])
        self.assertIn("FIFO", reasons["b/fifo.png"])
        self.assertIn("loop", reasons["b/loop"])
        self.assertIn("no class", reasons["stray.png"])

    def test_a_skip_line_carries_no_terminal_control_bytes(self):
        root = e2e.new_dir("controls")
        os.makedirs(os.path.join(root, "a"))
        name = "\x1b[2Jred\x07.jpg"
        with open(os.path.join(root, "a", name), "wb") as f:
            f.write(b"\x1b[31mnot an image\x00")
        with open(os.path.join(root, "a", "ok.png"), "wb") as f:
            f.write(png(64, 48))
        folder = e2e.new_dir("controls-run")
        result = self.millrace("run", small_config(folder, root), "--quiet", expect=0)
        self.assertIn("\\x1B[2Jred\\x07.jpg", result.stdout, e2e.describe(result))
        self.assertNotIn("\x1b", result.stdout)
        self.assertNotIn("\x07", result.stdout)


class PngWarningsTest(HostileCase):
    """libpng's warnings are the sample's, reported by millrace, never printed by libpng."""

    def short_iccp_png(self):
        # A profile far shorter than an ICC header: libpng warns "iCCP: too short" (OpenCV 4.6
        # let it print that on stderr).
        raw = png(64, 48)
        profile = zlib.compress(b"x" * 10)
        data = b"icc\0\0" + profile
        body = b"iCCP" + data
        chunk = struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
        return raw[:33] + chunk + raw[33:]

    def run_folder(self, strict):
        root = e2e.new_dir("png-warn")
        os.makedirs(os.path.join(root, "a"))
        files = {"ok.png": png(64, 48), "iccp.png": self.short_iccp_png(),
                 "cut.png": png(64, 48)[:-20]}
        for name, data in files.items():
            with open(os.path.join(root, "a", name), "wb") as f:
                f.write(data)
        folder = e2e.new_dir("png-warn-run")
        config = os.path.join(folder, "config.yaml")
        with open(config, "w") as f:
            f.write("pipeline: {threads: 2}\nstages:\n"
                    f"  - {{type: files, root: {root}}}\n"
                    f"  - {{type: decode, on_error: skip, strict: {str(strict).lower()}}}\n"
                    "  - {type: augment, resize: 40, size: 32}\n"
                    "  - {type: normalize, mean: [123.68, 116.779, 103.939]}\n"
                    "  - {type: batch, size: 4, last: partial}\n"
                    "  - {type: discard}\n")
        summary = os.path.join(folder, "summary.json")
        result = self.millrace("run", config, "--quiet", "--json", summary, expect=0)
        with open(summary) as f:
            return result, json.load(f)

    def test_a_warning_is_listed_and_nothing_reaches_stderr(self):
        # Strict or not: a PNG warning concerns an ancillary chunk, never the delivered pixels.
        for strict in (False, True):
            with self.subTest(strict=strict):
                result, s = self.run_folder(strict=strict)
                self.assertNotIn("libpng", result.stderr, e2e.describe(result))
                self.assertEqual(result.stderr, "", e2e.describe(result))
                self.assertEqual(s["images"], 2, e2e.describe(result))
                warnings = [w for w in s["warnings"] if "iCCP: too short" in w]
                self.assertEqual(len(warnings), 1, s["warnings"])
                self.assertIn("iccp.png", warnings[0])
                reasons = {os.path.basename(k["path"]): k["error"] for k in s["skipped"]}
                self.assertEqual(sorted(reasons), ["cut.png"])
                self.assertIn("truncated PNG", reasons["cut.png"])


class StoppedRunTest(HostileCase):
    def test_the_summary_counts_the_batches_the_sink_wrote(self):
        root = e2e.new_dir("stop")
        os.makedirs(os.path.join(root, "a"))
        for i in range(60):
            with open(os.path.join(root, "a", f"{i:03d}.png"), "wb") as f:
                f.write(png(64, 48))
        with open(os.path.join(root, "a", "050_bad.png"), "wb") as f:
            f.write(b"not a png")
        for round_ in range(3):
            folder = e2e.new_dir("stop-run")
            config = os.path.join(folder, "config.yaml")
            npy = os.path.join(folder, "npy")
            with open(config, "w") as f:
                f.write("pipeline: {threads: 2, prefetch: 1}\nstages:\n"
                        f"  - {{type: files, root: {root}}}\n"
                        "  - {type: decode, on_error: fail}\n"
                        "  - {type: augment, resize: 40, size: 32}\n"
                        "  - {type: normalize, mean: [0, 0, 0]}\n"
                        "  - {type: batch, size: 2}\n"
                        f"  - {{type: npy, dir: {npy}}}\n")
            summary = os.path.join(folder, "summary.json")
            result = self.millrace("run", config, "--quiet", "--json", summary, expect=1)
            with open(summary) as f:
                s = json.load(f)
            with open(os.path.join(npy, "batches.jsonl")) as f:
                lines = [line for line in f if line.strip()]
            self.assertEqual(s["batches"], len(lines), e2e.describe(result))
            self.assertEqual(s["images"], 2 * len(lines))


if __name__ == "__main__":
    e2e.main()
