"""Shared fixtures of the end-to-end tests: the command-line arguments that name the binaries under
test, a small generated dataset (made once per process, in a temporary folder), a subprocess
runner that never hangs a test, a reader for the restricted YAML shape of millrace configs, and a
JPEG header reader.

Everything the tests write goes under one temporary folder, removed at exit; nothing is written
into the source tree (importers set sys.dont_write_bytecode before importing this module).
"""

import argparse
import atexit
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

# A run of the small dataset takes well under a second; this only turns a hang into a failure.
RUN_TIMEOUT_S = 120

DATASET_COUNT = 40
DATASET_CLASSES = 4


class Env:
    """Paths of the binaries and the source tree, set once by main()."""

    millrace = None
    example = None
    source = None


def _parse_paths(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--millrace", required=True, help="the millrace command-line binary")
    parser.add_argument("--example", required=True, help="the millrace_example binary")
    parser.add_argument("--source", required=True, help="the millrace source tree")
    known, rest = parser.parse_known_args(argv)
    Env.millrace = os.path.abspath(known.millrace)
    Env.example = os.path.abspath(known.example)
    Env.source = os.path.abspath(known.source)
    return rest


def main():
    """Runs the calling module's tests; arguments other than the paths go to unittest (test
    names, -k patterns)."""
    rest = _parse_paths(sys.argv[1:])
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)


_scratch = None


def scratch_dir():
    """The process's temporary folder, created on first use and removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="millrace-e2e-")
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def new_dir(name):
    """A fresh, empty folder under the scratch folder."""
    path = tempfile.mkdtemp(prefix=name + "-", dir=scratch_dir())
    return path


_dataset = None


def dataset():
    """The small dataset (DATASET_COUNT images in DATASET_CLASSES classes), made on first use."""
    global _dataset
    if _dataset is None:
        root = os.path.join(scratch_dir(), "dataset")
        result = run_millrace("make-dataset", root, "--count", str(DATASET_COUNT), "--classes",
                              str(DATASET_CLASSES))
        if result.returncode != 0:
            raise RuntimeError(f"make-dataset failed ({result.returncode}): {result.stderr}")
        _dataset = root
    return _dataset


_packed = None


def packed_dataset():
    """The small dataset packed by `millrace pack` into (dataset.rec, dataset.idx), made on first
    use: what the configs with a `recordio` source read."""
    global _packed
    if _packed is None:
        root = dataset()
        rec = os.path.join(scratch_dir(), "dataset.rec")
        result = run_millrace("pack", "--list", os.path.join(root, "labels.lst"), "--root", root,
                              rec)
        if result.returncode != 0:
            raise RuntimeError(f"pack failed ({result.returncode}): {result.stderr}")
        _packed = (rec, rec[:-len(".rec")] + ".idx")
    return _packed


def run(args, cwd=None, timeout=RUN_TIMEOUT_S):
    """Runs a command to completion and returns the CompletedProcess (text stdout and stderr)."""
    return subprocess.run(args, cwd=cwd or scratch_dir(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_millrace(*args, cwd=None, timeout=RUN_TIMEOUT_S):
    return run([Env.millrace] + [str(a) for a in args], cwd=cwd, timeout=timeout)


def sets(*overrides):
    """['--set', o1, '--set', o2, ...]"""
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def describe(result):
    """A failure message with everything a reader needs to see why a command went wrong."""
    return (f"\ncommand: {' '.join(result.args)}\nexit: {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")


def source_path(*parts):
    return os.path.join(Env.source, *parts)


def read_lines(path):
    with open(path) as f:
        return f.read().splitlines()


# --- configs -----------------------------------------------------------------------------------

_SCALAR = re.compile(r"^(\s*)(-\s+)?([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$")


def _strip_comment(text):
    """Drops a trailing '# comment' (the configs quote no '#')."""
    return re.sub(r"\s+#.*$", "", text) if not text.startswith("#") else ""


def parse_value(text):
    """A YAML flow scalar or a flat flow sequence of scalars, as the configs write them."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(v) for v in text[1:-1].split(",") if v.strip()]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class Config:
    """The pipeline section and the stage list of a millrace config, read with the restricted
    grammar the shipped configs use (block mappings, one '- type:' per stage, flow scalars and
    flow lists as values). Enough to derive what a run must produce, without a YAML library."""

    def __init__(self, path):
        self.path = path
        self.pipeline = {}
        self.stages = []  # dicts with at least 'type' and 'name'
        section = None
        for raw in read_lines(path):
            line = _strip_comment(raw.rstrip())
            if not line.strip():
                continue
            if not line.startswith(" "):
                section = line.rstrip(":").strip()
                continue
            m = _SCALAR.match(line)
            if not m:
                continue
            _, dash, key, value = m.groups()
            if section == "pipeline":
                self.pipeline[key] = parse_value(value)
            elif section == "stages":
                if dash:
                    self.stages.append({})
                self.stages[-1][key] = parse_value(value)
        for stage in self.stages:
            stage.setdefault("name", stage.get("type"))

    def stage_of_type(self, kind):
        found = [s for s in self.stages if s.get("type") == kind]
        return found[0] if found else None

    def names(self):
        return [s["name"] for s in self.stages]


def replace_sink(config_text, sink_yaml):
    """The config text with its last stage (the sink, by the configs' convention) replaced by
    `sink_yaml`, a block of lines indented as a list item under 'stages:'."""
    lines = config_text.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s+-\s+type:", line)]
    if not starts:
        raise ValueError("no stages in config")
    return "\n".join(lines[:starts[-1]]) + "\n" + sink_yaml.rstrip("\n") + "\n"


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def expected_delivery(samples, batch_size, last):
    """(images, batches) of one epoch of `samples` under a batch stage's `last` policy: pad and
    partial deliver every sample (pad rows are not images), drop loses the incomplete batch."""
    full, rest = divmod(samples, batch_size)
    if rest == 0:
        return samples, full
    if last == "drop":
        return full * batch_size, full
    return samples, full + 1


# --- JPEG ---------------------------------------------------------------------------------------

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(path):
    """(width, height) from the first SOF segment of a JPEG file, by walking its markers."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"{path}: no JPEG SOI marker")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"{path}: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError(f"{path}: no SOF segment before the scan")
