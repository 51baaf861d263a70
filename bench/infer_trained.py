#!/usr/bin/env python3
"""Accuracy of int8 against fp32 on a trained network and real photos: millrace and its peers.

  python3 bench/infer_trained.py [--photos ../shared/fixtures/imagenet-samples]
      [--calibration data/imagenet-like] [--calibration-images 64] [--peers openvino,onnxruntime,torch2]
      [--json out/bench/infer_trained.json]

The network is EfficientNet-Lite0 with its ImageNet weights (data/models/efficientnet_lite0.onnx,
made by `scripts/setup`; configs/efficientnet_lite0_int8.yaml). Every system classifies the same
photos (an im2rec list whose label is the ImageNet class index) through its own preprocessing:
millrace through its loader (TurboJPEG decode, resize 256, centre crop 224, pixel - 127 as int8
bytes, the model's std folded into the first convolution), the peers through PIL
(bench/peers/infer_peers.py, run with .venv-infer-peers/bin/python from `scripts/setup --peers`).

Calibration: the same --calibration-images photos for every system, spread evenly over
CALIBRATION/labels.lst (the project's own `millrace make-dataset` photos, never the photos
measured). millrace calibrates each mode (minmax, entropy, mse), with channel ranges on (the
default) and off, in a run over those photos that writes a table; the measured run loads it.

Reported per system and precision: top-1 and top-5 accuracy, and for int8 the top-1 agreement
with the same system's fp32.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchlib import print_table, write_json  # noqa: E402

MODEL = os.path.join(REPO, "data", "models", "efficientnet_lite0.onnx")
CONFIG = os.path.join(REPO, "configs", "efficientnet_lite0_int8.yaml")
PEERS = os.path.join(HERE, "peers", "infer_peers.py")
MODES = ("minmax", "entropy", "mse")


def read_list(path):
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3:
                rows.append(fields)
    return rows


def millrace(args, work, name, root, list_path, sets):
    out = os.path.join(work, name + ".jsonl")
    report = os.path.join(work, name + ".json")
    cmd = [args.millrace, "run", CONFIG, "--quiet", "--json", report,
           "--set", f"files.root={root}", "--set", f"files.list={list_path}",
           "--set", f"infer.model={MODEL}", "--set", f"predictions.path={out}"]
    for s in sets:
        cmd += ["--set", s]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    with open(out) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r["id"])
    return [r["label"] for r in rows], [[c for c, _ in r["top_k"]] for r in rows], \
        [r["path"] for r in rows]


def scores(labels, top5, reference=None):
    n = len(labels)
    result = {"images": n,
              "top1": sum(int(t[0]) == int(l) for t, l in zip(top5, labels)) / n,
              "top5": sum(int(l) in [int(c) for c in t] for t, l in zip(top5, labels)) / n}
    if reference is not None:
        result["agreement"] = sum(a[0] == b[0] for a, b in zip(top5, reference)) / n
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--millrace", default=os.path.join(REPO, "build", "millrace"))
    # shared/ sits beside the repository (../shared), or beside the folder of worktrees.
    photos = [os.path.normpath(os.path.join(REPO, *up, "shared", "fixtures", "imagenet-samples"))
              for up in (("..",), ("..", ".."))]
    parser.add_argument("--photos", default=next((p for p in photos if os.path.isdir(p)),
                                                 photos[0]))
    parser.add_argument("--calibration", default=os.path.join(REPO, "data", "imagenet-like"))
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--peers", default="openvino,onnxruntime,torch2",
                        help="'' for millrace alone")
    parser.add_argument("--peer-python", default=os.path.join(REPO, ".venv-infer-peers", "bin",
                                                              "python"))
    parser.add_argument("--json")
    args = parser.parse_args()
    if not os.path.isfile(MODEL):
        parser.error(f"{MODEL} is missing: run scripts/setup")
    photos_list = os.path.join(args.photos, "labels.lst")
    if not os.path.isfile(photos_list):
        parser.error(f"{photos_list} is missing (--photos)")

    results = []
    with tempfile.TemporaryDirectory(prefix="millrace_trained_") as work:
        # The calibration photos, spread evenly over the list, as one list every system reads.
        listed = read_list(os.path.join(args.calibration, "labels.lst"))
        count = min(args.calibration_images, len(listed))
        chosen = [listed[i * len(listed) // count] for i in range(count)]
        calibration_list = os.path.join(work, "calibration.lst")
        with open(calibration_list, "w") as f:
            for i, fields in enumerate(chosen):
                f.write(f"{i}\t{fields[1]}\t{fields[-1]}\n")

        labels, fp32, _ = millrace(args, work, "fp32", args.photos, photos_list,
                                   ["infer.precision=fp32"])
        results.append({"system": "millrace", "precision": "fp32", **scores(labels, fp32)})
        print(f"millrace fp32: {results[-1]}", flush=True)
        for mode in MODES:
            for channels in ("true", "false"):
                table = os.path.join(work, f"{mode}_{channels}.calib.json")
                calib = [f"infer.calibration={{batches: {-(-count // 32)}, mode: {mode}, "
                         f"table: {table}}}", f"infer.channel_ranges={channels}"]
                millrace(args, work, f"cal_{mode}_{channels}", args.calibration, calibration_list,
                         calib)
                _, top5, _ = millrace(args, work, f"int8_{mode}_{channels}", args.photos,
                                      photos_list, calib)
                results.append({"system": "millrace", "precision": "int8", "mode": mode,
                                "channel_ranges": channels == "true",
                                **scores(labels, top5, fp32)})
                print(f"millrace int8 {mode} channel_ranges={channels}: {results[-1]}",
                      flush=True)
        if args.peers:
            peer_json = os.path.join(work, "peers.json")
            cmd = [args.peer_python, PEERS, "predict", "--systems", args.peers, "--model", MODEL,
                   "--calibration-list", calibration_list, "--calibration-root", args.calibration,
                   "--calibration-images", str(count),
                   "--images-list", photos_list, "--root", args.photos,
                   "--mean", "127,127,127", "--std", "128,128,128", "--json", peer_json]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
            with open(peer_json) as f:
                peers = json.load(f)["rows"]
            for system in args.peers.split(","):
                ref = next(r for r in peers if r["system"] == system and r["precision"] == "fp32")
                for row in peers:
                    if row["system"] != system:
                        continue
                    reference = ref["top5"] if row["precision"] == "int8" else None
                    extra = {k: v for k, v in row.items()
                             if k not in ("paths", "labels", "top5", "system", "precision")}
                    results.append({"system": system, "precision": row["precision"],
                                    **scores(row["labels"], row["top5"], reference), **extra})
                    print(f"{system} {row['precision']}: {results[-1]}", flush=True)

    print()
    print_table(("system", "precision", "calibration", "top-1", "top-5", "top-1 agreement"),
                [(r["system"], r["precision"],
                  (f"{r['mode']}{'' if r['channel_ranges'] else ', no channel ranges'}"
                   if "mode" in r else ""),
                  f"{100 * r['top1']:.1f}", f"{100 * r['top5']:.1f}",
                  f"{100 * r['agreement']:.1f}" if "agreement" in r else "")
                 for r in results])
    if args.json:
        write_json(args.json, {"photos": args.photos, "calibration_images": count,
                               "load_average": os.getloadavg(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
