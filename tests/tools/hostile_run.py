#!/usr/bin/env python3
"""Runs the millrace CLI over a hostile corpus and checks what became of every input.

Every file of the given folders (by default the decoder's bad-input corpus and the kept fuzz
inputs of the image targets) is listed in one im2rec .lst, plus one file that does not exist, and
read by a files -> decode -> augment -> normalize -> batch -> npy pipeline with on_error: skip.
The run passes when it exits 0 within the time limit and every listed input is accounted for
exactly once: delivered in a batch, or named in the run's skipped list with a reason. As a
reference, each file is also given to OpenCV's cv2.imdecode, and the inputs the two decoders
disagree on are listed (millrace refuses truncated JPEGs that OpenCV patches over, by its
`strict` default).

Prints a summary (and with --json writes it). Exit status 0 when the run passed, 1 otherwise.
Needs Debian's python3-numpy and python3-opencv.

Usage: /usr/bin/python3 tests/tools/hostile_run.py --millrace build/millrace [FOLDER...]
"""

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FOLDERS = [os.path.join(SOURCE, "tests", "data", d)
                   for d in ("bad", os.path.join("fuzz", "jpeg"), os.path.join("fuzz", "image"))]
MISSING = "missing_file.jpg"

# The first words of a skip reason that name its kind, for the summary's counts.
KINDS = [
    ("above max_pixels", r"above max_pixels"),
    ("above max_aspect_ratio", r"above max_aspect_ratio|more than max_aspect_ratio"),
    ("not an image", r"not a JPEG/PNG/WebP/BMP/TIFF image"),
    ("truncated or corrupt JPEG", r"truncated or corrupt JPEG|corrupt JPEG|truncated JPEG"),
    ("corrupt or truncated PNG/WebP/BMP/TIFF", r"(corrupt|truncated) (PNG|WebP|BMP|TIFF)"),
    ("cannot open", r"cannot open|no such file"),
]


def kind_of(error):
    for name, pattern in KINDS:
        if re.search(pattern, error):
            return name
    return "other: " + error[:60]


def opencv_decodes(path):
    data = np.fromfile(path, np.uint8)
    if data.size == 0:
        return False
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        return False
    return image is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--millrace", required=True, help="the millrace command-line binary")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a hang")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("folders", nargs="*", default=DEFAULT_FOLDERS)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="millrace-hostile-")
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        listed = []  # (name in root, source path)
        for folder in args.folders:
            for name in sorted(os.listdir(folder)):
                source = os.path.join(folder, name)
                if not os.path.isfile(source) or name.endswith((".md", ".py")):
                    continue
                unique = f"{len(listed):05d}_{os.path.basename(folder.rstrip('/'))}_{name}"
                shutil.copyfile(source, os.path.join(root, unique))
                listed.append((unique, source))
        listed.append((MISSING, None))
        with open(os.path.join(root, "inputs.lst"), "w") as f:
            for index, (name, _) in enumerate(listed):
                f.write(f"{index}\t0\t{name}\n")
        out = os.path.join(work, "npy")
        config = os.path.join(work, "hostile.yaml")
        with open(config, "w") as f:
            f.write(f"""pipeline:
  name: hostile
  threads: 2
stages:
  - type: files
    root: {root}
    list: inputs.lst
  - type: decode
    on_error: skip
  - type: augment
    resize: 64
    size: 32
  - type: normalize
    mean: [124, 117, 104]
  - type: batch
    size: 8
    last: partial
  - type: npy
    dir: {out}
""")
        summary_path = os.path.join(work, "summary.json")
        start = time.monotonic()
        hung = False
        try:
            run = subprocess.run([args.millrace, "run", config, "--quiet", "--json", summary_path],
                                 capture_output=True, text=True, timeout=args.timeout)
            code = run.returncode
        except subprocess.TimeoutExpired:
            hung, code = True, None
        seconds = time.monotonic() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        problems = []
        if hung:
            problems.append(f"no exit within {args.timeout} s")
        elif code != 0:
            problems.append(f"exit status {code}: {run.stderr.strip()[-2000:]}")
        delivered = collections.Counter()
        skipped = collections.Counter()
        reasons = {}
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
            for entry in summary.get("skipped", []):
                name = os.path.basename(entry["path"])
                skipped[name] += 1
                reasons[name] = entry.get("error", "")
                if not reasons[name]:
                    problems.append(f"{name}: skipped without a reason")
            index = os.path.join(out, "batches.jsonl")
            if os.path.exists(index):
                with open(index) as f:
                    for line in f:
                        record = json.loads(line)
                        for path in record["paths"][:len(record["ids"]) - record["pad"]]:
                            delivered[os.path.basename(path)] += 1
        elif not hung:
            problems.append("no run summary written")

        rows = []
        for name, source in listed:
            times = delivered[name] + skipped[name]
            if times != 1:
                problems.append(f"{name}: delivered {delivered[name]}, skipped {skipped[name]}")
            reference = opencv_decodes(source) if source else False
            outcome = "delivered" if delivered[name] else "skipped" if skipped[name] else "lost"
            rows.append({"input": name, "source": os.path.relpath(source, SOURCE) if source
                         else None, "outcome": outcome, "reason": reasons.get(name, ""),
                         "opencv_decodes": reference})
        kinds = collections.Counter(kind_of(r["reason"]) for r in rows if r["outcome"] == "skipped")
        disagree = [r for r in rows if r["source"] and
                    (r["outcome"] == "delivered") != r["opencv_decodes"]]
        result = {
            "inputs": len(listed),
            "bytes": sum(os.path.getsize(s) for _, s in listed if s),
            "delivered": sum(1 for r in rows if r["outcome"] == "delivered"),
            "skipped": sum(1 for r in rows if r["outcome"] == "skipped"),
            "skip_kinds": dict(kinds),
            "exit_status": code,
            "hung": hung,
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak_mb),
            "opencv_disagrees": [{k: r[k] for k in ("source", "outcome", "reason")}
                                 for r in disagree],
            "problems": problems,
            "inputs_detail": rows,
        }
        print(f"{result['inputs']} inputs ({result['bytes']} bytes): {result['delivered']} "
              f"delivered, {result['skipped']} skipped; exit {code}, {result['seconds']} s, "
              f"peak RSS {result['peak_rss_mb']} MB")
        for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  skipped, {kind}: {count}")
        for r in disagree:
            print(f"  OpenCV {'refuses' if r['outcome'] == 'delivered' else 'decodes'} "
                  f"{r['source']}: millrace {r['outcome']} {r['reason']}")
        for p in problems:
            print("PROBLEM:", p)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return 0 if not problems else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
