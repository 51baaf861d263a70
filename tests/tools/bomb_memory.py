#!/usr/bin/env python3
"""Measures what decompression bombs cost the millrace CLI: peak resident memory per input.

Each case is one PNG of deflated zeros declaring a size (a few hundred KB on disk for hundreds of
MB of pixels), a flat grey JPEG, or a JPEG whose frame header was patched to declare a size, run
alone through files -> decode -> augment (resize 256, crop 224) -> normalize -> batch -> npy with
on_error: skip, under decode's default max_pixels unless the case sets one. Peak RSS is /usr/bin/time's
maximum resident set size of the millrace process. Needs Debian's python3-numpy, python3-opencv.

Usage: /usr/bin/python3 tests/tools/bomb_memory.py --millrace build/millrace
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import cv2
import numpy as np


def png_of_zeros(side):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    parts = [compressor.compress(row) for _ in range(side)]
    raw = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def jpeg_declaring(side):
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    pos = 2
    while data[pos + 1] != 0xC0:
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    data[pos + 5:pos + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def jpeg_of_grey(side):
    ok, buf = cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return buf.tobytes()


CASES = [  # (name, maker, side, max_pixels or None for the default)
    ("png 2000x2000", png_of_zeros, 2000, None),
    ("png 6000x6000", png_of_zeros, 6000, None),
    ("png 12000x12000", png_of_zeros, 12000, None),
    ("png 12000x12000", png_of_zeros, 12000, 50000000),
    ("jpeg 12000x12000", jpeg_of_grey, 12000, None),
    ("png 20000x20000", png_of_zeros, 20000, None),
    ("jpeg header 65000x65000", jpeg_declaring, 65000, None),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--millrace", required=True)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="millrace-bomb-")
    results = []
    try:
        for name, maker, side, max_pixels in CASES:
            root = os.path.join(work, "root")
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            data = maker(side)
            with open(os.path.join(root, "bomb.jpg"), "wb") as f:
                f.write(data)
            with open(os.path.join(root, "l.lst"), "w") as f:
                f.write("0\t0\tbomb.jpg\n")
            decode = "  - type: decode\n    on_error: skip\n"
            if max_pixels:
                decode += f"    max_pixels: {max_pixels}\n"
            config = os.path.join(work, "bomb.yaml")
            with open(config, "w") as f:
                f.write(f"stages:\n  - type: files\n    root: {root}\n    list: l.lst\n{decode}"
                        "  - type: augment\n    resize: 256\n    size: 224\n"
                        "  - type: normalize\n    mean: [124, 117, 104]\n"
                        "  - type: batch\n    size: 1\n"
                        f"  - type: npy\n    dir: {os.path.join(work, 'npy')}\n")
            summary = os.path.join(work, "summary.json")
            run = subprocess.run(["/usr/bin/time", "-f", "%M", args.millrace, "run", config,
                                  "--quiet", "--json", summary],
                                 capture_output=True, text=True, timeout=600)
            peak_kb = int(run.stderr.strip().splitlines()[-1])
            with open(summary) as f:
                skipped = json.load(f)["skipped"]
            outcome = ("skipped: " + skipped[0]["error"]) if skipped else "delivered"
            row = {"case": name, "file_bytes": len(data), "declared_pixels": side * side,
                   "max_pixels": max_pixels or 178956970, "exit": run.returncode,
                   "outcome": outcome, "peak_rss_mb": round(peak_kb / 1024)}
            results.append(row)
            print(f"{name:26s} {len(data):>9d} B  max_pixels {row['max_pixels']:>10d}  "
                  f"peak RSS {row['peak_rss_mb']:>5d} MB  exit {run.returncode}  {outcome}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
