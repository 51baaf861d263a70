#!/usr/bin/python3
"""End-to-end test of the embedding example (examples/embed.cpp) on a small generated dataset.

  example_test.py --millrace BIN --example BIN --source DIR [unittest arguments]

The example builds files -> decode -> augment (resize 256, centre crop 224) -> normalize (ImageNet
means, int8) -> batch (16, pad) in code and prints one line per batch with a checksum of its bytes
(checksum = checksum * 31 + byte, over the int8 values read as unsigned, modulo 2^64). The test
recomputes every batch with the independent reference in tests/tools/check_npy.py and compares
the checksums.
"""

import sys

sys.dont_write_bytecode = True  # imports must not leave __pycache__ folders in the source tree

import os
import re
import unittest

import numpy as np

import e2e_support as e2e
from e2e_support import Env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import check_npy  # noqa: E402

BATCH = 16
RESIZE = 256
CROP = 224
MEANS = [123.68, 116.779, 103.939]
DEFAULT_MAX_BATCHES = 4

BATCH_LINE = re.compile(
    r"^batch (\d+): (\w+) (\d+)x(\d+)x(\d+)x(\d+) (\w+), pad (\d+), first id (\d+), "
    r"unit ([\d.]+), checksum ([0-9a-f]{16})$")


def polynomial_checksum(values):
    """sum(v_i * 31^(n-1-i)) mod 2^64, the example's running checksum, vectorised (uint64
    arithmetic wraps modulo 2^64)."""
    v = values.reshape(-1).view(np.uint8).astype(np.uint64)
    factors = np.full(v.size, 31, dtype=np.uint64)
    factors[0] = 1
    powers = np.cumprod(factors)[::-1]  # 31^(n-1), ..., 31, 1
    return int(np.sum(v * powers, dtype=np.uint64))


def folder_order(root):
    """The files source without a list: class sub-folders in sorted order, files sorted in each."""
    paths = []
    for cls in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        folder = os.path.join(root, cls)
        paths += [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    return paths


class ExampleTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        root = e2e.dataset()
        means = [check_npy.round_half_away_from_zero(m) for m in MEANS]
        cls.samples = [check_npy.expected_sample(p, RESIZE, CROP, CROP, means, "NCHW")
                       for p in folder_order(root)]
        assert len(cls.samples) == e2e.DATASET_COUNT

    def run_example(self, *args):
        result = e2e.run([Env.example, *map(str, args)])
        self.assertEqual(result.returncode, 0, e2e.describe(result))
        return result

    def expected_batch(self, index):
        """Rows of batch `index`: samples in order, the last batch padded with the first ones."""
        n = len(self.samples)
        positions = [index * BATCH + i for i in range(BATCH)]
        rows = [self.samples[p if p < n else p - n] for p in positions]
        return np.stack(rows), sum(p >= n for p in positions)

    def check_output(self, stdout, batches):
        lines = [BATCH_LINE.match(line) for line in stdout.splitlines()
                 if line.startswith("batch ")]
        self.assertEqual(len(lines), batches, stdout)
        for k, m in enumerate(lines):
            self.assertIsNotNone(m, stdout)
            index, dtype, n, c, h, w, layout, pad, first_id, unit, checksum = m.groups()
            self.assertEqual(int(index), k)
            self.assertEqual((dtype, layout), ("int8", "NCHW"))
            self.assertEqual((int(n), int(c), int(h), int(w)), (BATCH, 3, CROP, CROP))
            self.assertEqual(int(first_id), k * BATCH)
            self.assertEqual(float(unit), 1.0)  # MXNet-compatible int8: one unit = one pixel
            data, expected_pad = self.expected_batch(k)
            self.assertEqual(int(pad), expected_pad)
            self.assertEqual(int(checksum, 16), polynomial_checksum(data), f"batch {k}")

    def test_runs_to_the_end_of_the_dataset(self):
        full = -(-e2e.DATASET_COUNT // BATCH)
        self.assertLess(full, DEFAULT_MAX_BATCHES)
        result = self.run_example(e2e.dataset())
        self.check_output(result.stdout, full)
        self.assertRegex(result.stdout,
                         rf"(?m)^embedded: {e2e.DATASET_COUNT} images in {full} batches, ")
        self.assertNotIn("[cancelled]", result.stdout)

    def test_stops_early_when_asked(self):
        result = self.run_example(e2e.dataset(), 2)
        self.check_output(result.stdout, 2)
        self.assertRegex(result.stdout, rf"(?m)^embedded: {2 * BATCH} images in 2 batches, ")

    def test_errors(self):
        usage = e2e.run([Env.example])
        self.assertEqual(usage.returncode, 2, e2e.describe(usage))
        self.assertIn("usage", usage.stderr)
        missing = os.path.join(e2e.scratch_dir(), "no-such-dataset")
        config = e2e.run([Env.example, missing])
        self.assertEqual(config.returncode, 2, e2e.describe(config))
        self.assertIn(missing, config.stderr)


if __name__ == "__main__":
    e2e.main()
