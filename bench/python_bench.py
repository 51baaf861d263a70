#!/usr/bin/env python3
"""The Python package measured: what iterating from Python costs, and the PyTorch loop's data rate.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py --millrace build/millrace \\
        --root data/imagenet-like --rounds 5

overhead  The same config (configs/train.yaml on ROOT, `--epochs` epochs a run) run by
          `millrace bench --repeats 1` and iterated from Python with millrace.Pipeline, in
          interleaved rounds (the two sides take turns to go first). Both rates are steady-state:
          images after the first batch over the time from the first batch to the last. The cost
          is 1 - python / cli, from the medians and per round.
loop      examples/python/train_loop.py --model none (the loop takes each batch and touches it,
          as a training step would, so its rate is the loader's data rate) fed by millrace and
          by torchvision's DataLoader with `--workers` worker processes, in interleaved rounds; the
          ratio is millrace / DataLoader. `--loop-config` names millrace's recipe (default
          configs/train.yaml; configs/train_reduced.yaml decodes only each crop's window).

Prints a table per part and, with --json, writes every round's figures.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

import benchlib

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
TRAIN = os.path.join(SOURCE, "configs", "train.yaml")
EXAMPLE = os.path.join(SOURCE, "examples", "python", "train_loop.py")


def overrides(args):
    return {"files.root": os.path.abspath(args.root), "files.epochs": args.epochs,
            "batch.size": args.batch, "pipeline.threads": args.threads}


def cli_rate(args, work):
    out = os.path.join(work, "cli.json")
    sets = [a for k, v in overrides(args).items() for a in ("--set", f"{k}={json.dumps(v)}")]
    benchlib.run([args.millrace, "bench", TRAIN, "--repeats", "1", "--warmup", "0", "--json", out,
                  *sets], args.timeout, "millrace bench")
    with open(out) as f:
        return float(json.load(f)["images_per_second"])


def python_rate(args):
    """Iterates `--epochs` epochs of the same config from Python, timed as the CLI times a run."""
    import millrace

    o = overrides(args)
    del o["files.epochs"]  # Python takes one epoch per loop
    first = last = None
    images = 0
    with millrace.Pipeline(TRAIN, o) as pipe:
        for _ in range(args.epochs):
            for batch in pipe:
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    images += batch.data.shape[0] - batch.pad
                last = now
    return images / (last - first)


LOOP_LINE = re.compile(r"(\d+) images in ([\d.]+) s, ([\d.]+) images/s")


def loop_rate(args, loader):
    result, _ = benchlib.run(
        [sys.executable, "-B", EXAMPLE, "--root", args.root, "--loader", loader, "--model", "none",
         "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
         "--workers", str(args.workers), "--config", args.loop_config], args.timeout, f"train_loop.py --loader {loader}",
        env=dict(os.environ))
    m = LOOP_LINE.search(result.stdout)
    if not m:
        raise benchlib.RunFailed(f"train_loop.py printed no rate: {result.stdout}")
    return float(m.group(3))


def interleave(rounds, first, second):
    """Runs the two measurements `rounds` times, alternating which goes first; returns the lists."""
    a, b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
        print(f"  round {r + 1}: {a[-1]:.1f} / {b[-1]:.1f} = {a[-1] / b[-1]:.3f}", flush=True)
    return a, b


def summary(name_a, a, name_b, b):
    ratios = [x / y for x, y in zip(a, b)]
    return {name_a: statistics.median(a), name_b: statistics.median(b),
            "ratio_of_medians": statistics.median(a) / statistics.median(b),
            "median_round_ratio": statistics.median(ratios),
            "round_ratio_range": [min(ratios), max(ratios)], "rounds": [a, b]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--millrace", required=True, help="the millrace binary")
    parser.add_argument("--root", required=True, help="dataset folder with labels.lst")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per overhead run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--steps", type=int, default=40, help="batches per loop run")
    parser.add_argument("--loop-config", default=os.path.join(SOURCE, "configs", "train.yaml"))
    parser.add_argument("--parts", default="overhead,loop")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    parts = args.parts.split(",")
    report = {"rounds": args.rounds, "batch": args.batch, "threads": args.threads,
              "cpus": os.cpu_count()}
    try:
        with tempfile.TemporaryDirectory(prefix="millrace-python-bench-") as work:
            if "overhead" in parts:
                print(f"overhead: configs/train.yaml, {args.epochs} epochs a run", flush=True)
                py, cli = interleave(args.rounds, lambda: python_rate(args),
                                     lambda: cli_rate(args, work))
                report["overhead"] = summary("python", py, "cli", cli)
            if "loop" in parts:
                print(f"loop: train_loop.py --model none, {args.steps} batches a run", flush=True)
                mr, dl = interleave(args.rounds, lambda: loop_rate(args, "millrace"),
                                    lambda: loop_rate(args, "dataloader"))
                report["loop"] = summary("millrace", mr, "dataloader", dl)
                report["loop"]["dataloader_workers"] = args.workers
                report["loop"]["config"] = os.path.relpath(args.loop_config, SOURCE)
    except benchlib.RunFailed as e:
        raise SystemExit(f"python_bench: {e}")

    rows = []
    if "overhead" in report:
        o = report["overhead"]
        lo, hi = o["round_ratio_range"]
        rows.append(["Python iteration / millrace bench", f"{o['python']:.1f}", f"{o['cli']:.1f}",
                     f"{o['ratio_of_medians']:.3f}", f"{o['median_round_ratio']:.3f}",
                     f"{lo:.3f}-{hi:.3f}"])
    if "loop" in report:
        o = report["loop"]
        lo, hi = o["round_ratio_range"]
        rows.append([f"train_loop.py ({os.path.basename(args.loop_config)}): millrace / "
                     f"DataLoader ({args.workers} workers)",
                     f"{o['millrace']:.1f}", f"{o['dataloader']:.1f}",
                     f"{o['ratio_of_medians']:.2f}", f"{o['median_round_ratio']:.2f}",
                     f"{lo:.2f}-{hi:.2f}"])
    benchlib.print_table(["measure", "images/s", "against", "ratio of medians",
                          "median round ratio", "round range"], rows)
    if args.json:
        benchlib.write_json(args.json, report)


if __name__ == "__main__":
    main()
