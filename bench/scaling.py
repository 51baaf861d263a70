#!/usr/bin/env python3
"""Thread scaling: millrace and the PyTorch DataLoader peer at 1, 2, 4, ... threads on the same files.

  python3 bench/scaling.py --millrace build/millrace --root data/imagenet-like \\
      --threads 1,2,4,8,16 [--recipe train|val] [--reduce off|auto|both] [--images 2000]
      [--epochs-per-thread 1] [--no-peer] [--json out/scaling.json]

For each thread count N, millrace runs the recipe of bench/compare.py (`millrace bench`, its
median of repeats) with `pipeline.threads: N`, and the peer with N DataLoader workers. Each run
covers N x --epochs-per-thread epochs of the first --images images, so that every point lasts
about as long as the single-thread one (a 16-thread run over one epoch would be too short to
time). The table gives images/s, the speed-up over the first thread count, the efficiency
(speed-up / thread ratio) and millrace / peer at each point. Thread counts above the machine's
cores are refused: they would measure the scheduler, not the engine.
"""

import argparse
import os
import platform
import sys
import tempfile

from benchlib import RunFailed, print_table, write_json
from compare import (add_run_arguments, bench_config, check_root_and_millrace, millrace_config,
                     run_peer)


def millrace_point(args, threads, reduce, work):
    text = millrace_config(args.recipe, args.root, args.images, threads, args.batch, reduce,
                           epochs=threads * args.epochs_per_thread)
    rate, _, _ = bench_config(args, text, f"millrace_{threads}t_{reduce}", work)
    print(f"[{threads} threads] millrace reduce {reduce}: {rate:.1f} images/s", flush=True)
    return rate


def peer_point(args, threads, work):
    rate, runs = run_peer(args, args.recipe, threads, threads * args.epochs_per_thread, work)
    print(f"[{threads} threads] peer: {rate:.1f} images/s (median of {len(runs)})", flush=True)
    return rate


def measure(args, work):
    reduces = ["off", "auto"] if args.reduce == "both" else [args.reduce]
    points = []
    for threads in args.threads:
        point = {"threads": threads,
                 "millrace": {r: millrace_point(args, threads, r, work) for r in reduces}}
        if not args.no_peer:
            point["peer"] = peer_point(args, threads, work)
        points.append(point)
    return reduces, points


def print_points(args, reduces, points):
    base_threads = points[0]["threads"]
    header = ["threads"]
    for r in reduces:
        header += [f"reduce {r} images/s", "speed-up", "efficiency"]
    if not args.no_peer:
        header += ["peer images/s", "peer speed-up"] + [f"ratio (reduce {r})" for r in reduces]
    rows = []
    for p in points:
        scale = p["threads"] / base_threads
        row = [str(p["threads"])]
        for r in reduces:
            speedup = p["millrace"][r] / points[0]["millrace"][r]
            row += [f"{p['millrace'][r]:.1f}", f"{speedup:.2f}x", f"{speedup / scale:.2f}"]
        if not args.no_peer:
            row += [f"{p['peer']:.1f}", f"{p['peer'] / points[0]['peer']:.2f}x"]
            row += [f"{p['millrace'][r] / p['peer']:.2f}x" for r in reduces]
        rows.append(row)
    print_table(header, rows)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def thread_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")
    if not values or min(values) < 1 or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing counts >= 1, got '{text}'")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=thread_list, default=[1, 2],
                        help="comma-separated thread counts, increasing (default 1,2)")
    parser.add_argument("--recipe", choices=["train", "val"], default="train")
    parser.add_argument("--reduce", choices=["off", "auto", "both"], default="off")
    parser.add_argument("--images", type=int, default=2000, help="first N images of the list")
    parser.add_argument("--epochs-per-thread", type=int, default=1,
                        help="epochs per run = threads x this")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-peer", action="store_true", help="millrace only")
    parser.add_argument("--peer-repeats", type=int, default=1,
                        help="peer runs per point; the median is compared")
    parser.add_argument("--json", help="write the points here")
    add_run_arguments(parser)
    args = parser.parse_args()

    check_root_and_millrace(parser, args)
    cores = os.cpu_count() or 1
    if args.threads[-1] > cores:
        parser.error(f"{args.threads[-1]} threads on a machine with {cores} cores")
    if args.images < 2 * args.batch or args.epochs_per_thread < 1 or args.peer_repeats < 1:
        parser.error("--images must cover two batches; --epochs-per-thread and --peer-repeats "
                     "must be >= 1")

    with tempfile.TemporaryDirectory(prefix="millrace_scaling_") as work:
        try:
            reduces, points = measure(args, work)
        except RunFailed as e:
            print(f"scaling: {e}", file=sys.stderr)
            return 1
    print()
    print(f"{args.recipe} recipe, {args.images} images x threads x {args.epochs_per_thread} "
          f"epochs per run, batch {args.batch}, {cores} cores ({cpu_model()})")
    print_points(args, reduces, points)
    if args.json:
        write_json(args.json, {"recipe": args.recipe, "images": args.images,
                               "epochs_per_thread": args.epochs_per_thread, "batch": args.batch,
                               "machine": {"cpus": cores, "platform": platform.platform(),
                                           "processor": cpu_model()},
                               "points": points})
    return 0


if __name__ == "__main__":
    sys.exit(main())
