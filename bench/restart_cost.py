#!/usr/bin/env python3
"""What a restart grid costs the decoder, apart from the window it allows.

libjpeg-turbo's Huffman decoder (jdhuff.c, `decode_mcu`) takes its slower path for every MCU of a
scan that has a restart interval, and each RSTn marker ends a segment early. Both costs are in every
file `millrace prepare` writes. This separates them: each JPEG of --root is rewritten losslessly by
`jpegtran -optimize` three ways,

  optimized       no restart interval (the baseline: the same coefficients, optimized tables)
  slow path       a restart interval of 65535 MCUs, longer than any image under 65535 MCUs
                  (4:4:4 up to about 2048 x 2048): the slower Huffman path, no marker
  markers         a marker every --every MCUs: the slower path and the segments' ends

and, with --prepared DIR, the files of a `millrace prepare` copy of the same folder. Each variant
is decoded whole from memory by TurboJPEG (tjDecompress2 to RGB, the accurate DCT, millrace's
default) on the calling thread, --passes times, the variants interleaved; the median of the passes'
microseconds per image is printed beside its ratio to `optimized`. Run it under `taskset -c 1` for
one core. jpegtran comes with Debian's libjpeg-turbo-progs (`scripts/setup --peers`).
"""

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from turbojpeg_limit import TJPF_RGB, load_turbojpeg  # noqa: E402


def jpegs(folder):
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith((".jpg", ".jpeg")) and os.path.isfile(os.path.join(folder, f)))


def rewrite(src, names, out, extra):
    os.makedirs(out, exist_ok=True)
    for name in names:
        with open(os.path.join(out, name), "wb") as f:
            subprocess.run(["jpegtran", "-optimize", "-copy", "none", *extra,
                            os.path.join(src, name)], stdout=f, check=True)
    return out


def load(lib, handle, folder, names):
    items = []
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
        except OSError as e:
            sys.exit(f"restart_cost: {e} (--prepared must hold the same file names as --root)")
        w, h, sub, cs = (ctypes.c_int() for _ in range(4))
        if lib.tjDecompressHeader3(handle, data, len(data), ctypes.byref(w), ctypes.byref(h),
                                   ctypes.byref(sub), ctypes.byref(cs)) != 0:
            sys.exit(f"restart_cost: {folder}/{name}: {lib.tjGetErrorStr2(handle).decode()}")
        items.append((data, w.value, h.value, ctypes.create_string_buffer(w.value * h.value * 3)))
    return items


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="a folder of JPEGs")
    p.add_argument("--prepared", help="the `millrace prepare` copy of --root (optional)")
    p.add_argument("--every", type=int, default=4, help="MCUs between markers (default 4)")
    p.add_argument("--passes", type=int, default=5)
    args = p.parse_args()
    if shutil.which("jpegtran") is None:
        sys.exit("restart_cost: jpegtran not found (Debian: libjpeg-turbo-progs)")
    names = jpegs(args.root)
    if not names:
        sys.exit(f"restart_cost: no JPEG in {args.root}")
    lib = load_turbojpeg()
    handle = lib.tjInitDecompress()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            "optimized": rewrite(args.root, names, os.path.join(tmp, "a"), []),
            "slow path": rewrite(args.root, names, os.path.join(tmp, "b"), ["-restart", "65535B"]),
            f"markers every {args.every} MCUs": rewrite(args.root, names, os.path.join(tmp, "c"),
                                                       ["-restart", f"{args.every}B"]),
        }
        if args.prepared:
            folders["millrace prepare"] = args.prepared
        sets = {label: load(lib, handle, folder, names) for label, folder in folders.items()}
    times = {label: [] for label in sets}
    for _ in range(args.passes):
        for label, items in sets.items():
            start = time.perf_counter()
            for data, w, h, buf in items:
                if lib.tjDecompress2(handle, data, len(data), buf, w, 0, h, TJPF_RGB, 0) != 0:
                    sys.exit(f"restart_cost: {label}: {lib.tjGetErrorStr2(handle).decode()}")
            times[label].append((time.perf_counter() - start) / len(items) * 1e6)
    lib.tjDestroy(handle)
    base = statistics.median(times["optimized"])
    print(f"{len(names)} JPEGs from {args.root}, {args.passes} passes, whole-image decode")
    print(f"{'variant':28} {'us/image':>9} {'ratio':>7}  passes")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:28} {median:9.1f} {median / base:6.3f}x  "
              + ", ".join(f"{v:.0f}" for v in values))


if __name__ == "__main__":
    main()
