#!/usr/bin/env python3
"""Independent check of the int8 batches a millrace run wrote with an npy sink.

Recomputes every sample from its JPEG with plain OpenCV and numpy, following MXNet's
ImageRecordIter validation recipe and the int8 contract it defined (dtype='int8', mean only), and
demands exact equality:

  decode    cv2.imdecode, BGR -> RGB
  resize    shorter side -> R, longer side -> R * long // short, cv2.INTER_LINEAR
  crop      centred window, offsets (size - crop) // 2
  int8      m_c = round_half_away_from_zero(mean_c); clip(pixel - m_c, -128, 127)

OUTDIR/batches.jsonl holds one JSON object per batch: "index", "ids", "paths", "pad", "layout",
"dtype"; batch k's arrays are OUTDIR/batch_{k:06d}_data.npy (int8, NCHW or NHWC) and
OUTDIR/batch_{k:06d}_label.npy (float32, (N,) or (N, label_width)). The last `pad` rows of a batch
are MXNet round_batch padding and must repeat the first rows of the epoch (batch 0, rows 0, 1, ...).
When ROOT/labels.lst exists, every label is also compared with the list.

Exit status: 0 when everything matches ("checked N samples in B batches"), 1 at the first mismatch
or malformed input, naming the batch, the row, the path and the largest absolute difference.
"""

import argparse
import json
import math
import os
import sys


def _reexec_with_system_python():
    """Debian's python3-numpy and python3-opencv live in the system interpreter; a pyenv or venv
    python3 earlier on PATH does not see them."""
    system = "/usr/bin/python3"
    if os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system) \
            and not os.environ.get("MILLRACE_NO_REEXEC"):
        os.environ["MILLRACE_NO_REEXEC"] = "1"
        os.execv(system, [system] + sys.argv)


try:
    import cv2
    import numpy as np
except ImportError:
    _reexec_with_system_python()
    raise


class CheckFailed(Exception):
    pass


def round_half_away_from_zero(x):
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def shorter_side_size(width, height, shorter):
    """MXNet image_aug_default.cc: integer arithmetic, a square counts as landscape."""
    if height > width:
        return shorter, shorter * height // width
    return shorter * width // height, shorter


def expected_sample(path, resize, crop_h, crop_w, means, layout):
    raw = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CheckFailed(f"cannot decode {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if resize > 0:
        w, h = shorter_side_size(rgb.shape[1], rgb.shape[0], resize)
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    height, width = rgb.shape[:2]
    if crop_h > height or crop_w > width:
        raise CheckFailed(f"{path}: crop {crop_w}x{crop_h} does not fit {width}x{height}")
    y0 = (height - crop_h) // 2
    x0 = (width - crop_w) // 2
    window = rgb[y0:y0 + crop_h, x0:x0 + crop_w].astype(np.int16)
    out = np.clip(window - np.array(means, dtype=np.int16), -128, 127).astype(np.int8)
    return out.transpose(2, 0, 1) if layout == "NCHW" else out


def resolve(path, root):
    if os.path.isfile(path):
        return path
    under_root = os.path.join(root, path)
    if os.path.isfile(under_root):
        return under_root
    raise CheckFailed(f"image not found as given or under {root}: {path}")


def read_list_labels(root):
    """labels.lst (im2rec format: index, labels..., relative path) as {real path: labels}."""
    list_path = os.path.join(root, "labels.lst")
    if not os.path.isfile(list_path):
        return None
    labels = {}
    with open(list_path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                continue
            labels[os.path.realpath(os.path.join(root, fields[-1]))] = \
                np.array([float(v) for v in fields[1:-1]], dtype=np.float32)
    return labels


def load_npy(path, what):
    if not os.path.isfile(path):
        raise CheckFailed(f"missing {what} file {path}")
    return np.load(path, allow_pickle=False)


def check(args):
    crop_h, crop_w = (args.crop[0], args.crop[0]) if len(args.crop) == 1 else args.crop
    means = args.mean * 3 if len(args.mean) == 1 else args.mean
    if len(means) != 3:
        raise CheckFailed("--mean takes 1 or 3 values")
    means = [round_half_away_from_zero(m) for m in means]
    list_labels = read_list_labels(args.root)

    jsonl = os.path.join(args.out, "batches.jsonl")
    if not os.path.isfile(jsonl):
        raise CheckFailed(f"missing {jsonl}")
    with open(jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise CheckFailed(f"{jsonl} lists no batches")

    first_data = first_labels = None
    samples = 0
    for record in records:
        k = record["index"]
        layout = record.get("layout", args.layout)
        if layout != args.layout:
            raise CheckFailed(f"batch {k}: layout {layout}, expected {args.layout}")
        if record.get("dtype", "int8") != "int8":
            raise CheckFailed(f"batch {k}: dtype {record['dtype']}, expected int8")
        data = load_npy(os.path.join(args.out, f"batch_{k:06d}_data.npy"), "data")
        labels = load_npy(os.path.join(args.out, f"batch_{k:06d}_label.npy"), "label")
        rows = data.shape[0] if data.ndim == 4 else -1
        sample_shape = (3, crop_h, crop_w) if layout == "NCHW" else (crop_h, crop_w, 3)
        if data.dtype != np.int8 or data.ndim != 4 or data.shape[1:] != sample_shape:
            raise CheckFailed(f"batch {k}: data is {data.dtype} {data.shape}, expected int8 "
                              f"(N, {', '.join(map(str, sample_shape))})")
        if labels.dtype != np.float32 or labels.ndim not in (1, 2) or labels.shape[0] != rows:
            raise CheckFailed(f"batch {k}: labels are {labels.dtype} {labels.shape}, expected "
                              f"float32 ({rows},) or ({rows}, label_width)")
        labels = labels.reshape(rows, -1)
        pad = int(record.get("pad", 0))
        paths = record["paths"]
        real = rows - pad
        if pad < 0 or real < 0 or len(paths) not in (rows, real):
            raise CheckFailed(f"batch {k}: {rows} rows, pad {pad} and {len(paths)} paths "
                              "do not agree")
        if "ids" in record and len(record["ids"]) not in (rows, real):
            raise CheckFailed(f"batch {k}: {rows} rows, pad {pad} and {len(record['ids'])} ids "
                              "do not agree")

        for i in range(real):
            path = resolve(paths[i], args.root)
            want = expected_sample(path, args.resize, crop_h, crop_w, means, layout)
            got = data[i]
            if not np.array_equal(got, want):
                diff = np.abs(got.astype(np.int16) - want.astype(np.int16)).max()
                raise CheckFailed(f"mismatch: batch {k}, position {i}, path {paths[i]}, "
                                  f"max abs difference {diff}")
            if list_labels is not None:
                listed = list_labels.get(os.path.realpath(path))
                if listed is None:
                    raise CheckFailed(f"batch {k}, position {i}: {paths[i]} is not in labels.lst")
                if listed.shape != labels[i].shape or not np.array_equal(listed, labels[i]):
                    raise CheckFailed(f"label mismatch: batch {k}, position {i}, path {paths[i]}, "
                                      f"got {labels[i].tolist()}, labels.lst has "
                                      f"{listed.tolist()}")
            samples += 1

        if first_data is None:
            first_data, first_labels = data, labels
        for j in range(pad):
            row = real + j
            if j >= first_data.shape[0]:
                raise CheckFailed(f"batch {k}: pad row {row} has no counterpart in batch 0")
            if not np.array_equal(data[row], first_data[j]):
                diff = np.abs(data[row].astype(np.int16) - first_data[j].astype(np.int16)).max()
                raise CheckFailed(f"mismatch: batch {k}, position {row} (pad row {j}, should "
                                  f"repeat batch 0 position {j}), max abs difference {diff}")
            if not np.array_equal(labels[row], first_labels[j]):
                raise CheckFailed(f"label mismatch: batch {k}, position {row} (pad row {j}, "
                                  f"should repeat batch 0 position {j})")
    return samples, len(records)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder with batches.jsonl and the .npy files")
    parser.add_argument("--root", required=True, help="dataset root the paths are relative to")
    parser.add_argument("--resize", type=int, default=256,
                        help="shorter side after resize; 0 = no resize")
    parser.add_argument("--crop", type=int, nargs="+", default=[224],
                        help="centre crop size: S, or H W")
    parser.add_argument("--mean", type=float, nargs="+", default=[123.68, 116.779, 103.939],
                        help="per-channel mean (RGB), rounded half away from zero")
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    args = parser.parse_args()
    if len(args.crop) not in (1, 2):
        parser.error("--crop takes 1 or 2 values")
    try:
        samples, batches = check(args)
    except CheckFailed as e:
        print(f"check_npy: {e}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as e:
        print(f"check_npy: malformed input: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"checked {samples} samples in {batches} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
