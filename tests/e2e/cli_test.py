#!/usr/bin/python3
"""End-to-end tests of the `millrace` command line: runs of the shipped configs, validation and
usage errors, the stage reference and the DOT graph, --set overrides, bad input under the on_error
policies, the int8 output against an independent checker, determinism across thread counts and
queue sizes, Ctrl-C, and the dataset generator.

  cli_test.py --millrace BIN --example BIN --source DIR [unittest arguments]

Every expectation is derived from the inputs (the config files, the dataset the test made, the
documented formulas), not from an earlier run's output.
"""

import sys

sys.dont_write_bytecode = True  # imports must not leave __pycache__ folders in the source tree

import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

import numpy as np

import e2e_support as e2e
from e2e_support import Env, sets

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import check_npy  # noqa: E402  (the independent reference for decoded, resized, int8 pixels)

SUMMARY_KEYS = ("images", "batches", "seconds", "images_per_second", "startup_seconds", "skipped",
                "stages")
STAGE_TYPES = ("files", "decode", "augment", "normalize", "batch", "npy", "discard")
IMAGENET_MEANS = [123.68, 116.779, 103.939]


def shipped_configs():
    """Every config in configs/ that is meant to run (broken.yaml is meant to fail)."""
    paths = sorted(glob.glob(e2e.source_path("configs", "*.yaml")))
    return [p for p in paths if os.path.basename(p) != "broken.yaml"]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_reference(text):
    """`millrace stages` plain text as {section: {key: default}}; sections are 'pipeline',
    'every stage' and the stage types."""
    sections = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^(pipeline|every stage):$", line) or re.match(r"^(\w+) \[", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key = re.match(r"^    (\w+) \((.*), default (.*)\)$", line)
        if key and current is not None:
            current[key.group(1)] = key.group(3)
    return sections


class CliCase(unittest.TestCase):
    """Helpers shared by the test classes."""

    def millrace(self, *args, expect=None, cwd=None, timeout=e2e.RUN_TIMEOUT_S):
        result = e2e.run_millrace(*args, cwd=cwd, timeout=timeout)
        if expect is not None:
            self.assertEqual(result.returncode, expect, e2e.describe(result))
        return result

    def run_config(self, config, *overrides, expect=0, quiet=True):
        """Runs `config` on the small dataset (files root and npy dir overridden) and returns
        (CompletedProcess, summary JSON or None, npy folder or None)."""
        cfg = e2e.Config(config)
        out = e2e.new_dir("run")
        extra = shipped_overrides(cfg, out)
        npy = cfg.stage_of_type("npy")
        npy_dir = os.path.join(out, "npy") if npy else None
        json_path = os.path.join(out, "summary.json")
        args = ["run", config, *sets(*extra, *overrides), "--json", json_path]
        if quiet:
            args.append("--quiet")
        result = self.millrace(*args, expect=expect)
        summary = load_json(json_path) if os.path.exists(json_path) else None
        return result, summary, npy_dir


def shipped_overrides(cfg, out):
    """The overrides that point a shipped config at the small dataset and at `out`: the files
    root, npy and predictions outputs and, for inference configs (which name full-size exported
    models), the tiny model the export script commits (32x32 input), calibrating on two batches."""
    files = cfg.stage_of_type("files")
    if files:
        extra = [f"{files['name']}.root={e2e.dataset()}"]
    else:
        recordio = cfg.stage_of_type("recordio")
        rec, idx = e2e.packed_dataset()
        extra = [f"{recordio['name']}.path={rec}", f"{recordio['name']}.index={idx}"]
    npy = cfg.stage_of_type("npy")
    if npy:
        extra.append(f"{npy['name']}.dir={os.path.join(out, 'npy')}")
    infer = cfg.stage_of_type("infer")
    if infer:
        augment = cfg.stage_of_type("augment")
        tiny = e2e.source_path("tests", "data", "models", "tiny.onnx")
        calib = os.path.join(out, "calib.json")
        extra += [f"{infer['name']}.model={tiny}", f"{augment['name']}.resize=36",
                  f"{augment['name']}.size=32",
                  f"{infer['name']}.calibration={{batches: 2, table: {calib}}}"]
    predictions = cfg.stage_of_type("predictions")
    if predictions:
        extra.append(f"{predictions['name']}.path={os.path.join(out, 'predictions.jsonl')}")
    return extra


class RunConfigsTest(CliCase):
    """Item 1: every shipped config runs on the small dataset and reports what it delivered."""

    @classmethod
    def setUpClass(cls):
        cls.reference = parse_reference(e2e.run_millrace("stages").stdout)

    def check_config_run(self, path, batch_size=None):
        cfg = e2e.Config(path)
        files = cfg.stage_of_type("files") or cfg.stage_of_type("recordio")
        batch = cfg.stage_of_type("batch")
        self.assertIsNotNone(files, f"{path}: the e2e runs need a files or recordio source")
        self.assertIsNotNone(batch, f"{path}: no batch stage")
        overrides = [f"{batch['name']}.size={batch_size}"] if batch_size else []
        result, summary, npy_dir = self.run_config(path, *overrides, quiet=False)

        for key in SUMMARY_KEYS:
            self.assertIn(key, summary)
        self.assertIsInstance(summary["skipped"], list)
        self.assertEqual(summary["skipped"], [], "a clean dataset must skip nothing")
        self.assertEqual(summary.get("error", ""), "")

        size = batch_size or int(batch.get("size", self.reference["batch"]["size"]))
        last = batch.get("last", self.reference["batch"]["last"])
        epochs = int(files.get("epochs", 1))
        limit = int(files.get("limit", 0))
        per_epoch = min(limit, e2e.DATASET_COUNT) if limit else e2e.DATASET_COUNT
        images, batches = e2e.expected_delivery(per_epoch, size, last)
        self.assertEqual(summary["images"], images * epochs, f"size {size}, last {last}")
        self.assertEqual(summary["batches"], batches * epochs, f"size {size}, last {last}")
        self.assertEqual(summary.get("samples_read"), per_epoch * epochs)

        self.assertGreaterEqual(summary["startup_seconds"], 0)
        self.assertGreaterEqual(summary["seconds"], summary["startup_seconds"])
        self.assertTrue(math.isfinite(summary["images_per_second"]))
        if summary["batches"] >= 2:
            self.assertGreater(summary["images_per_second"], 0)
        self.assertEqual([s["name"] for s in summary["stages"]], cfg.names())
        self.assertEqual(summary["stages"][0]["items"], per_epoch * epochs)

        name = cfg.pipeline.get("name", self.reference["pipeline"]["name"])
        self.assertIn(f"{name}: {summary['images']} images in {summary['batches']} batches",
                      result.stdout)

        if npy_dir:
            self.check_npy_output(cfg, npy_dir, summary)

    def check_npy_output(self, cfg, npy_dir, summary):
        records = read_jsonl(os.path.join(npy_dir, "batches.jsonl"))
        self.assertEqual(len(records), summary["batches"])
        augment = cfg.stage_of_type("augment")
        crop = augment["size"] if isinstance(augment["size"], list) else [augment["size"]] * 2
        layout = cfg.stage_of_type("normalize").get("layout", "NCHW")
        if cfg.stage_of_type("infer"):
            crop = [32, 32]  # run_config's tiny model
            if layout == "NCHW" and "layout" not in cfg.stage_of_type("normalize"):
                layout = "NHWC"  # `auto` before an int8 infer stage
        delivered = 0
        for record in records:
            data = np.load(os.path.join(npy_dir, f"batch_{record['index']:06d}_data.npy"))
            sample = (3, crop[0], crop[1]) if layout == "NCHW" else (crop[0], crop[1], 3)
            self.assertEqual(data.shape[1:], sample)
            self.assertEqual(data.dtype, np.int8)
            delivered += data.shape[0] - record["pad"]
        self.assertEqual(delivered, summary["images"])

    def test_every_config_runs_on_the_small_dataset(self):
        configs = shipped_configs()
        self.assertTrue(any(c.endswith("default.yaml") for c in configs))
        for path in configs:
            with self.subTest(config=os.path.basename(path)):
                self.check_config_run(path)

    def test_every_config_runs_with_an_incomplete_last_batch(self):
        # 40 images in batches of 16: the last batch holds 8, so pad, drop and partial differ.
        for path in shipped_configs():
            with self.subTest(config=os.path.basename(path)):
                self.check_config_run(path, batch_size=16)

    def test_unordered_run_delivers_every_sample_once(self):
        result, summary, npy_dir = self.run_config(
            e2e.source_path("configs", "default.yaml"), "pipeline.ordered=false", "batch.size=8")
        self.assertEqual(summary["images"], e2e.DATASET_COUNT)
        ids = [i for r in read_jsonl(os.path.join(npy_dir, "batches.jsonl"))
               for i in r["ids"][:len(r["ids"]) - r["pad"]]]
        self.assertEqual(sorted(ids), list(range(e2e.DATASET_COUNT)))

    def test_more_threads_than_cores_are_honoured_without_a_tbb_warning(self):
        # pipeline.threads is documented as the number of TBB worker threads; asking for more
        # than the machine's cores must either run them or say so in millrace's own words, not
        # leave TBB to print that it ignored the request.
        threads = (os.cpu_count() or 1) + 2
        result, summary, _ = self.run_config(e2e.source_path("configs", "default.yaml"),
                                             f"pipeline.threads={threads}")
        self.assertEqual(summary["images"], e2e.DATASET_COUNT)
        self.assertNotIn("TBB Warning", result.stderr, e2e.describe(result))


class ValidateTest(CliCase):
    """Item 2: config errors read like compiler errors; usage errors and missing files exit 2."""

    BROKEN = "configs/broken.yaml"

    @classmethod
    def setUpClass(cls):
        cls.broken_lines = e2e.read_lines(e2e.source_path(cls.BROKEN))

    def locate(self, pattern, start=0):
        """(1-based line, 1-based column of group 1) of the first line from `start` matching."""
        for i in range(start, len(self.broken_lines)):
            m = re.search(pattern, self.broken_lines[i])
            if m:
                return i + 1, m.start(1) + 1
        self.fail(f"{self.BROKEN} has no line matching {pattern!r}")

    def diagnostics(self, stderr):
        """{(line, col): [messages]} of the error lines naming broken.yaml."""
        found = {}
        for m in re.finditer(r"^configs/broken\.yaml:(\d+):(\d+): error: (.*)$", stderr, re.M):
            found.setdefault((int(m.group(1)), int(m.group(2))), []).append(m.group(3))
        return found

    def validate_broken(self):
        result = self.millrace("validate", self.BROKEN, cwd=Env.source, expect=2)
        return result, self.diagnostics(result.stderr)

    def test_broken_config_errors_have_locations_and_explanations(self):
        result, found = self.validate_broken()

        where = self.locate(r"^\s*threads:\s*(\S+)")
        self.assertIn(where, found, e2e.describe(result))
        self.assertTrue(any("threads" in m and "range" in m for m in found[where]), found[where])

        where = self.locate(r"^\s*(shufle):")
        self.assertIn(where, found, e2e.describe(result))
        self.assertTrue(any("unknown key 'shufle'" in m and "did you mean 'shuffle'" in m
                            for m in found[where]), found[where])

        where = self.locate(r"type:\s*(decoder)\b")
        self.assertIn(where, found, e2e.describe(result))
        self.assertTrue(any("unknown stage type 'decoder'" in m for m in found[where]),
                        found[where])

        first = self.locate(r"^\s*(size):\s*\d+\s*$")
        second = self.locate(r"^\s*(size):\s*\d+\s*$", start=first[0])
        duplicate = [(loc, m) for loc, ms in found.items() for m in ms
                     if "duplicate key 'size'" in m]
        self.assertEqual(len(duplicate), 1, e2e.describe(result))
        (loc, message), = duplicate
        # One of the two lines is the location, the other is named in the message.
        self.assertIn(loc, (first, second))
        other = first if loc == second else second
        self.assertIn(f"line {other[0]}", message)

    def test_broken_config_reports_every_error_in_one_pass(self):
        result, found = self.validate_broken()
        mistakes = [
            self.locate(r"^\s*threads:\s*(0)\b"),           # out of range
            self.locate(r"^\s*(shufle):"),                  # unknown key
            self.locate(r"type:\s*(decoder)\b"),            # unknown stage type
            self.locate(r"^\s*mirror:\s*(1\.5)"),           # probability above 1
            self.locate(r"^\s*mean:\s*(\[)"),               # 2 means for 3 channels
        ]
        for where in mistakes:
            self.assertIn(where, found, f"no error at {where}" + e2e.describe(result))
        # The npy sink has no 'dir': an error on its stage, wherever in the item it points.
        npy_line = self.locate(r"type:\s*(npy)\b")[0]
        self.assertTrue(any(line == npy_line and any("dir" in m for m in ms)
                            for (line, _), ms in found.items()), e2e.describe(result))
        count = sum(len(ms) for ms in found.values())
        self.assertGreaterEqual(count, len(mistakes) + 2)
        self.assertRegex(result.stderr, rf"\b{count} error\(s\) in configs/broken\.yaml")
        for (line, col) in found:
            self.assertTrue(1 <= line <= len(self.broken_lines))
            self.assertTrue(1 <= col <= len(self.broken_lines[line - 1]) + 1)

    def test_valid_configs_validate(self):
        for path in shipped_configs():
            relative = os.path.relpath(path, Env.source)
            with self.subTest(config=relative):
                extra = shipped_overrides(e2e.Config(path), e2e.new_dir("validate"))
                result = self.millrace("validate", relative, *sets(*extra), cwd=Env.source,
                                       expect=0)
                self.assertNotIn("error:", result.stderr)
                self.assertIn(f"{relative}: ok", result.stdout)

    def test_running_a_broken_config_exits_2_before_running(self):
        result = self.millrace("run", self.BROKEN, cwd=Env.source, expect=2)
        self.assertTrue(self.diagnostics(result.stderr), e2e.describe(result))
        self.assertNotIn("images in", result.stdout)

    def test_usage_errors_exit_2(self):
        config = e2e.source_path("configs", "default.yaml")
        cases = [
            [],
            ["frobnicate"],
            ["run"],
            ["run", config, config],
            ["run", config, "--no-such-option"],
            ["run", config, "--set"],
            ["run", config, "--json"],
            ["validate"],
            ["graph"],
            ["bench", config, "--repeats", "many"],
            ["make-dataset"],
            ["make-dataset", os.path.join(e2e.scratch_dir(), "x"), "--count", "-1"],
            ["make-dataset", os.path.join(e2e.scratch_dir(), "x"), "--size", "huge"],
        ]
        for args in cases:
            with self.subTest(args=" ".join(args)):
                result = self.millrace(*args, expect=2)
                self.assertIn("usage: millrace", result.stdout + result.stderr)
        self.assertFalse(os.path.exists(os.path.join(e2e.scratch_dir(), "x")))

    def test_malformed_override_exits_2(self):
        config = e2e.source_path("configs", "default.yaml")
        for override in ("batch.size", "batch", "=3", ".size=3"):
            with self.subTest(override=override):
                result = self.millrace("validate", config, "--set", override, expect=2)
                self.assertIn(f"--set {override}: error:", result.stderr)

    def test_help_exits_0(self):
        for flag in ("--help", "-h", "help"):
            with self.subTest(flag=flag):
                result = self.millrace(flag, expect=0)
                for command in ("run", "validate", "stages", "graph", "bench", "make-dataset"):
                    self.assertIn(command, result.stdout)

    def test_impossible_dataset_spec_is_a_usage_error(self):
        # More classes than images cannot be made; the CLI documents exit 2 for usage errors.
        target = os.path.join(e2e.scratch_dir(), "too-many-classes")
        result = self.millrace("make-dataset", target, "--count", "3", "--classes", "5")
        self.assertEqual(result.returncode, 2, e2e.describe(result))
        self.assertIn("classes", result.stderr)

    def test_missing_config_file_exits_2_naming_it(self):
        missing = os.path.join(e2e.scratch_dir(), "no-such-dir", "missing.yaml")
        for command in ("run", "validate", "graph"):
            with self.subTest(command=command):
                result = self.millrace(command, missing, expect=2)
                self.assertIn(missing, result.stderr)


class OverrideTest(CliCase):
    """Item 4: --set NAME.key=value reaches the stage; a bad override is a config error."""

    DEFAULT = None

    @classmethod
    def setUpClass(cls):
        cls.DEFAULT = e2e.source_path("configs", "default.yaml")

    def test_batch_size_override_changes_the_batch_count(self):
        batch = e2e.Config(self.DEFAULT).stage_of_type("batch")
        counts = {}
        for size in (int(batch["size"]), 8, 16):
            _, summary, npy_dir = self.run_config(self.DEFAULT, f"batch.size={size}")
            images, batches = e2e.expected_delivery(e2e.DATASET_COUNT, size, batch["last"])
            self.assertEqual((summary["images"], summary["batches"]), (images, batches),
                             f"batch.size={size}")
            self.assertEqual(len(read_jsonl(os.path.join(npy_dir, "batches.jsonl"))), batches)
            counts[size] = batches
        self.assertEqual(len(set(counts.values())), len(counts), counts)

    def test_pipeline_override(self):
        result, summary, _ = self.run_config(self.DEFAULT, "pipeline.name=renamed-run",
                                             "pipeline.threads=1")
        self.assertEqual(summary.get("name"), "renamed-run")
        self.assertEqual(summary.get("threads"), 1)
        self.assertTrue(result.stdout.startswith("renamed-run: "), result.stdout)

    def test_stages_by_index_and_nested_keys(self):
        """stages.INDEX.key and stages.NAME.key reach the same stage as NAME.key."""
        batch = e2e.Config(self.DEFAULT).stage_of_type("batch")
        index = e2e.Config(self.DEFAULT).names().index(batch["name"])
        for override in (f"stages.{index}.size=8", f"stages.{batch['name']}.size=8"):
            with self.subTest(override=override):
                _, summary, _ = self.run_config(self.DEFAULT, override)
                images, batches = e2e.expected_delivery(e2e.DATASET_COUNT, 8, batch["last"])
                self.assertEqual(summary["batches"], batches)
        result = self.millrace("validate", self.DEFAULT, "--set", f"stages.{index}.szie=8",
                               expect=2)
        self.assertIn(f"--set stages.{index}.szie=8: error: stage '{batch['name']}' (batch): "
                      "unknown key 'szie' (did you mean 'size'?); known keys:", result.stderr)

    def test_unknown_stage_exits_2_naming_it(self):
        result = self.millrace("run", self.DEFAULT, *sets(f"files.root={e2e.dataset()}",
                                                          "nosuch.size=8"), expect=2)
        self.assertIn("nosuch", result.stderr)
        self.assertNotIn("images in", result.stdout)

    def test_bad_values_exit_2_naming_the_key(self):
        cases = {
            "batch.size=abc": "size",
            "batch.size=0": "size",
            "batch.nokey=3": "nokey",
            "normalize.dtype=int3": "dtype",
            "pipeline.threads=-1": "threads",
            "augment.mirror=2": "mirror",
        }
        for override, key in cases.items():
            with self.subTest(override=override):
                result = self.millrace("validate", self.DEFAULT,
                                       *sets(f"files.root={e2e.dataset()}", override), expect=2)
                self.assertIn(key, result.stderr)
                self.assertIn("error", result.stderr)


class ReferenceTest(CliCase):
    """Item 3: `millrace stages` documents every stage type; `millrace graph` prints DOT."""

    @classmethod
    def setUpClass(cls):
        cls.text = e2e.run_millrace("stages").stdout
        cls.reference = parse_reference(cls.text)

    def test_stages_lists_every_type_with_keys_and_defaults(self):
        result = self.millrace("stages", expect=0)
        for kind in STAGE_TYPES:
            self.assertIn(kind, self.reference, f"stage type {kind} missing:\n{result.stdout}")
        for section in ("pipeline", "every stage"):
            self.assertIn(section, self.reference)
        for key in ("threads", "queue", "ordered", "seed", "max_errors"):
            self.assertIn(key, self.reference["pipeline"])
        for key in ("type", "name", "concurrency", "on_error"):
            self.assertIn(key, self.reference["every stage"])
        for kind in STAGE_TYPES:
            if kind != "discard":
                self.assertTrue(self.reference[kind], f"{kind} lists no keys")
            for key, default in self.reference[kind].items():
                self.assertTrue(default, f"{kind}.{key} has no default text")
        self.assertEqual(self.reference["npy"]["dir"], "(required)")
        self.assertEqual(self.reference["files"]["root"], "(required)")

    def test_every_key_the_configs_use_is_documented(self):
        for path in shipped_configs():
            cfg = e2e.Config(path)
            for key in cfg.pipeline:
                self.assertIn(key, self.reference["pipeline"], f"{path}: pipeline.{key}")
            for stage in cfg.stages:
                for key in stage:
                    documented = (key in self.reference[stage["type"]]
                                  or key in self.reference["every stage"])
                    self.assertTrue(documented, f"{path}: {stage['type']}.{key}")

    def test_documented_batch_defaults_match_behaviour(self):
        size = int(self.reference["batch"]["size"])
        last = self.reference["batch"]["last"]
        config = e2e.write_text(os.path.join(e2e.new_dir("defaults"), "defaults.yaml"), f"""\
pipeline:
  threads: 2
stages:
  - type: files
    root: {e2e.dataset()}
  - type: decode
  - type: augment
    resize: 64
    size: 32
  - type: normalize
    mean: [128]
  - type: batch
  - type: discard
""")
        result = self.millrace("run", config, "--quiet", expect=0)
        images, batches = e2e.expected_delivery(e2e.DATASET_COUNT, size, last)
        self.assertIn(f"{images} images in {batches} batches", result.stdout)

    def test_markdown_reference(self):
        text = self.millrace("stages", "--markdown", expect=0).stdout
        self.assertTrue(text.startswith("# "), text[:200])
        headings = re.findall(r"^## (.+)$", text, re.M)
        for kind in STAGE_TYPES:
            self.assertIn(kind, headings)
        # Every table row has as many cells as its header; every key of the plain listing is a
        # row of its section's table.
        sections = re.split(r"^## ", text, flags=re.M)[1:]
        for section in sections:
            title = section.split("\n", 1)[0].strip()
            rows = [line for line in section.splitlines() if line.startswith("|")]
            cells = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
            self.assertEqual(len(set(cells)), 1 if rows else 0, f"{title}: ragged table")
            if title in self.reference:
                keys = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
                self.assertEqual(keys, set(self.reference[title]), title)
        self.assertNotIn("\x1b", text)

    def check_dot(self, dot):
        self.assertTrue(dot.startswith("digraph"), dot[:200])
        self.assertEqual(dot.count("{"), dot.count("}"))
        self.assertTrue(dot.rstrip().endswith("}"))
        declared = set(re.findall(r"^\s*(\w+)\s*\[", dot, re.M))
        edges = re.findall(r"^\s*(\w+)\s*->\s*(\w+)", dot, re.M)
        self.assertTrue(edges)
        for a, b in edges:
            self.assertIn(a, declared, f"edge from undeclared node {a}")
            self.assertIn(b, declared, f"edge to undeclared node {b}")

    def test_graph_is_dot_naming_every_stage(self):
        names = ["reader", "jpeg", "crop", "to_int8", "grouper", "writer"]
        config = e2e.write_text(os.path.join(e2e.new_dir("graph"), "named.yaml"), f"""\
pipeline:
  name: named-stages
  threads: 2
stages:
  - type: files
    name: {names[0]}
    root: {e2e.dataset()}
  - type: decode
    name: {names[1]}
  - type: augment
    name: {names[2]}
    resize: 64
    size: 32
  - type: normalize
    name: {names[3]}
    mean: [123.68, 116.779, 103.939]
  - type: batch
    name: {names[4]}
    size: 8
  - type: npy
    name: {names[5]}
    dir: {os.path.join(e2e.scratch_dir(), "graph-out")}
""")
        dot = self.millrace("graph", config, expect=0).stdout
        self.check_dot(dot)
        for name in names:
            self.assertRegex(dot, rf"\b{name}\b")
        self.assertIn("sequencer_node", dot)

    def test_graph_leaves_the_output_of_an_earlier_run_alone(self):
        # `graph` only describes a pipeline; it must not touch the sink's folder, where the
        # batches of an earlier run may be waiting to be read.
        default = e2e.source_path("configs", "default.yaml")
        _, summary, npy_dir = self.run_config(default, "batch.size=16")
        index = os.path.join(npy_dir, "batches.jsonl")
        with open(index, "rb") as f:
            before = f.read()
        self.assertEqual(len(read_jsonl(index)), summary["batches"])
        root = f"files.root={e2e.dataset()}"
        self.millrace("graph", default, *sets(root, f"npy.dir={npy_dir}"), expect=0)
        with open(index, "rb") as f:
            self.assertEqual(f.read(), before, "graph rewrote batches.jsonl")
        fresh = os.path.join(e2e.new_dir("graph"), "not-created")
        self.millrace("graph", default, *sets(root, f"npy.dir={fresh}"), expect=0)
        self.assertFalse(os.path.exists(fresh), "graph created the npy folder")

    def test_graph_has_a_sequencer_only_when_ordered(self):
        for path in shipped_configs():
            cfg = e2e.Config(path)
            extra = shipped_overrides(cfg, e2e.new_dir("graph"))
            with self.subTest(config=os.path.basename(path)):
                ordered = self.millrace("graph", path, *sets(*extra, "pipeline.ordered=true"),
                                        expect=0).stdout
                unordered = self.millrace("graph", path, *sets(*extra, "pipeline.ordered=false"),
                                          expect=0).stdout
                self.check_dot(ordered)
                self.check_dot(unordered)
                self.assertIn("sequencer_node", ordered)
                self.assertNotIn("sequencer_node", unordered)
                for name in cfg.names():
                    self.assertRegex(ordered, rf"\b{re.escape(name)}\b")


class BadInputTest(CliCase):
    """Item 5: unreadable and hostile files are skipped and listed, or fail the run."""

    GOOD = ("good_1.jpg", "good_2.jpg", "png_named.jpg", "cmyk_adobe.jpg")
    BAD = ("truncated.jpg", "empty.jpg", "random.jpg", "bomb.jpg", "bomb_65000.jpg",
           "zero_width.jpg", "png_bomb.jpg", "progressive_truncated.jpg")
    MISSING = "missing_file.jpg"
    REASONS = {
        "truncated.jpg": r"truncat|premature|corrupt",
        "empty.jpg": r"empty|not a .*image",
        "random.jpg": r"not a .*image|unknown|unsupported|format",
        "bomb.jpg": r"max_pixels|too large|60000",
        "bomb_65000.jpg": r"above max_pixels",
        "zero_width.jpg": r"corrupt JPEG",
        "png_bomb.jpg": r"above max_pixels",
        "progressive_truncated.jpg": r"truncat|premature|corrupt",
        MISSING: r"cannot open|no such file|not found|missing",
    }
    RESIZE = 64
    CROP = 32

    @classmethod
    def setUpClass(cls):
        cls.work = e2e.new_dir("bad-input")
        cls.root = os.path.join(cls.work, "root")
        os.makedirs(os.path.join(cls.root, "class_a"))
        bad_corpus = e2e.source_path("tests", "data", "bad")
        names = sorted(os.listdir(bad_corpus))
        for name in cls.GOOD + cls.BAD:
            assert name in names, f"{name} missing from {bad_corpus}"
        listed = sorted(n for n in names if n.endswith(".jpg")) + [cls.MISSING]
        with open(os.path.join(cls.root, "images.lst"), "w") as f:
            for index, name in enumerate(listed):
                if name != cls.MISSING:
                    shutil.copy(os.path.join(bad_corpus, name), os.path.join(cls.root, "class_a"))
                f.write(f"{index}\t{index % 3}.000000\tclass_a/{name}\n")
        cls.listed = listed
        cls.out = os.path.join(cls.work, "npy")
        cls.config = e2e.write_text(os.path.join(cls.work, "bad.yaml"), f"""\
pipeline:
  name: bad-input
  threads: 2
stages:
  - type: files
    root: {cls.root}
    list: images.lst
  - type: decode
  - type: augment
    resize: {cls.RESIZE}
    size: {cls.CROP}
  - type: normalize
    mean: [{", ".join(map(str, IMAGENET_MEANS))}]
  - type: batch
    size: 4
  - type: npy
    dir: {cls.out}
""")
        json_path = os.path.join(cls.work, "skip.json")
        cls.skip_run = e2e.run_millrace("run", cls.config, "--quiet", "--json", json_path)
        cls.skip_summary = load_json(json_path) if os.path.exists(json_path) else None

    def test_skip_policy_exits_0(self):
        self.assertEqual(self.skip_run.returncode, 0, e2e.describe(self.skip_run))
        self.assertEqual(self.skip_summary["samples_read"], len(self.listed))

    def test_skipped_list_names_exactly_the_bad_files_with_reasons(self):
        skipped = self.skip_summary["skipped"]
        for entry in skipped:
            self.assertIn("path", entry)
            self.assertIn("error", entry)
        names = sorted(os.path.basename(s["path"]) for s in skipped)
        self.assertEqual(names, sorted(self.BAD + (self.MISSING,)), skipped)
        for entry in skipped:
            name = os.path.basename(entry["path"])
            with self.subTest(file=name):
                self.assertRegex(entry["error"], re.compile(self.REASONS[name], re.I))
                if "stage" in entry:
                    self.assertIn(entry["stage"], ("files", "decode") if name == self.MISSING
                                  else ("decode",))
        # The summary on stdout lists them too.
        for name in self.BAD + (self.MISSING,):
            self.assertIn(name, self.skip_run.stdout)

    def test_every_good_image_is_delivered(self):
        records = read_jsonl(os.path.join(self.out, "batches.jsonl"))
        delivered = [p for r in records for p in r["paths"][:len(r["ids"]) - r["pad"]]]
        self.assertEqual(sorted(os.path.basename(p) for p in delivered), sorted(self.GOOD))
        self.assertEqual(self.skip_summary["images"], len(self.GOOD))

    def test_good_images_have_the_reference_pixels(self):
        records = read_jsonl(os.path.join(self.out, "batches.jsonl"))
        means = [check_npy.round_half_away_from_zero(m) for m in IMAGENET_MEANS]
        checked = 0
        for record in records:
            data = np.load(os.path.join(self.out, f"batch_{record['index']:06d}_data.npy"))
            for row, path in enumerate(record["paths"][:len(record["ids"]) - record["pad"]]):
                name = os.path.basename(path)
                full = check_npy.resolve(path, self.root)
                if name == "cmyk_adobe.jpg":
                    self.check_cmyk(data[row])
                else:
                    want = check_npy.expected_sample(full, self.RESIZE, self.CROP, self.CROP,
                                                     means, "NCHW")
                    self.assertTrue(np.array_equal(data[row], want), f"{name} differs")
                checked += 1
        self.assertEqual(checked, len(self.GOOD))

    def check_cmyk(self, sample):
        # cmyk_adobe.jpg is eight 16x16 ink patches in a 128x16 strip (tests/data/bad/README.md).
        # Resized to a shorter side of 64 it is 512x64; the centred 32-pixel crop spans resized
        # columns 240..271, i.e. source columns 60..67.9: patch 3 (yellow, crop columns 0..15)
        # and patch 4 (red, crop columns 16..31). RGB = (255-C)(255-K)/255 per channel.
        means = np.array([check_npy.round_half_away_from_zero(m) for m in IMAGENET_MEANS])

        def expected(c, m, y, k):
            rgb = np.array([(255 - v) * (255 - k) / 255.0 for v in (c, m, y)])
            return np.clip(np.round(rgb) - means, -128, 127)

        yellow = expected(0, 0, 255, 0)
        red = expected(0, 255, 255, 0)
        # Columns next to the patch edge blend the two colours; compare the interiors.
        left = sample[:, :, 2:13].reshape(3, -1).astype(np.int32)
        right = sample[:, :, 19:30].reshape(3, -1).astype(np.int32)
        tolerance = 12  # JPEG loss on flat ink patches
        for channel in range(3):
            self.assertLessEqual(np.abs(left[channel] - yellow[channel]).max(), tolerance,
                                 f"yellow patch, channel {channel}")
            self.assertLessEqual(np.abs(right[channel] - red[channel]).max(), tolerance,
                                 f"red patch, channel {channel}")

    def test_fail_policy_exits_1_naming_a_bad_file(self):
        json_path = os.path.join(e2e.new_dir("fail"), "fail.json")
        result = self.millrace("run", self.config, "--quiet", "--json", json_path,
                               *sets("decode.on_error=fail", f"npy.dir={e2e.new_dir('npy')}"),
                               expect=1)
        self.assertTrue(any(name in result.stderr for name in self.BAD), e2e.describe(result))
        self.assertIn("decode", result.stderr)
        summary = load_json(json_path)
        self.assertNotEqual(summary.get("error", ""), "")
        self.assertFalse(any(name in summary["error"] for name in self.GOOD), summary["error"])

    def test_max_errors(self):
        # Five samples are skipped out of nine read; the run fails when more than max_errors are.
        skipped, read = len(self.BAD) + 1, len(self.listed)
        cases = {"2": 1, str(skipped - 1): 1, str(skipped): 0,
                 f"{math.floor(100 * skipped / read) - 5}%": 1,
                 f"{math.ceil(100 * skipped / read) + 5}%": 0}
        for limit, code in cases.items():
            with self.subTest(max_errors=limit):
                result = self.millrace("run", self.config, "--quiet",
                                       *sets(f"pipeline.max_errors={limit}",
                                             f"npy.dir={e2e.new_dir('npy')}"), expect=code)
                if code:
                    self.assertIn("max_errors", result.stderr)


class NpyCheckTest(CliCase):
    """Item 6: the default config's int8 output matches an independent reimplementation."""

    CHECKER = None

    @classmethod
    def setUpClass(cls):
        cls.CHECKER = e2e.source_path("tests", "tools", "check_npy.py")
        cls.DEFAULT = e2e.source_path("configs", "default.yaml")

    def checker_args(self, npy_dir):
        cfg = e2e.Config(self.DEFAULT)
        augment = cfg.stage_of_type("augment")
        crop = augment["size"] if isinstance(augment["size"], list) else [augment["size"]]
        normalize = cfg.stage_of_type("normalize")
        return ["/usr/bin/python3", "-B", self.CHECKER, "--out", npy_dir, "--root", e2e.dataset(),
                "--resize", str(augment.get("resize", 0)), "--crop", *map(str, crop),
                "--mean", *map(str, normalize["mean"]),
                "--layout", normalize.get("layout", "NCHW")]

    def test_default_config_passes_the_checker(self):
        for overrides in ([], ["batch.size=16"]):
            with self.subTest(overrides=overrides):
                _, summary, npy_dir = self.run_config(self.DEFAULT, *overrides)
                check = e2e.run(self.checker_args(npy_dir))
                self.assertEqual(check.returncode, 0, e2e.describe(check))
                self.assertIn(f"checked {e2e.DATASET_COUNT} samples in {summary['batches']} "
                              "batches", check.stdout)

    def test_checker_rejects_a_changed_pixel(self):
        # The check above is only worth something if the checker can fail on this output.
        _, _, npy_dir = self.run_config(self.DEFAULT, "batch.size=16")
        path = os.path.join(npy_dir, "batch_000001_data.npy")
        data = np.load(path)
        data[3, 1, 100, 100] = data[3, 1, 100, 100] ^ 1
        np.save(path, data)
        check = e2e.run(self.checker_args(npy_dir))
        self.assertEqual(check.returncode, 1, e2e.describe(check))
        self.assertIn("batch 1, position 3", check.stderr)


class DeterminismTest(CliCase):
    """Item 7: the train recipe gives the same bytes for any thread count and queue size."""

    @classmethod
    def setUpClass(cls):
        train = e2e.source_path("configs", "train.yaml")
        with open(train) as f:
            text = f.read()
        cls.config = e2e.write_text(os.path.join(e2e.new_dir("train"), "train_npy.yaml"),
                                    e2e.replace_sink(text, "  - type: npy\n    dir: unset\n"))
        cfg = e2e.Config(cls.config)
        assert cfg.stage_of_type("augment")["crop"] == "random_resized"
        assert cfg.stage_of_type("files")["shuffle"] is True

    def train_run(self, *overrides):
        # Batches of 8 so that 'last: drop' keeps every sample of the 40; two epochs to see the
        # per-epoch shuffle.
        _, summary, npy_dir = self.run_config(self.config, "batch.size=8", "files.epochs=2",
                                              *overrides)
        self.assertEqual(summary["images"], 2 * e2e.DATASET_COUNT)
        files = sorted(os.listdir(npy_dir))
        self.assertIn("batches.jsonl", files)
        contents = {}
        for name in files:
            with open(os.path.join(npy_dir, name), "rb") as f:
                contents[name] = f.read()
        return contents, read_jsonl(os.path.join(npy_dir, "batches.jsonl"))

    def test_same_bytes_for_any_threads_and_queue(self):
        runs = {}
        for threads, queue in ((1, 1), (2, 64), (4, 3)):
            runs[(threads, queue)], _ = self.train_run(f"pipeline.threads={threads}",
                                                       f"pipeline.queue={queue}")
        reference = runs[(1, 1)]
        self.assertEqual(len([n for n in reference if n.endswith("_data.npy")]), 10)
        for key, contents in runs.items():
            self.assertEqual(sorted(contents), sorted(reference), key)
            for name in reference:
                self.assertEqual(contents[name], reference[name], f"{name} differs for {key}")

    def test_each_epoch_is_a_new_permutation(self):
        _, records = self.train_run()
        epochs = {}
        for r in records:
            epochs.setdefault(r["epoch"], []).extend(r["paths"])
        self.assertEqual(sorted(epochs), [0, 1])
        everything = sorted(os.path.relpath(p, e2e.dataset()) if os.path.isabs(p) else p
                            for p in epochs[0])
        self.assertEqual(len(set(everything)), e2e.DATASET_COUNT)
        self.assertEqual(sorted(epochs[0]), sorted(epochs[1]))
        self.assertNotEqual(epochs[0], epochs[1])
        self.assertNotEqual(epochs[0], sorted(epochs[0]))

    def test_another_seed_gives_other_batches(self):
        first, first_records = self.train_run("pipeline.seed=1")
        second, second_records = self.train_run("pipeline.seed=2")
        data = [n for n in first if n.endswith("_data.npy")]
        self.assertTrue(any(first[n] != second.get(n) for n in data))
        self.assertNotEqual([r["paths"] for r in first_records],
                            [r["paths"] for r in second_records])


class InterruptTest(CliCase):
    """Item 8: Ctrl-C stops a long run promptly with exit 130 and a summary; progress on a
    non-terminal stderr is plain periodic lines."""

    EPOCHS = 10000

    @classmethod
    def setUpClass(cls):
        default = e2e.source_path("configs", "default.yaml")
        with open(default) as f:
            text = f.read()
        cls.work = e2e.new_dir("interrupt")
        cls.config = e2e.write_text(os.path.join(cls.work, "long.yaml"),
                                    e2e.replace_sink(text, "  - type: discard\n"))

    def interrupted_run(self, after_s, *extra):
        json_path = os.path.join(e2e.new_dir("sigint"), "summary.json")
        args = [Env.millrace, "run", self.config, "--json", json_path,
                *sets(f"files.root={e2e.dataset()}", f"files.epochs={self.EPOCHS}",
                      "batch.size=8"), *extra]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=e2e.scratch_dir())
        try:
            time.sleep(after_s)
            self.assertIsNone(proc.poll(), "the long run ended before the signal")
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            stdout, stderr = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        summary = load_json(json_path) if os.path.exists(json_path) else None
        return proc.returncode, took, stdout, stderr, summary

    def test_sigint_stops_promptly_with_130_and_a_summary(self):
        code, took, stdout, stderr, summary = self.interrupted_run(1.5)
        self.assertEqual(code, 130, stderr)
        self.assertLess(took, 1.5, "exit took too long after SIGINT")
        self.assertIn("images in", stdout)
        self.assertIsNotNone(summary)
        self.assertTrue(summary["cancelled"])
        self.assertLess(summary["images"], self.EPOCHS * e2e.DATASET_COUNT)
        self.assertEqual(summary["images"] % 8, 0, "batches of 8 never pad mid-run")

    def test_progress_lines_on_a_pipe(self):
        code, _, stdout, stderr, _ = self.interrupted_run(4.5)
        self.assertEqual(code, 130, stderr)
        lines = [line for line in stderr.split("\n") if "images/s" in line]
        self.assertGreaterEqual(len(lines), 1, f"no progress lines in stderr:\n{stderr}")
        total = self.EPOCHS * e2e.DATASET_COUNT
        for line in lines:
            self.assertNotIn("\r", line)
            self.assertNotIn("\x1b", line)
            self.assertRegex(line, rf"\b\d+/{total} images\b")
        # Periodic, not one per batch: at most one every second or so.
        self.assertLessEqual(len(lines), 6, stderr)

    def test_quiet_run_prints_no_progress(self):
        code, _, stdout, stderr, _ = self.interrupted_run(3.0, "--quiet")
        self.assertEqual(code, 130, stderr)
        self.assertNotIn("images/s  elapsed", stderr)
        self.assertIn("images in", stdout)


class WhereTheTimeGoesTest(CliCase):
    """Per-stage wait and blocked times in the summary, --trace as a Chrome trace, the bench's
    bottleneck report, and concurrency: auto."""

    DEFAULT = None

    @classmethod
    def setUpClass(cls):
        cls.DEFAULT = e2e.source_path("configs", "default.yaml")

    def traced_run(self, *overrides, command="run", extra=()):
        out = e2e.new_dir("trace")
        trace = os.path.join(out, "trace.json")
        json_path = os.path.join(out, "summary.json")
        cfg = e2e.Config(self.DEFAULT)
        args = [command, self.DEFAULT, *sets(*shipped_overrides(cfg, out), *overrides),
                "--trace", trace, "--json", json_path, *extra]
        if command == "run":
            args.append("--quiet")
        result = self.millrace(*args, expect=0)
        with open(trace) as f:
            data = json.load(f)
        return result, data, load_json(json_path), os.path.getsize(trace), cfg

    def check_chrome_trace(self, data, stage_names):
        self.assertIsInstance(data, dict)
        events = data["traceEvents"]
        self.assertIsInstance(events, list)
        threads = {e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
        spans, counters = {}, {}
        for e in events:
            self.assertIn(e["ph"], ("X", "C", "M"), e)
            self.assertIsInstance(e["name"], str)
            self.assertEqual(e["pid"], 1)
            if e["ph"] == "X":
                self.assertIn(e["tid"], threads, f"a span on a thread with no name: {e}")
                self.assertGreaterEqual(e["dur"], 0)
                spans.setdefault(e["tid"], []).append(e)
            elif e["ph"] == "C":
                self.assertIsInstance(e["args"]["items"], int)
                self.assertGreaterEqual(e["args"]["items"], 0)
                counters.setdefault(e["name"], []).append(e)
        self.assertTrue(spans, "no spans")
        self.assertTrue(counters, "no counters")
        for tid, track in spans.items():
            # One thread runs one invocation at a time: spans follow each other.
            for a, b in zip(track, track[1:]):
                self.assertLessEqual(a["ts"], b["ts"], f"thread {tid}")
                self.assertLessEqual(a["ts"] + a["dur"], b["ts"] + 0.002, f"thread {tid}")
        for name, track in counters.items():
            times = [e["ts"] for e in track]
            self.assertEqual(times, sorted(times), name)
        names = {e["name"] for track in spans.values() for e in track}
        for stage in stage_names:
            self.assertTrue(any(n == stage or n.startswith(stage + " ") for n in names),
                            f"no span for stage {stage}: {sorted(names)}")
        return spans, counters

    def test_run_trace_is_a_chrome_trace_with_every_stage(self):
        result, data, summary, _, cfg = self.traced_run()
        spans, counters = self.check_chrome_trace(data, cfg.names())
        # A queue counter per edge into a stage, never above that edge's capacity.
        capacities = {s["name"]: s["queue_capacity"] for s in summary["stages"]}
        for stage in cfg.names()[1:]:
            self.assertIn(f"queue {stage}", counters)
            peak = max(e["args"]["items"] for e in counters[f"queue {stage}"])
            self.assertLessEqual(peak, capacities[stage], stage)
            self.assertGreaterEqual(peak, 1, stage)
        self.assertEqual(data["otherData"]["dropped_events"], 0)
        kept = sum(1 for e in data["traceEvents"] if e["ph"] in ("X", "C"))
        self.assertEqual(summary["trace"]["events"], kept)
        self.assertTrue(summary["trace"]["written"])
        self.assertIn(f"trace: {summary['trace']['path']}, {kept} events", result.stdout)
        # Every sample passes each per-sample stage once, and so do the end-of-epoch and
        # end-of-stream markers: one span each.
        span_names = [e["name"] for track in spans.values() for e in track]
        self.assertEqual(span_names.count("decode"), e2e.DATASET_COUNT + 2)

    def test_a_long_runs_trace_stays_under_its_bound(self):
        per_thread = 300
        result, data, summary, size, cfg = self.traced_run(
            "files.epochs=20", f"pipeline.trace_events={per_thread}")
        self.check_chrome_trace(data, [])
        dropped = data["otherData"]["dropped_events"]
        self.assertGreater(dropped, 0)
        self.assertIn(f"{dropped} older events dropped", result.stdout)
        self.assertEqual(summary["trace"]["dropped_events"], dropped)
        tracks = {e["tid"] for e in data["traceEvents"] if e["ph"] == "M" and e["tid"] > 0}
        # One ring per worker thread plus one spare, each holding `per_thread` events of at most
        # a few hundred bytes: the file does not grow with the run.
        self.assertLessEqual(len(tracks), summary["threads"] + 1)
        self.assertLess(size, (summary["threads"] + 1) * per_thread * 200 + 8192)
        kept = sum(1 for e in data["traceEvents"] if e["ph"] in ("X", "C"))
        self.assertLessEqual(kept, (summary["threads"] + 1) * per_thread)

    def test_bench_ends_with_a_bottleneck_report_and_traces_its_last_run(self):
        result, data, bench, _, cfg = self.traced_run(
            command="bench", extra=("--repeats", "2", "--warmup", "0"))
        self.check_chrome_trace(data, cfg.names())
        last = result.stdout.strip().split("\n")[-1]
        self.assertTrue(last.startswith("bottleneck: "), result.stdout)
        verdict = bench["bottleneck"]
        self.assertIn(verdict["stage"], cfg.names() + ["consumer", ""])
        self.assertEqual(last, "bottleneck: " + verdict["report"])
        if verdict["stage"] not in ("", "consumer"):
            self.assertIn(f"'{verdict['stage']}'", verdict["report"])
            self.assertTrue(verdict["changes"])

    def test_summary_accounts_for_every_slot(self):
        _, summary, _ = self.run_config(self.DEFAULT, "files.epochs=5", quiet=True)
        wall = summary["run_wall_seconds"]
        self.assertGreater(wall, 0)
        for st in summary["stages"]:
            for key in ("wait_input_seconds", "blocked_output_seconds", "wait_worker_seconds"):
                self.assertGreaterEqual(st[key], 0, f"{st['name']} {key}")
            if st["type"] == "files":
                continue  # its next() has no slots; its loads share the row
            total = (st["busy_seconds"] + st["wait_input_seconds"] +
                     st["blocked_output_seconds"] + st["wait_worker_seconds"])
            slots = st["concurrency"] * wall
            self.assertAlmostEqual(total, slots, delta=0.2 * slots + 0.02, msg=st["name"])
        self.assertGreaterEqual(summary["consumer_wait_seconds"], 0)

    def test_concurrency_auto_balances_and_says_what_it_chose(self):
        result, summary, _ = self.run_config(self.DEFAULT, "files.epochs=10",
                                             "decode.concurrency=auto",
                                             "augment.concurrency=auto",
                                             "normalize.concurrency=auto")
        note = summary["concurrency_note"]
        self.assertTrue(note.startswith("concurrency auto"), note)
        self.assertIn(note, result.stdout)
        for st in summary["stages"]:
            auto = st["name"] in ("decode", "augment", "normalize")
            self.assertEqual(st["concurrency_auto"], auto, st["name"])
            if auto:
                self.assertIn(f" {st['name']} {st['concurrency']} (", note)
                self.assertGreaterEqual(st["concurrency"], 1)
                self.assertLessEqual(st["concurrency"], summary["threads"])
        self.assertEqual(summary["images"], 10 * e2e.DATASET_COUNT)

    def test_concurrency_auto_on_a_serial_stage_is_a_config_error(self):
        result = self.millrace("validate", self.DEFAULT, *sets("batch.concurrency=auto"),
                               expect=2)
        self.assertIn("'concurrency: auto' balances concurrent stages", result.stderr)

    def test_an_unwritable_trace_is_an_error_before_running(self):
        blocker = os.path.join(e2e.new_dir("trace-bad"), "file")
        e2e.write_text(blocker, "x")
        result = self.millrace("run", self.DEFAULT, *sets(f"files.root={e2e.dataset()}"),
                               "--trace", os.path.join(blocker, "trace.json"), expect=2)
        self.assertIn("cannot write the trace file", result.stderr)


class MakeDatasetTest(CliCase):
    """Item 10: the generator writes the documented folder layout, list and image sizes."""

    def test_layout_and_list(self):
        root = e2e.dataset()
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.assertEqual(classes, [f"class_{c:03d}" for c in range(e2e.DATASET_CLASSES)])
        images = sorted(glob.glob(os.path.join(root, "class_*", "*.jpg")))
        self.assertEqual(len(images), e2e.DATASET_COUNT)
        lines = e2e.read_lines(os.path.join(root, "labels.lst"))
        self.assertEqual(len(lines), e2e.DATASET_COUNT)
        listed = []
        for i, line in enumerate(lines):
            fields = line.split("\t")
            self.assertEqual(len(fields), 3, line)
            index, label, path = fields
            self.assertEqual(int(index), i)
            # Class c holds images i with c <= i * classes / count < c + 1.
            expected_label = i * e2e.DATASET_CLASSES // e2e.DATASET_COUNT
            self.assertEqual(label, f"{expected_label:f}")
            self.assertEqual(path.split("/")[0], f"class_{expected_label:03d}")
            self.assertTrue(os.path.isfile(os.path.join(root, path)), path)
            listed.append(os.path.join(root, path))
        self.assertEqual(sorted(listed), images)
        self.assertEqual(listed, images, "a sorted walk must visit the images in list order")

    def test_stdout_reports_the_count(self):
        root = os.path.join(e2e.new_dir("ds"), "small")
        result = self.millrace("make-dataset", root, "--count", "6", "--classes", "2", expect=0)
        self.assertRegex(result.stdout, r"\b6 images\b")
        self.assertEqual(len(glob.glob(os.path.join(root, "class_*", "*.jpg"))), 6)

    def test_imagenet_sizes(self):
        portrait = 0
        for path in sorted(glob.glob(os.path.join(e2e.dataset(), "class_*", "*.jpg"))):
            width, height = e2e.jpeg_size(path)
            short, long = min(width, height), max(width, height)
            self.assertTrue(333 <= short <= 500, f"{path}: {width}x{height}")
            self.assertLessEqual(long / short, 16 / 9 + 0.01, f"{path}: {width}x{height}")
            portrait += height > width
        self.assertGreater(portrait, 0, "a quarter of the images should be portrait")
        self.assertLess(portrait, e2e.DATASET_COUNT // 2)

    def test_large_size(self):
        import cv2  # only this test needs OpenCV, as a second opinion on the header
        root = os.path.join(e2e.new_dir("large"), "large")
        self.millrace("make-dataset", root, "--count", "3", "--classes", "1", "--size", "large",
                      expect=0)
        paths = sorted(glob.glob(os.path.join(root, "class_*", "*.jpg")))
        self.assertEqual(len(paths), 3)
        for path in paths[:2]:
            width, height = e2e.jpeg_size(path)
            self.assertTrue(1200 <= max(width, height) <= 2800, f"{path}: {width}x{height}")
            self.assertLessEqual(max(width, height) / min(width, height), 16 / 9 + 0.01)
            decoded = cv2.imread(path, cv2.IMREAD_COLOR)
            self.assertEqual(decoded.shape[:2], (height, width))

    def test_same_seed_same_bytes_other_seed_other_bytes(self):
        work = e2e.new_dir("seeds")

        def make(name, seed):
            root = os.path.join(work, name)
            self.millrace("make-dataset", root, "--count", "4", "--classes", "2", "--seed", seed,
                          expect=0)
            out = {}
            for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        out[os.path.relpath(path, root)] = f.read()
            return out

        a, b, c = make("a", "5"), make("b", "5"), make("c", "6")
        self.assertEqual(a, b)
        self.assertEqual(sorted(a), sorted(c))
        self.assertTrue(all(a[n] != c[n] for n in a if n.endswith(".jpg")))


class CalibrationTableTest(CliCase):
    """An int8 run writes its calibration table with a fingerprint of the model and of the
    preprocessing; a later run loads it, and one made for another model, recipe or mode is a config
    error naming both fingerprints and what differs, with the table left as it was."""

    def test_table_is_reused_and_a_foreign_one_is_an_error(self):
        config = e2e.source_path("configs", "resnet18_int8.yaml")
        cfg = e2e.Config(config)
        infer = cfg.stage_of_type("infer")["name"]
        normalize = cfg.stage_of_type("normalize")["name"]
        out = e2e.new_dir("calibration")
        table_path = os.path.join(out, "calib.json")  # where shipped_overrides puts it

        def run(*overrides, expect=0):
            json_path = os.path.join(out, "summary.json")
            result = self.millrace("run", config,
                                   *sets(*shipped_overrides(e2e.Config(config), out), *overrides),
                                   "--json", json_path, "--quiet", expect=expect)
            return result, (load_json(json_path) if expect == 0 else None)

        result, summary = run(f"{infer}.alone=3")
        with open(table_path) as f:
            table = json.load(f)
        self.assertIn("model tiny.onnx; graph ", table["fingerprint"])
        self.assertIn("; input s8; layout nhwc; mean [", table["fingerprint"])
        self.assertEqual(table["mode"], "minmax")
        self.assertGreater(summary["metrics"][f"{infer}.alone_images_per_second"], 0)
        self.assertGreater(summary["metrics"][f"{infer}.calibration_seconds"], 0)

        # Reused: no calibration, no warning.
        result, summary = run()
        self.assertEqual(summary["metrics"][f"{infer}.calibration_seconds"], 0)
        self.assertNotIn("calibration table", result.stderr)
        self.assertNotIn(f"{infer}.alone_images_per_second", summary["metrics"])

        def refused(stale_table, *overrides, differs):
            with open(table_path, "w") as f:
                json.dump(stale_table, f)
            result, _ = run(*overrides, expect=2)
            self.assertIn(f"calibration table '{table_path}' was made for another model or "
                          "recipe", result.stderr)
            self.assertIn(differs, result.stderr)
            self.assertIn(stale_table["fingerprint"], result.stderr)  # both fingerprints
            self.assertIn("this stage's: 'model tiny.onnx; graph ", result.stderr)
            with open(table_path) as f:  # untouched
                self.assertEqual(json.load(f), stale_table)

        # Another model (its graph hash), another mean, another mode: each an error.
        graph = table["fingerprint"].split("; ")[1]
        other = dict(table, fingerprint=table["fingerprint"].replace(graph, "graph 0123456789abcdef"))
        refused(other, differs="(graph 0123456789abcdef in the table, ")
        refused(table, f"{normalize}.mean=[120,110,100]", f"{infer}.input.mean=[120,110,100]",
                differs="(mean [123.675, 116.28, 103.53] in the table, [120, 110, 100] here)")
        refused(table, f"{infer}.calibration.mode=entropy",
                differs="(mode minmax in the table, entropy here)")

        # The same table is used again once the recipe is back.
        result, summary = run()
        self.assertEqual(summary["metrics"][f"{infer}.calibration_seconds"], 0)


class InferParallelTest(CliCase):
    """However the inference threads share a batch (by samples, with one to three threads, or by
    layers), an int8 run predicts the same classes with the same scores."""

    def test_every_split_gives_the_same_predictions(self):
        config = e2e.source_path("configs", "resnet18_int8.yaml")
        infer = e2e.Config(config).stage_of_type("infer")["name"]
        out = e2e.new_dir("infer_parallel")

        def predictions(*overrides):
            json_path = os.path.join(out, "summary.json")
            self.millrace("run", config, *sets(*shipped_overrides(e2e.Config(config), out),
                                               *overrides),
                          "--json", json_path, "--quiet", expect=0)
            self.assertTrue(load_json(json_path)["finished"])
            with open(os.path.join(out, "predictions.jsonl"), "rb") as f:
                return f.read()

        reference = predictions(f"{infer}.parallel=layers")  # calibrates and writes the table
        again = predictions(f"{infer}.parallel=layers")      # loads it
        self.assertEqual(again, reference)
        self.assertGreater(len(reference.splitlines()), 0)
        for threads in (1, 2, 3):
            self.assertEqual(predictions(f"{infer}.parallel=samples", f"{infer}.threads={threads}"),
                             reference, f"samples on {threads} threads")


if __name__ == "__main__":
    e2e.main()
