#!/usr/bin/env python3
"""Self-test of check_npy.py: it must accept a correct output folder and reject damaged ones.

A small dataset is written (solid colours, coordinate ramps whose crops are known in closed form,
and JPEGs that need a real resize), the batches a correct run would write are built here, and the
checker is run on that folder and on copies with one thing wrong each. Exit status 0 when every
case behaves, 1 otherwise.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


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

CHECKER = Path(__file__).resolve().parent / "check_npy.py"
MEAN_INT = np.array([124, 117, 104], dtype=np.int16)  # 123.68, 116.779, 103.939 rounded
BATCH = 4
CROP = 224
SAMPLE_BYTES = 3 * CROP * CROP


def clip8(a):
    return np.clip(a, -128, 127).astype(np.int8)


def ramp(width, height, formula):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(formula(x, y), axis=-1).astype(np.uint8)


def textured(width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(x / 7.0 + seed), 128 + 100 * np.cos(y / 5.0),
                     128 + 60 * np.sin((x + y) / 11.0)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_image(path, rgb, quality=None):
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params)


def reference_resized(path, size, x0, y0):
    """Decode, resize to the hand-computed `size` (w, h), crop at (x0, y0), subtract, saturate."""
    rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    window = resized[y0:y0 + CROP, x0:x0 + CROP].astype(np.int16)
    return clip8(window - MEAN_INT)


def make_dataset(root):
    """Returns [(file name, expected HWC int8 sample)] in epoch order."""
    root.mkdir(parents=True)
    samples = []

    # Solid colours survive any resize unchanged: (255, 116, 0) - (124, 117, 104).
    write_image(root / "solid.png", np.full((260, 300, 3), (255, 116, 0), np.uint8))
    samples.append(("solid.png", np.broadcast_to(np.array([127, -1, -104], np.int8),
                                                 (CROP, CROP, 3))))

    # 256x256 needs no resize; the crop starts at (16, 16).
    write_image(root / "grid.png", ramp(256, 256, lambda x, y: (x, y, (x + y) % 256)))
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    samples.append(("grid.png", np.stack([clip8(xx + 16 - 124), clip8(yy + 16 - 117),
                                          clip8((xx + yy + 32) % 256 - 104)], axis=-1)))

    # 300x257: shorter 257 -> 256, longer 256 * 300 // 257 = 298; crop at ((298-224)//2, 16).
    write_image(root / "wide.jpg", textured(300, 257, 1), quality=90)
    samples.append(("wide.jpg", reference_resized(root / "wide.jpg", (298, 256), 37, 16)))

    # Portrait 256x300: 256 * 300 // 256 = 300, no resize; crop at (16, (300-224)//2 = 38).
    write_image(root / "tall.png", ramp(256, 300, lambda x, y: (x, y % 256, 255 - x)))
    samples.append(("tall.png", np.stack([clip8(xx + 16 - 124), clip8((yy + 38) % 256 - 117),
                                          clip8(255 - (xx + 16) - 104)], axis=-1)))

    # Saturation at the top: (0, 250, 232) - (124, 117, 104) = (-124, 133 -> 127, 128 -> 127).
    write_image(root / "solid2.png", np.full((400, 250, 3), (0, 250, 232), np.uint8))
    samples.append(("solid2.png", np.broadcast_to(np.array([-124, 127, 127], np.int8),
                                                  (CROP, CROP, 3))))

    # Portrait 257x301: 256 x (256 * 301 // 257 = 299); crop at (16, (299-224)//2 = 37).
    write_image(root / "portrait.jpg", textured(257, 301, 2), quality=80)
    samples.append(("portrait.jpg", reference_resized(root / "portrait.jpg", (256, 299), 16, 37)))

    with open(root / "labels.lst", "w") as f:
        for i, (name, _) in enumerate(samples):
            f.write(f"{i}\t{float(i):f}\t{name}\n")
    return samples


def write_output(out, work, root, samples, layout="NCHW"):
    """Batches of 4 with MXNet round_batch padding, paths given in every accepted form."""
    out.mkdir(parents=True)
    names = [name for name, _ in samples]
    paths = [str(root / names[0])] + names[1:4] + [os.path.relpath(root / names[4], work)] + \
        names[5:]
    order = list(range(len(samples)))
    k = 0
    with open(out / "batches.jsonl", "w") as jsonl:
        for start in range(0, len(order), BATCH):
            rows = order[start:start + BATCH]
            pad = BATCH - len(rows)
            rows = rows + order[:pad]
            data = np.stack([samples[i][1] for i in rows])
            if layout == "NCHW":
                data = data.transpose(0, 3, 1, 2)
            np.save(out / f"batch_{k:06d}_data.npy", np.ascontiguousarray(data))
            np.save(out / f"batch_{k:06d}_label.npy", np.array(rows, dtype=np.float32))
            jsonl.write(json.dumps({"index": k, "ids": rows, "paths": [paths[i] for i in rows],
                                    "pad": pad, "layout": layout, "dtype": "int8"}) + "\n")
            k += 1


def run_checker(out, root, work, layout="NCHW", mean=("123.68", "116.779", "103.939")):
    cmd = [sys.executable, str(CHECKER), "--out", str(out), "--root", str(root), "--resize", "256",
           "--crop", str(CROP), "--mean", *mean, "--layout", layout]
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def corrupt_byte(npy, row, offset):
    """Adds 1 to one byte of the raw file, inside row `row` of a batch of 4 int8 samples."""
    raw = bytearray(npy.read_bytes())
    header = len(raw) - BATCH * SAMPLE_BYTES
    at = header + row * SAMPLE_BYTES + offset
    raw[at] = (raw[at] + 1) % 256
    npy.write_bytes(bytes(raw))


def main():
    failures = []

    def expect(name, condition, output):
        print(("ok   " if condition else "FAIL ") + name)
        if not condition:
            failures.append(name)
            print("     " + output.strip().replace("\n", "\n     "))

    with tempfile.TemporaryDirectory(prefix="check_npy_selftest_") as tmp:
        work = Path(tmp)
        root = work / "dataset"
        samples = make_dataset(root)
        good = work / "good"
        write_output(good, work, root, samples)

        rc, text = run_checker(good, root, work)
        expect("correct NCHW output passes", rc == 0 and "checked 6 samples in 2 batches" in text,
               text)

        nhwc = work / "nhwc"
        write_output(nhwc, work, root, samples, layout="NHWC")
        rc, text = run_checker(nhwc, root, work, layout="NHWC")
        expect("correct NHWC output passes", rc == 0, text)
        rc, text = run_checker(nhwc, root, work, layout="NCHW")
        expect("layout other than asked fails", rc == 1, text)

        rc, text = run_checker(good, root, work, mean=("123.5", "116.5", "103.5"))
        expect("means round half away from zero (116.5 -> 117)", rc == 0, text)
        rc, text = run_checker(good, root, work, mean=("123.4", "116.4", "103.4"))
        expect("other means fail", rc == 1 and "max abs difference 1" in text, text)

        def damaged(name, damage):
            target = work / name
            shutil.copytree(good, target)
            damage(target)
            return run_checker(target, root, work)

        rc, text = damaged("byte_real", lambda d: corrupt_byte(d / "batch_000001_data.npy", 1,
                                                                12345))
        expect("one corrupted byte in a sample fails and names it",
               rc == 1 and "batch 1, position 1, path portrait.jpg" in text
               and "max abs difference 1" in text, text)

        rc, text = damaged("byte_pad", lambda d: corrupt_byte(d / "batch_000001_data.npy", 3,
                                                               SAMPLE_BYTES - 1))
        expect("one corrupted byte in a pad row fails",
               rc == 1 and "batch 1, position 3 (pad row 1" in text, text)

        def wrong_pad(d):
            # Pad rows taken from the wrong epoch positions: rows 1, 0 instead of 0, 1.
            data = np.load(d / "batch_000001_data.npy")
            data[2], data[3] = data[3].copy(), data[2].copy()
            np.save(d / "batch_000001_data.npy", data)

        rc, text = damaged("pad_order", wrong_pad)
        expect("pad rows out of order fail", rc == 1 and "pad row 0" in text, text)

        def wrong_label(d):
            labels = np.load(d / "batch_000000_label.npy")
            labels[2] = 7
            np.save(d / "batch_000000_label.npy", labels)

        rc, text = damaged("label", wrong_label)
        expect("a wrong label fails", rc == 1 and "label mismatch: batch 0, position 2" in text,
               text)

        def uint8_data(d):
            data = np.load(d / "batch_000000_data.npy")
            np.save(d / "batch_000000_data.npy", data.view(np.uint8))

        rc, text = damaged("dtype", uint8_data)
        expect("uint8 data fails", rc == 1 and "int8" in text, text)

        rc, text = damaged("missing", lambda d: (d / "batch_000001_label.npy").unlink())
        expect("a missing label file fails", rc == 1 and "batch_000001_label.npy" in text, text)

        def lost_image(d):
            lines = (d / "batches.jsonl").read_text().splitlines()
            record = json.loads(lines[0])
            record["paths"][1] = "nowhere.png"
            lines[0] = json.dumps(record)
            (d / "batches.jsonl").write_text("\n".join(lines) + "\n")

        rc, text = damaged("lost", lost_image)
        expect("an unknown path fails", rc == 1 and "nowhere.png" in text, text)

        def truncated_jsonl(d):
            (d / "batches.jsonl").write_text('{"index": 0}\n')

        rc, text = damaged("malformed", truncated_jsonl)
        expect("a record without paths fails cleanly",
               rc == 1 and "Traceback" not in text and "malformed" in text, text)

    print(f"{len(failures)} failed" if failures else "all check_npy self-tests passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
