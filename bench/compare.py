#!/usr/bin/env python3
"""Runs millrace and the PyTorch DataLoader peer on the same files and prints the ratio.

  python3 bench/compare.py --millrace build/millrace --root data/imagenet-like \\
      --recipe train|val|both --images 1000 [--reduce off|auto|both] [--dct accurate|fast|both]
      [--json out/compare.json]

For each recipe a millrace config is written to a temporary folder and run with
`MILLRACE bench CONFIG --repeats M --json RESULT.json` (its JSON gives the median
"images_per_second" of the M runs), then bench/peers/torch_dataloader.py runs on the same first N
images of ROOT/labels.lst with the same worker count and batch size, --peer-repeats times
(median). Both sides deliver full batches only. --reduce picks millrace's `decode.reduce` and
--dct its `decode.dct` (both: each, against the same peer runs; two boths: every pairing).

Absolute rates drift on shared machines; the ratio of runs made back to back is the number to
quote. With --rounds R the whole measurement is made R times, millrace's variants and the peer
taking turns to go first, and each variant reports the ratio of the medians over the rounds
beside the median of the rounds' own ratios and their range: a drift that slows one side's runs
moves one round, not the result. `--rounds 7 --millrace-repeats 1 --peer-repeats 1` interleaves
single runs.

The whole field (bench/field.py; bench/peers/README.md says what each peer runs):

  python3 bench/compare.py --millrace build/millrace --root DIR --peers all --rounds N \\
      --json OUT [--images N] [--epochs E] [--sweep] [--prepared]

runs millrace, DALI (CPU), tf.data, FFCV, MXNet's ImageRecordIter, PyTorch 2 and PyTorch 1.13
(`--peers all`, or a comma-separated list of dali, tfdata, ffcv, mxnet, torch2, torch1) and a
libjpeg-turbo limit in interleaved rounds on the same first N images, and prints one table per
recipe; the JSON's `rows` hold {"recipe", "system", "images_per_second", ...}, a peer that cannot
run as a row with system "error" saying why. `--sweep` first tries each peer's thread and prefetch
settings and races each at its best; `--prepared` adds millrace reading the copy that `millrace
prepare ROOT DST` makes (system "millrace_prepared"), where the binary has that command;
`--peer-variant NAME:LABEL=ARGS` races peer NAME once more with ARGS added to its command.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

from benchlib import RunFailed, print_table, run, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peers", "torch_dataloader.py")
IMAGENET_MEAN_PIXELS = "[123.68, 116.779, 103.939]"


def millrace_config(recipe, root, images, threads, batch, reduce="off", dct="accurate", epochs=1):
    """The config of one recipe; `root` goes in as a JSON string, which YAML reads verbatim."""
    root_text = json.dumps(os.path.abspath(root))
    if recipe == "train":
        files = (f"{{type: files, root: {root_text}, list: labels.lst, shuffle: true, seed: 1, "
                 f"limit: {images}, epochs: {epochs}}}")
        augment = "{type: augment, crop: random_resized, size: [224, 224], mirror: 0.5}"
    else:
        files = (f"{{type: files, root: {root_text}, list: labels.lst, shuffle: false, "
                 f"limit: {images}, epochs: {epochs}}}")
        augment = "{type: augment, resize: 256, crop: center, size: [224, 224]}"
    return (f"pipeline: {{name: {recipe}-int8, threads: {threads}, queue: 8, ordered: true}}\n"
            "stages:\n"
            f"  - {files}\n"
            f"  - {{type: decode, reduce: {reduce}, dct: {dct}}}\n"
            f"  - {augment}\n"
            f"  - {{type: normalize, dtype: int8, mean: {IMAGENET_MEAN_PIXELS}, layout: NCHW}}\n"
            f"  - {{type: batch, size: {batch}, last: drop}}\n"
            "  - {type: discard}\n")


def read_rate(path, what):
    try:
        with open(path) as f:
            data = json.load(f)
        rate = float(data["images_per_second"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFailed(f"{what} wrote no usable JSON at {path}: {e}")
    if not rate > 0:
        raise RunFailed(f"{what} reported images_per_second = {rate}")
    return rate, data


def variant_label(recipe, reduce, dct):
    return recipe + ("" if reduce == "off" else f", reduce: {reduce}") + (
        "" if dct == "accurate" else f", dct: {dct}")


def bench_config(args, text, stem, work, repeats=None):
    """Writes `text` to WORK/STEM.yaml and runs `millrace bench` on it (`--repeats` when given);
    returns the median images/s, the run's JSON and the wall seconds."""
    config = os.path.join(work, stem + ".yaml")
    with open(config, "w") as f:
        f.write(text)
    result_json = os.path.join(work, stem + ".json")
    cmd = [args.millrace, "bench", config, "--json", result_json]
    if repeats is not None:
        cmd += ["--repeats", str(repeats)]
    _, seconds = run(cmd, args.timeout, "millrace")
    rate, data = read_rate(result_json, "millrace")
    return rate, data, seconds


def run_millrace(args, recipe, variant, text, work, tag=""):
    """One `millrace bench` of a variant's config `text`; returns its images/s and JSON."""
    label = variant_label(recipe, *variant)
    stem = f"millrace_{recipe}_{'_'.join(variant)}{tag}"
    print(f"[{label}] millrace bench {os.path.join(work, stem + '.yaml')}", flush=True)
    rate, data, seconds = bench_config(args, text, stem, work, args.millrace_repeats)
    print(f"[{label}] millrace: {rate:.1f} images/s ({seconds:.1f} s wall)", flush=True)
    return rate, data


def run_peer(args, recipe, workers, epochs, work, tag=""):
    """The peer on the first args.images images, args.peer_repeats times; returns the median
    images/s and each run's JSON. `tag` keeps one round's result files from the next's."""
    peer_runs = []
    for repeat in range(args.peer_repeats):
        peer_json = os.path.join(work, f"peer_{recipe}_{workers}w{tag}_{repeat}.json")
        result, _ = run([args.peer_python, PEER, "--root", args.root, "--recipe", recipe,
                         "--workers", str(workers), "--batch", str(args.batch), "--images",
                         str(args.images), "--epochs", str(epochs), "--json", peer_json],
                        args.timeout, "the peer")
        print(f"[{recipe}] {result.stdout.strip()}", flush=True)
        peer_runs.append(read_rate(peer_json, "the peer")[1])
    return statistics.median(r["images_per_second"] for r in peer_runs), peer_runs


def compare_recipe(args, recipe, work):
    """Every millrace variant and the peer, args.rounds times; one row per variant."""
    reduces = ["off", "auto"] if args.reduce == "both" else [args.reduce]
    dcts = ["accurate", "fast"] if args.dct == "both" else [args.dct]
    variants = [(reduce, dct) for dct in dcts for reduce in reduces]
    configs = {variant: millrace_config(recipe, args.root, args.images, args.threads, args.batch,
                                        *variant) for variant in variants}
    ours = {variant: [] for variant in variants}  # (rate, JSON) per round
    peer = []  # (median rate, runs) per round

    def millrace_turn(tag):
        for variant in variants:
            ours[variant].append(run_millrace(args, recipe, variant, configs[variant], work, tag))

    def peer_turn(tag):
        peer.append(run_peer(args, recipe, args.workers, 1, work, tag))

    for number in range(args.rounds):
        tag = f"_round{number}" if args.rounds > 1 else ""
        if args.rounds > 1:
            print(f"[{recipe}] round {number + 1} of {args.rounds}", flush=True)
        # Taking turns to go first: neither side always runs on a machine the other just warmed.
        turns = (millrace_turn, peer_turn) if number % 2 == 0 else (peer_turn, millrace_turn)
        for turn in turns:
            turn(tag)

    peer_rates = [rate for rate, _ in peer]
    peer_rate = statistics.median(peer_rates)
    rows = []
    for variant in variants:
        rates = [rate for rate, _ in ours[variant]]
        round_ratios = [a / b for a, b in zip(rates, peer_rates)]
        rate = statistics.median(rates)
        rows.append({
            "recipe": variant_label(recipe, *variant),
            "millrace_images_per_second": rate,
            "peer_images_per_second": peer_rate,
            "ratio": rate / peer_rate,
            "rounds": args.rounds,
            "round_ratios": round_ratios,
            "median_round_ratio": statistics.median(round_ratios),
            "millrace": [data for _, data in ours[variant]],
            "peer_runs": [runs for _, runs in peer],
            "config": configs[variant],
        })
    return rows


def add_run_arguments(parser):
    """The options every script that runs millrace beside the peer takes (after its own), those
    that check_root_and_millrace checks among them."""
    parser.add_argument("--millrace", required=True, help="the millrace executable")
    parser.add_argument("--root", required=True, help="dataset folder holding labels.lst")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="interpreter for the peer (it needs torch and torchvision)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")


def check_root_and_millrace(parser, args):
    """Usage errors for a dataset without labels.lst or a millrace that is not executable; makes
    args.millrace absolute (the runs change folder)."""
    if not os.path.isfile(os.path.join(args.root, "labels.lst")):
        parser.error(f"{args.root} holds no labels.lst (make one with the dataset generator)")
    if not (os.path.isfile(args.millrace) and os.access(args.millrace, os.X_OK)):
        parser.error(f"{args.millrace} is not an executable file")
    args.millrace = os.path.abspath(args.millrace)


def print_rows(rows):
    header = ("recipe", "millrace images/s", "pytorch images/s", "ratio")
    cells = [(r["recipe"], f"{r['millrace_images_per_second']:.1f}",
              f"{r['peer_images_per_second']:.1f}", f"{r['ratio']:.2f}x") for r in rows]
    if rows and rows[0]["rounds"] > 1:
        header += ("median of rounds' ratios", "rounds' ratios")
        cells = [c + (f"{r['median_round_ratio']:.2f}x",
                      f"{min(r['round_ratios']):.2f}-{max(r['round_ratios']):.2f}x")
                 for c, r in zip(cells, rows)]
    print_table(header, cells)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=["train", "val", "both"], default="both")
    parser.add_argument("--images", type=int, default=1000, help="first N images of the list")
    parser.add_argument("--reduce", choices=["off", "auto", "both"],
                        help="millrace's decode.reduce (both: each, against the same peer runs; "
                             "default off, with --peers auto)")
    parser.add_argument("--dct", choices=["accurate", "fast", "both"], default="accurate",
                        help="millrace's decode.dct (both: each, against the same peer runs)")
    parser.add_argument("--json", help="write the table and both sides' results here")
    parser.add_argument("--threads", type=int, default=2, help="millrace pipeline threads")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--peer-repeats", type=int, default=3,
                        help="peer runs per recipe and round; the median is compared")
    parser.add_argument("--millrace-repeats", type=int, default=3,
                        help="`millrace bench --repeats` per variant and round")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure everything this many times, the sides taking turns to go "
                             "first; rows give medians over the rounds")
    parser.add_argument("--keep", help="keep the generated configs and raw results in this folder")
    field = parser.add_argument_group("the whole field (--peers)")
    field.add_argument("--peers", help="all, or a comma-separated list of dali, tfdata, ffcv, "
                                       "mxnet, torch2, torch1: race them all (bench/field.py)")
    field.add_argument("--epochs", type=int, default=0,
                       help="passes over the N images per run (0: enough for --min-images)")
    field.add_argument("--min-images", type=int, default=2000,
                       help="with --epochs 0, images per run at least")
    field.add_argument("--sweep", action="store_true",
                       help="try each peer's thread/prefetch settings first, race the best")
    field.add_argument("--prepared", action="store_true",
                       help="also millrace on the copy `millrace prepare ROOT DST` makes")
    field.add_argument("--peer-variant", action="append", metavar="NAME:LABEL=ARGS",
                       help="race peer NAME once more with ARGS added to its command, as its "
                            "own row (e.g. tfdata:accurate=--dct-method=INTEGER_ACCURATE)")
    field.add_argument("--cores", type=int, default=2,
                       help="the cores the runs share, for images/s per core")
    field.add_argument("--peer-data", default=os.path.join(os.path.dirname(HERE), "out",
                                                           "peer-data"),
                       help="where the peers' converted copies (.beton, .rec) are kept between "
                            "runs, one folder per data set")
    field.add_argument("--venvs", default=os.path.dirname(HERE),
                       help="the folder holding the peers' virtual environments")
    add_run_arguments(parser)
    args = parser.parse_args()

    check_root_and_millrace(parser, args)
    if args.reduce is None:
        args.reduce = "auto" if args.peers else "off"
    if args.peers:
        import field as field_module
        if args.rounds < 1:
            parser.error("--rounds must be >= 1")
        with tempfile.TemporaryDirectory(prefix="millrace_field_") as work:
            args.work = work
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                args.work = os.path.abspath(args.keep)
            try:
                return field_module.field_main(args, millrace_config, bench_config)
            except RunFailed as e:
                print(f"compare: {e}", file=sys.stderr)
                return 1
    if args.images < 2 * args.batch or min(args.peer_repeats, args.millrace_repeats,
                                            args.rounds) < 1:
        parser.error("--images must cover at least two batches; --peer-repeats, "
                     "--millrace-repeats and --rounds must be >= 1")

    recipes = ["train", "val"] if args.recipe == "both" else [args.recipe]
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        work_context = None
        work = args.keep
    else:
        work_context = tempfile.TemporaryDirectory(prefix="millrace_compare_")
        work = work_context.name
    try:
        rows = [row for recipe in recipes for row in compare_recipe(args, recipe, work)]
    except RunFailed as e:
        print(f"compare: {e}", file=sys.stderr)
        if not args.keep:
            print("compare: rerun with --keep DIR to keep the configs and results", file=sys.stderr)
        return 1
    finally:
        if work_context is not None:
            work_context.cleanup()

    print()
    print_rows(rows)
    if args.json:
        report = {
            "root": os.path.abspath(args.root),
            "images": args.images,
            "threads": args.threads,
            "workers": args.workers,
            "batch": args.batch,
            "reduce": args.reduce,
            "dct": args.dct,
            "rounds": args.rounds,
            "millrace_repeats": args.millrace_repeats,
            "peer_repeats": args.peer_repeats,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "processor": platform.processor()},
            "results": rows,
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
