#!/usr/bin/env python3
"""The limit: libjpeg-turbo (TurboJPEG) decoding the same files with nothing else, on the same
threads. Every loader here decodes each image's JPEG, most of them whole, so this rate bounds what
whole-image decoding allows on these cores; the fraction of it a loader reaches says how much of
its time goes to everything but the codec.

The first N files of the list are read into memory first (not timed: a loader's file reads come
from the page cache anyway). Then `--threads` threads decode them `--epochs` times, sharing one
counter for the next image, each with its own tjhandle: tjDecompress2 to packed RGB at full size,
default flags (the accurate integer inverse DCT, fancy upsampling; millrace's `decode` defaults).
The calls go through ctypes, which lets go of the GIL for each call, so the threads decode in
parallel; Python's own cost per image (a few microseconds) is counted against the limit. The
rate is counted the way the loaders' are: the first `--batch` images decoded are not timed.
"""

import ctypes
import ctypes.util
import itertools
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

TJPF_RGB = 0


def load_turbojpeg():
    for name in ("libturbojpeg.so.0", ctypes.util.find_library("turbojpeg")):
        if name:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
    else:
        peerlib.fail("turbojpeg_limit: libturbojpeg.so.0 not found (Debian: libturbojpeg0)")
    lib.tjInitDecompress.restype = ctypes.c_void_p
    lib.tjDestroy.argtypes = [ctypes.c_void_p]
    lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong] + [
        ctypes.POINTER(ctypes.c_int)] * 4
    lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                  ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_int]
    lib.tjGetErrorStr2.restype = ctypes.c_char_p
    lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    return lib


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    args = p.parse_args()
    peerlib.check(p, args)
    lib = load_turbojpeg()
    items = peerlib.read_list(args.root, args.images)
    blobs = []
    for path, _, _ in items:
        with open(path, "rb") as f:
            blobs.append(f.read())
    total = len(blobs) * args.epochs
    counter = itertools.count()
    stamps = []  # (perf_counter at the end of each decode); appends are atomic under the GIL
    failures = []
    start = threading.Barrier(args.threads + 1)

    def worker():
        handle = lib.tjInitDecompress()
        w, h, sub, cs = (ctypes.c_int() for _ in range(4))
        buffer = ctypes.create_string_buffer(1)
        start.wait()
        while True:
            n = next(counter)
            if n >= total:
                break
            blob = blobs[n % len(blobs)]
            if lib.tjDecompressHeader3(handle, blob, len(blob), ctypes.byref(w), ctypes.byref(h),
                                       ctypes.byref(sub), ctypes.byref(cs)) != 0:
                failures.append((n, lib.tjGetErrorStr2(handle).decode()))
                continue
            size = w.value * h.value * 3
            if len(buffer) < size:
                buffer = ctypes.create_string_buffer(size)
            if lib.tjDecompress2(handle, blob, len(blob), buffer, w.value, 0, h.value, TJPF_RGB,
                                 0) != 0:
                failures.append((n, lib.tjGetErrorStr2(handle).decode()))
                continue
            stamps.append(time.perf_counter())
        lib.tjDestroy(handle)

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    if failures:
        n, message = failures[0]
        print(f"turbojpeg_limit: {len(failures)} decodes failed, the first "
              f"{items[n % len(items)][0]}: {message}", file=sys.stderr)
    # The same steady-state rule as the loaders: the first batch's worth is not timed.
    timer = peerlib.Timer.from_stamps(stamps, args.batch)
    peerlib.report(args, timer.result(
        "limit", args, "packed RGB at full size, discarded (no crop, resize or batch)",
        settings={"threads": args.threads}, failed_decodes=len(failures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
