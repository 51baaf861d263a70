#!/usr/bin/env python3
"""Quality of `decode.reduce: auto`: PSNR of its int8 batches against whole-image decoding.

  /usr/bin/python3 bench/reduce_psnr.py --millrace build/millrace \\
      --root data/imagenet-like --root data/large --images 500 [--dct accurate|fast]
      [--json out/reduce_psnr.json]

For each dataset and recipe (train: random-resized crop 224, mirror 0.5; val: resize 256, centre
crop 224), the same millrace pipeline runs twice, `reduce: off` and `reduce: auto`, writing its
int8 NCHW batches with the npy sink; every image's output is compared (the mean is subtracted
identically on both sides, so int8 differences are pixel differences). With --dct fast the
reduced side runs `decode.dct: fast` and a third run, `reduce: off, dct: fast`, is compared too;
the reference is always `reduce: off` with the accurate inverse DCT. PSNR = 10 log10(255^2 /
MSE); "all" pools every pixel of the set, "worst" is the lowest single image.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

RECIPES = {
    "train": "{type: augment, crop: random_resized, size: [224, 224], mirror: 0.5}",
    "val": "{type: augment, resize: 256, crop: center, size: [224, 224]}",
}


def config(root, images, recipe, reduce, dct, out_dir):
    root_text = json.dumps(os.path.abspath(root))
    return ("pipeline: {name: reduce-psnr, threads: 2, queue: 8, ordered: true, seed: 1}\n"
            "stages:\n"
            f"  - {{type: files, root: {root_text}, list: labels.lst, shuffle: false, "
            f"limit: {images}}}\n"
            f"  - {{type: decode, reduce: {reduce}, dct: {dct}}}\n"
            f"  - {RECIPES[recipe]}\n"
            "  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939], layout: NCHW}\n"
            "  - {type: batch, size: 64, last: partial}\n"
            f"  - {{type: npy, dir: {json.dumps(out_dir)}}}\n")


def run_images(millrace, root, images, recipe, reduce, dct, work):
    out_dir = os.path.join(
        work, f"{os.path.basename(os.path.normpath(root))}_{recipe}_{reduce}_{dct}")
    path = out_dir + ".yaml"
    with open(path, "w") as f:
        f.write(config(root, images, recipe, reduce, dct, out_dir))
    result = subprocess.run([millrace, "run", path, "--quiet"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"reduce_psnr: millrace failed on {path}:\n{result.stdout}{result.stderr}")
    files = sorted(glob.glob(os.path.join(out_dir, "batch_*_data.npy")))
    if not files:
        raise SystemExit(f"reduce_psnr: no batches in {out_dir}")
    return np.concatenate([np.load(f) for f in files]).astype(np.int16)


def psnr(mse):
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--millrace", required=True)
    parser.add_argument("--root", action="append", required=True,
                        help="dataset folder with labels.lst (repeatable)")
    parser.add_argument("--images", type=int, default=500, help="first N images of each list")
    parser.add_argument("--dct", choices=["accurate", "fast"], default="accurate",
                        help="decode.dct of the runs compared with the accurate whole decode")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="millrace_reduce_psnr_") as work:
        for root in args.root:
            for recipe in RECIPES:
                whole = run_images(args.millrace, root, args.images, recipe, "off", "accurate",
                                   work)
                variants = [("auto", args.dct)] + ([("off", "fast")] if args.dct == "fast" else [])
                for reduce, dct in variants:
                    other = run_images(args.millrace, root, args.images, recipe, reduce, dct, work)
                    if whole.shape != other.shape:
                        raise SystemExit(f"reduce_psnr: shapes differ: {whole.shape} "
                                         f"{other.shape}")
                    per_image = ((whole - other).astype(np.float64) ** 2).reshape(
                        len(whole), -1).mean(axis=1)
                    rows.append({
                        "dataset": os.path.basename(os.path.normpath(root)),
                        "recipe": recipe,
                        "decode": f"reduce: {reduce}, dct: {dct}",
                        "images": int(len(whole)),
                        "psnr_all_db": psnr(per_image.mean()),
                        "psnr_median_db": psnr(float(np.median(per_image))),
                        "psnr_worst_db": psnr(per_image.max()),
                        "identical_images": int((per_image == 0).sum()),
                    })
                    r = rows[-1]
                    print(f"{r['dataset']:>16} {recipe:>5} {r['decode']}: {r['images']} images, "
                          f"PSNR all {r['psnr_all_db']:.2f} dB, median "
                          f"{r['psnr_median_db']:.2f}, worst {r['psnr_worst_db']:.2f}, "
                          f"identical {r['identical_images']}", flush=True)

    print()
    print("| data set | recipe | decode | images | PSNR, all pixels | median image | worst image "
          "| identical images |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['recipe']} | {r['decode']} | {r['images']} "
              f"| {r['psnr_all_db']:.2f} dB "
              f"| {r['psnr_median_db']:.2f} dB | {r['psnr_worst_db']:.2f} dB "
              f"| {r['identical_images']} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
    return 0 if all(r["psnr_all_db"] >= 35.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
