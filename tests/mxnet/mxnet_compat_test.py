"""MXNet as the oracle: millrace and MXNet 1.9.1's own mx.io.ImageRecordIter read the same .rec
files and must deliver the same batches, byte for byte, with the same labels, padding and ids.

usage: mxnet_compat_test.py --millrace BIN --source DIR [--venv DIR] [unittest arguments]

MXNet runs in its own virtual environment (`.venv-mxnet` at the source root, made by
`scripts/setup`; --venv names another), through tests/mxnet/mxnet_oracle.py; this script runs with
Debian's Python and numpy. Without that environment the test fails and says how to make it: a
comparison that did not run must not pass.

The data: the real RecordIO fixture tests/data/recordio/adaface.rec (112x112 JPEGs written by
MXNet's im2rec, with and without its .idx) and a .rec that `millrace pack` writes from photos
`millrace make-dataset` makes (40 JPEGs, shorter side 333-500, aspect 3:4 to 16:9, with its .idx,
and a copy without one), and a .rec `millrace pack` writes from those photos re-encoded by PIL in
the other layouts and formats MXNet reads (JPEG 4:4:4, 4:2:2, progressive, grayscale, CMYK, EXIF
orientation 6; PNG RGB, RGBA, gray, palette; BMP). The recipes: configs/mxnet_val_int8.yaml as it is (only its source path,
index, output folder and, for the 8-record fixture, batch size overridden), a center crop without
resize, uint8 output, an image smaller than the crop, and round_batch padding (40 photos in batches
of 32, 8 records in batches of 5).

When a batch differs, the failure names the first differing sample (batch, row, record id),
channel, row, column and both values, then finds the first stage whose pixels differ for that
record by running both sides stage by stage: decode, resize, center crop, and finally normalize
and batch (mean subtraction, dtype, layout, order).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
import read_rec  # noqa: E402  (tests/tools: an independent RecordIO reader)

RUN_TIMEOUT_S = 300
PHOTO_COUNT = 40
MEAN = [123.68, 116.779, 103.939]


class Env:
    millrace = None
    source = None
    venv = None
    scratch = None
    photos_rec = None
    photos_idx = None
    photos_rec_alone = None
    adaface_rec = None
    adaface_idx = None
    adaface_rec_alone = None
    formats_rec = None


def run(args, cwd=None):
    return subprocess.run([str(a) for a in args], cwd=cwd or Env.scratch, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, check=False)


def describe(result):
    return (f"\ncommand: {' '.join(result.args)}\nexit: {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")


def checked(result):
    if result.returncode != 0:
        raise AssertionError("command failed" + describe(result))
    return result


def new_dir(name):
    return tempfile.mkdtemp(prefix=name + "-", dir=Env.scratch)


def oracle(command, request):
    """Runs mxnet_oracle.py COMMAND in the MXNet environment."""
    path = os.path.join(new_dir("request"), "request.json")
    with open(path, "w") as f:
        json.dump(request, f)
    python = os.path.join(Env.venv, "bin", "python")
    checked(run([python, os.path.join(HERE, "mxnet_oracle.py"), command, path]))


def prepare_data():
    """The .rec files both sides read, in the scratch folder."""
    fixtures = os.path.join(Env.source, "tests", "data", "recordio")
    alone = new_dir("alone")
    Env.adaface_rec = os.path.join(fixtures, "adaface.rec")
    Env.adaface_idx = os.path.join(fixtures, "adaface.idx")
    # Without its .idx beside it: read sequentially by both sides.
    Env.adaface_rec_alone = os.path.join(alone, "adaface.rec")
    shutil.copyfile(Env.adaface_rec, Env.adaface_rec_alone)

    photos = os.path.join(Env.scratch, "photos")
    checked(run([Env.millrace, "make-dataset", photos, "--count", PHOTO_COUNT, "--classes", 4,
                 "--seed", 21]))
    Env.photos_rec = os.path.join(Env.scratch, "photos.rec")
    checked(run([Env.millrace, "pack", "--list", os.path.join(photos, "labels.lst"), "--root",
                 photos, Env.photos_rec]))
    Env.photos_idx = os.path.join(Env.scratch, "photos.idx")
    if not os.path.exists(Env.photos_idx):
        raise AssertionError("millrace pack wrote no photos.idx")
    Env.photos_rec_alone = os.path.join(alone, "photos.rec")
    shutil.copyfile(Env.photos_rec, Env.photos_rec_alone)
    Env.formats_rec = pack_formats(photos)


# The encodings of the formats .rec, in file order: (file name, how PIL writes it).
FORMATS = [
    ("q444.jpg", dict(format="JPEG", quality=90, subsampling=0)),
    ("q422.jpg", dict(format="JPEG", quality=90, subsampling=1)),
    ("progressive.jpg", dict(format="JPEG", quality=85, progressive=True)),
    ("gray.jpg", dict(format="JPEG", quality=90, mode="L")),
    ("cmyk.jpg", dict(format="JPEG", quality=90, mode="CMYK")),
    ("exif6.jpg", dict(format="JPEG", quality=90, orientation=6)),
    ("rgb.png", dict(format="PNG")),
    ("rgba.png", dict(format="PNG", mode="RGBA")),
    ("gray.png", dict(format="PNG", mode="L")),
    ("palette.png", dict(format="PNG", mode="P")),
    ("bmp.bmp", dict(format="BMP")),
]


def pack_formats(photos):
    """A .rec of the photos re-encoded as the other formats and JPEG variants MXNet decodes
    (PIL, from Debian's python3-pil), in the order of FORMATS, cut to odd sizes."""
    from PIL import Image

    folder = os.path.join(Env.scratch, "formats")
    os.makedirs(folder)
    with open(os.path.join(photos, "labels.lst")) as f:
        sources = [line.rstrip("\n").split("\t")[2] for line in f if line.strip()]
    lines = []
    for i, (name, how) in enumerate(FORMATS):
        how = dict(how)
        with Image.open(os.path.join(photos, sources[i % len(sources)])) as im:
            image = im.convert(how.pop("mode", "RGB"))
        image = image.crop((0, 0, image.width - 7 * i % 13, image.height - 5 * i % 11))
        options = {}
        orientation = how.pop("orientation", None)
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        image.save(os.path.join(folder, name), **how, **options)
        lines.append(f"{100 + i}\t{i % 3}\t{name}\n")
    with open(os.path.join(folder, "formats.lst"), "w") as f:
        f.writelines(lines)
    rec = os.path.join(Env.scratch, "formats.rec")
    checked(run([Env.millrace, "pack", "--list", os.path.join(folder, "formats.lst"), "--root",
                 folder, rec]))
    return rec


def load_batches(folder, pads_from_jsonl):
    """[(data, label, pad, ids or None)] of a folder of batch_<k>_*.npy files."""
    batches = []
    if pads_from_jsonl:
        with open(os.path.join(folder, "batches.jsonl")) as f:
            meta = [json.loads(line) for line in f if line.strip()]
    else:
        with open(os.path.join(folder, "batches.json")) as f:
            meta = [{"pad": p, "ids": None} for p in json.load(f)["pads"]]
    for k, m in enumerate(meta):
        data = np.load(os.path.join(folder, "batch_%06d_data.npy" % k))
        label = np.load(os.path.join(folder, "batch_%06d_label.npy" % k))
        batches.append((data, label.reshape(label.shape[0], -1), m["pad"], m["ids"]))
    return batches


def stage_blocks(path):
    """{type: text} of a config's stage entries; the shipped configs write each as a line
    '  - type: NAME' followed by its more indented keys (comments dropped)."""
    blocks = {}
    current = None
    with open(path) as f:
        for line in f:
            stripped = line.split("#", 1)[0].rstrip()
            if stripped.startswith("  - type:"):
                current = stripped.split(":", 1)[1].strip()
                blocks[current] = ""
            elif current is not None and not stripped.startswith("    "):
                current = None if stripped else current
            if current is not None and stripped:
                blocks[current] += stripped + "\n"
    return blocks


def first_difference(a, b):
    """The index tuple of the first element where a and b differ (same shape and dtype)."""
    flat = np.flatnonzero(a.reshape(-1) != b.reshape(-1))
    return np.unravel_index(int(flat[0]), a.shape) if flat.size else None


class Case:
    """One comparison: a .rec (with or without index) and a recipe, both sides."""

    def __init__(self, name, rec, idx, *, resize, crop, dtype, batch, config_overrides=None):
        self.name = name
        self.rec = rec
        self.idx = idx
        self.resize = resize
        self.crop = crop  # (height, width)
        self.dtype = dtype
        self.batch = batch
        # None: configs/mxnet_val_int8.yaml with its source, index and output overridden only.
        self.config_overrides = config_overrides

    # ---- millrace ---------------------------------------------------------------------------

    def millrace_overrides(self, out):
        # An empty index: no index file beside the .rec, so read sequentially.
        index = self.idx or '""'
        sets = [f"recordio.path={self.rec}", f"recordio.index={index}",
                f"npy.dir={out}"]
        if self.batch != 32:
            sets.append(f"batch.size={self.batch}")
        return sets + (self.config_overrides or [])

    def run_millrace(self, out):
        config = os.path.join(Env.source, "configs", "mxnet_val_int8.yaml")
        args = [Env.millrace, "run", config, "--quiet"]
        for s in self.millrace_overrides(out):
            args += ["--set", s]
        result = run(args)
        checked(result)
        return result

    # ---- MXNet ------------------------------------------------------------------------------

    def request(self, out):
        return {"rec": self.rec, "idx": self.idx, "data_shape": [3, self.crop[0], self.crop[1]],
                "resize": self.resize, "dtype": self.dtype, "batch_size": self.batch,
                "round_batch": True, "mean": MEAN if self.dtype == "int8" else None,
                "out": out}


class MxnetCompatTest(unittest.TestCase):
    """Each test: one case, both sides, every batch compared byte for byte."""

    def compare(self, case):
        mx_out = new_dir(case.name + "-mxnet")
        mr_out = new_dir(case.name + "-millrace")
        oracle("iter", case.request(mx_out))
        summary = case.run_millrace(mr_out).stdout
        mx = load_batches(mx_out, pads_from_jsonl=False)
        mr = load_batches(mr_out, pads_from_jsonl=True)
        with open(os.path.join(mx_out, "records.json")) as f:
            records = json.load(f)
        self.assertGreater(len(mx), 0, f"{case.name}: MXNet delivered no batch")
        self.assertEqual(len(mr), len(mx), f"{case.name}: number of batches; millrace's "
                         f"summary:\n{summary[-3000:]}")
        n = len(records)
        for k, ((mx_data, mx_label, mx_pad, _), (data, label, pad, ids)) in enumerate(zip(mx, mr)):
            where = f"{case.name}: batch {k}"
            self.assertEqual(pad, mx_pad, f"{where}: pad (round_batch)")
            # MXNet reads in file order and pads the last batch from the start of the file: the
            # records of batch k are k * batch ... (k + 1) * batch - 1, modulo the record count.
            positions = [(k * case.batch + r) % n for r in range(case.batch)]
            self.assertEqual(ids, [records[p]["id"] for p in positions], f"{where}: ids")
            expected_labels = np.array([records[p]["label"] for p in positions], np.float32)
            np.testing.assert_array_equal(mx_label, expected_labels,
                                          f"{where}: MXNet's labels are not the records' own")
            self.assertEqual(label.tobytes(), mx_label.astype(np.float32).tobytes(),
                             f"{where}: labels: millrace {label.ravel().tolist()}, MXNet "
                             f"{mx_label.ravel().tolist()}")
            self.assertEqual(data.dtype, mx_data.dtype, f"{where}: dtype")
            self.assertEqual(data.shape, mx_data.shape, f"{where}: shape")
            diff = first_difference(data, mx_data)
            if diff is not None:
                row, c, y, x = (int(v) for v in diff)
                pos = positions[row]
                self.fail(f"{where}: bytes differ first at row {row} (sample {k * case.batch + row},"
                          f" record {pos} in file order, id {records[pos]['id']}), channel {c},"
                          f" row {y}, column {x}: millrace {int(data[diff])}, MXNet "
                          f"{int(mx_data[diff])}\n" + self.locate(case, pos))

    # ---- which stage differs -----------------------------------------------------------------

    def millrace_stage(self, case, image_path, stage):
        """millrace's pixels after `stage` (decode, resize or crop) for one image file, HWC: the
        config's own decode and augment entries with the case's overrides of them, fed by a
        files source, followed by uint8 NHWC output (normalize then only copies) in batches of
        one."""
        folder = os.path.dirname(image_path)
        with open(os.path.join(folder, "one.lst"), "w") as f:
            f.write(f"0\t0\t{os.path.basename(image_path)}\n")
        out = new_dir("stage-" + stage)
        blocks = stage_blocks(os.path.join(Env.source, "configs", "mxnet_val_int8.yaml"))
        config = os.path.join(folder, f"{stage}.yaml")
        with open(config, "w") as f:
            f.write("pipeline:\n  threads: 1\nstages:\n"
                    f"  - type: files\n    root: {folder}\n    list: one.lst\n"
                    + blocks["decode"] + blocks["augment"] +
                    "  - type: normalize\n    dtype: uint8\n    layout: NHWC\n"
                    f"  - type: batch\n    size: 1\n  - type: npy\n    dir: {out}\n")
        sets = [s for s in case.millrace_overrides(out) if s.startswith(("decode.", "augment."))]
        if stage in ("decode", "resize"):
            sets.append("augment.crop=none")
        if stage == "decode":
            sets.append("augment.resize=0")
        args = [Env.millrace, "run", config, "--quiet"]
        for s in sets:
            args += ["--set", s]
        result = run(args)
        if result.returncode != 0:
            return None, "millrace could not run this stage alone" + describe(result)
        return np.load(os.path.join(out, "batch_000000_data.npy"))[0], None

    def locate(self, case, pos):
        with open(case.rec, "rb") as f:
            records = list(read_rec.read_records(f.read()))
        offset, payload = records[pos]
        _, _, _, image = read_rec.parse_image(offset, payload)
        folder = new_dir("record")
        image_path = os.path.join(folder, "record.img")
        with open(image_path, "wb") as f:
            f.write(image)
        mx_out = new_dir("stages-mxnet")
        request = case.request(mx_out)
        request["positions"] = [pos]
        oracle("stages", request)
        stages = ["decode"] + (["resize"] if case.resize > 0 else []) + ["crop"]
        for stage in stages:
            expected = np.load(os.path.join(mx_out, f"{pos}_{stage}.npy"))
            got, problem = self.millrace_stage(case, image_path, stage)
            name = {"decode": "decode", "resize": "augment (resize)",
                    "crop": "augment (center crop)"}[stage]
            if problem:
                return f"stage {name}: {problem}"
            if got.shape != expected.shape:
                return (f"first differing stage: {name}: shape millrace {got.shape} (HWC), "
                        f"MXNet {expected.shape}")
            diff = first_difference(got, expected)
            if diff is not None:
                y, x, c = (int(v) for v in diff)
                count = int(np.count_nonzero(got != expected))
                return (f"first differing stage: {name}: channel {c}, row {y}, column {x}: "
                        f"millrace {int(got[diff])}, MXNet {int(expected[diff])} ({count} of "
                        f"{got.size} values differ)")
        return ("decode, resize and crop agree: the difference is in normalize or batch (mean "
                "subtraction, dtype, layout or order)")

    # ---- the cases ---------------------------------------------------------------------------

    def test_validation_recipe_photos_with_index(self):
        # 40 records in batches of 32: the second batch is padded with 24 from the start.
        self.compare(Case("val-photos-idx", Env.photos_rec, Env.photos_idx, resize=256,
                          crop=(224, 224), dtype="int8", batch=32))

    def test_validation_recipe_photos_without_index(self):
        self.compare(Case("val-photos-noidx", Env.photos_rec_alone, None, resize=256,
                          crop=(224, 224), dtype="int8", batch=32))

    def test_validation_recipe_fixture_with_index(self):
        # 112x112 faces resized up to 256, cropped to 224; 8 records in batches of 5: pad 2.
        self.compare(Case("val-adaface-idx", Env.adaface_rec, Env.adaface_idx, resize=256,
                          crop=(224, 224), dtype="int8", batch=5))

    def test_validation_recipe_fixture_without_index(self):
        self.compare(Case("val-adaface-noidx", Env.adaface_rec_alone, None, resize=256,
                          crop=(224, 224), dtype="int8", batch=5))

    def test_center_crop_without_resize(self):
        self.compare(Case("crop-photos", Env.photos_rec, Env.photos_idx, resize=0,
                          crop=(224, 224), dtype="int8", batch=32,
                          config_overrides=["augment.resize=0"]))

    def test_center_crop_without_resize_odd_sizes(self):
        # Odd margins: (112 - 97) / 2 and (112 - 75) / 2 round down on both sides.
        self.compare(Case("crop-adaface", Env.adaface_rec_alone, None, resize=0, crop=(97, 75),
                          dtype="int8", batch=3,
                          config_overrides=["augment.resize=0", "augment.size=[97, 75]"]))

    def test_uint8(self):
        self.compare(Case("uint8-photos", Env.photos_rec, Env.photos_idx, resize=256,
                          crop=(224, 224), dtype="uint8", batch=32,
                          config_overrides=["normalize.dtype=uint8", "normalize.mean=[0, 0, 0]"]))

    def test_uint8_without_resize_fixture(self):
        self.compare(Case("uint8-adaface", Env.adaface_rec, Env.adaface_idx, resize=0,
                          crop=(100, 100), dtype="uint8", batch=4,
                          config_overrides=["augment.resize=0", "augment.size=[100, 100]",
                                            "normalize.dtype=uint8", "normalize.mean=[0, 0, 0]"]))

    def test_formats(self):
        # JPEG 4:4:4, 4:2:2, progressive, grayscale, CMYK (Adobe), EXIF-rotated; PNG RGB, RGBA,
        # gray, palette; BMP. 11 records in batches of 4: pad 1.
        self.compare(Case("formats", Env.formats_rec, Env.formats_rec[:-4] + ".idx", resize=256,
                          crop=(224, 224), dtype="int8", batch=4))

    def test_a_difference_names_its_stage(self):
        # The comparison itself: recipes that are not MXNet's must fail, naming the first
        # differing sample and value and the stage where the pixels part.
        cases = [
            (Case("located-resize", Env.adaface_rec, Env.adaface_idx, resize=256,
                  crop=(224, 224), dtype="int8", batch=5,
                  config_overrides=["augment.interpolation=cubic"]),
             r"first differing stage: augment \(resize\): channel \d, row \d+, column \d+: "
             r"millrace \d+, MXNet \d+"),
            # millrace's own CMYK conversion, not OpenCV's: the 5th record differs by 1 in places.
            (Case("located-decode", Env.formats_rec, None, resize=0, crop=(200, 200),
                  dtype="int8", batch=11, config_overrides=["augment.resize=0",
                                                            "augment.size=[200, 200]",
                                                            "decode.compat=none"]),
             r"first differing stage: decode"),
            (Case("located-normalize", Env.adaface_rec, Env.adaface_idx, resize=256,
                  crop=(224, 224), dtype="int8", batch=5,
                  config_overrides=["normalize.mean.0=120"]),
             r"decode, resize and crop agree: the difference is in normalize or batch"),
        ]
        for case, stage in cases:
            with self.subTest(case=case.name):
                with self.assertRaises(AssertionError) as caught:
                    self.compare(case)
                message = str(caught.exception)
                if os.environ.get("MILLRACE_SHOW_LOCATED"):
                    print(message, file=sys.stderr)
                self.assertRegex(message, r"batch \d+: bytes differ first at row \d+ \(sample "
                                 r"\d+, record \d+ in file order, id \d+\), channel \d, row \d+, "
                                 r"column \d+: millrace -?\d+, MXNet -?\d+")
                self.assertRegex(message, stage)

    def test_image_smaller_than_the_crop(self):
        # MXNet scales a 112x112 image up to the crop before cropping it.
        self.compare(Case("small-adaface", Env.adaface_rec, Env.adaface_idx, resize=0,
                          crop=(224, 160), dtype="int8", batch=5,
                          config_overrides=["augment.resize=0", "augment.size=[224, 160]"]))


def main():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--millrace", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--venv")
    known, rest = parser.parse_known_args(sys.argv[1:])
    Env.millrace = os.path.abspath(known.millrace)
    Env.source = os.path.abspath(known.source)
    Env.venv = os.path.abspath(known.venv or os.path.join(Env.source, ".venv-mxnet"))
    python = os.path.join(Env.venv, "bin", "python")
    if not os.access(python, os.X_OK):
        print(f"FAIL: the MXNet oracle's environment {Env.venv} is missing (no {python}).\n"
              "This test compares millrace with MXNet 1.9.1's ImageRecordIter and cannot pass "
              "without it. Make it with `scripts/setup` (scripts/setup.d/20-mxnet.sh, from "
              "scripts/requirements/mxnet.txt), or name another with --venv.", file=sys.stderr)
        return 1
    probe = subprocess.run([python, "-c", "import mxnet, numpy; print(mxnet.__version__)"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "1.9.1":
        print(f"FAIL: {python} does not import MXNet 1.9.1 (got {probe.stdout.strip()!r}):\n"
              f"{probe.stderr[-2000:]}\nRerun `scripts/setup` to remake {Env.venv}.",
              file=sys.stderr)
        return 1
    Env.scratch = tempfile.mkdtemp(prefix="millrace-mxnet-")
    try:
        prepare_data()
        program = unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2,
                                exit=False)
        return 0 if program.result.wasSuccessful() else 1
    finally:
        shutil.rmtree(Env.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
