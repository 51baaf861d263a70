#!/usr/bin/env python3
"""Windowed decoding from restart grids: millrace on a data set as it is against the same set
after `millrace prepare`, in interleaved rounds.

    python3 bench/restart_grid.py --millrace build/millrace --root DATA --prepared /tmp/DATA-prep \\
        [--recipe train|val|both] [--rounds 5] [--epochs 2] [--repeats 3] [--warmup 1]
        [--json out.json]

DATA holds labels.lst (an im2rec list). PREPARED is made with `millrace prepare DATA PREPARED` when
it does not exist yet. Per recipe, each round runs `millrace bench` once on every variant, in an
order that rotates from round to round, so that the machine's changing load touches every variant
alike:

- whole:          DATA,     decode.reduce: off (every image decoded whole)
- window:         DATA,     decode.reduce: auto (libjpeg's cropped, row-skipping window decode)
- prepared whole: PREPARED, decode.reduce: off (what the larger, marker-laden files cost)
- prepared:       PREPARED, decode.reduce: auto (windows decoded from the restart grid)

The train recipe is configs/train.yaml with files.root and files.epochs set; val is the same
pipeline with a resize to 256 and the central 224 crop. Each row gives the median images/s over
the rounds and the ratio to `whole`: the ratio of the medians and the median and range of the
rounds' own ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_CONFIG = os.path.join(HERE, "..", "configs", "train.yaml")
VARIANTS = [("whole", False, "off"), ("window", False, "auto"), ("prepared whole", True, "off"),
            ("prepared", True, "auto")]


def val_config(root, epochs):
    root_text = json.dumps(os.path.abspath(root))
    return ("pipeline: {name: imagenet-val-int8, threads: 2, queue: 8, ordered: true, seed: 1}\n"
            "stages:\n"
            f"  - {{type: files, root: {root_text}, list: labels.lst, shuffle: false, "
            f"epochs: {epochs}}}\n"
            "  - {type: decode, on_error: skip}\n"
            "  - {type: augment, resize: 256, crop: center, size: [224, 224]}\n"
            "  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939], layout: NCHW}\n"
            "  - {type: batch, size: 64, last: drop}\n"
            "  - {type: discard}\n")


def bench(args, recipe, root, reduce, work, stem):
    result = os.path.join(work, stem + ".json")
    if recipe == "train":
        config = TRAIN_CONFIG
        sets = [f"files.root={os.path.abspath(root)}", f"files.epochs={args.epochs}"]
    else:
        config = os.path.join(work, "val.yaml")
        with open(config, "w") as f:
            f.write(val_config(root, args.epochs))
        sets = []
    sets.append(f"decode.reduce={reduce}")
    cmd = [args.millrace, "bench", config, "--repeats", str(args.repeats), "--warmup",
           str(args.warmup), "--json", result]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"restart_grid: {' '.join(cmd)} failed:\n{done.stdout}")
    with open(result) as f:
        return float(json.load(f)["images_per_second"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--millrace", required=True)
    p.add_argument("--root", required=True, help="data set folder holding labels.lst")
    p.add_argument("--prepared", required=True, help="its prepared copy (made if missing)")
    p.add_argument("--recipe", choices=["train", "val", "both"], default="both")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="passes over the data set per run")
    p.add_argument("--repeats", type=int, default=3, help="`millrace bench --repeats`")
    p.add_argument("--warmup", type=int, default=1, help="`millrace bench --warmup`")
    p.add_argument("--json", help="write every round's rates and the table here")
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.root, "labels.lst")):
        p.error(f"{args.root} holds no labels.lst")
    if not os.path.isdir(args.prepared):
        subprocess.run([args.millrace, "prepare", args.root, args.prepared], check=True)

    recipes = ["train", "val"] if args.recipe == "both" else [args.recipe]
    rates = {(r, v[0]): [] for r in recipes for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="restart_grid.") as work:
        for round_index in range(args.rounds):
            for recipe in recipes:
                shift = round_index % len(VARIANTS)
                for name, prepared, reduce in VARIANTS[shift:] + VARIANTS[:shift]:
                    root = args.prepared if prepared else args.root
                    rate = bench(args, recipe, root, reduce, work, f"{recipe}_{round_index}")
                    rates[(recipe, name)].append(rate)
                    print(f"round {round_index + 1} {recipe:5} {name:15} {rate:8.1f} images/s",
                          flush=True)

    rows = []
    for recipe in recipes:
        base = rates[(recipe, "whole")]
        for name, _, _ in VARIANTS:
            r = rates[(recipe, name)]
            ratios = [a / b for a, b in zip(r, base)]
            rows.append({"recipe": recipe, "variant": name, "median": statistics.median(r),
                         "ratio_of_medians": statistics.median(r) / statistics.median(base),
                         "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
                         "max_ratio": max(ratios), "rates": r})
    print("\n| recipe | variant | images/s (median) | ratio of medians | median of rounds' ratios "
          "| rounds' ratios |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['recipe']} | {row['variant']} | {row['median']:.1f} | "
              f"{row['ratio_of_medians']:.2f}x | {row['median_ratio']:.2f}x | "
              f"{row['min_ratio']:.2f}-{row['max_ratio']:.2f}x |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"root": args.root, "prepared": args.prepared, "rounds": args.rounds,
                       "epochs": args.epochs, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
