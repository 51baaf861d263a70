"""What every loader adapter in bench/peers shares: its command line, the file list, the recipes'
constants and the one way images/s is measured, so that no peer is timed differently.

Standard library only: each adapter runs in its own interpreter (a virtual environment of its own
where its numpy clashes with another peer's), and this module must import in all of them.
"""

import argparse
import json
import os
import platform
import sys
import time

# The ImageNet means in pixel units and their int8-contract rounding (docs/int8-contract.md):
# out = clamp(pixel - round_half_away(mean), -128, 127), as millrace's compare configs ask for.
IMAGENET_MEAN_PIXELS = (123.68, 116.779, 103.939)
IMAGENET_MEAN_INT = (124, 117, 104)
CROP = 224
VAL_RESIZE = 256
TRAIN_SCALE = (0.08, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)
SEED = 1


def parser(description):
    """The options every adapter takes; an adapter adds its own knobs (prefetch depth and such)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--root", required=True, help="dataset folder holding labels.lst")
    p.add_argument("--recipe", choices=["train", "val"], default="train")
    p.add_argument("--threads", type=int, default=2,
                   help="the core budget: worker threads or processes, as the peer counts them")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=0, help="the first N images of labels.lst")
    p.add_argument("--epochs", type=int, default=1, help="passes over the N images")
    p.add_argument("--work", help="a folder for what the peer converts the files into (its own "
                                  "format); made once and reused")
    p.add_argument("--json", help="write the result here")
    return p


def check(p, args):
    if args.threads < 1 or args.batch < 1 or args.epochs < 1 or args.images < 0:
        p.error("--threads, --batch and --epochs must be >= 1, --images >= 0")


def read_list(root, limit):
    """(absolute path, relative path, label) from ROOT/labels.lst (im2rec: index, label, path),
    in list order, the first `limit` when it is not 0."""
    list_path = os.path.join(root, "labels.lst")
    items = []
    with open(list_path) as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                raise SystemExit(f"{list_path}:{number}: expected 'index<TAB>label<TAB>path'")
            items.append((os.path.join(root, fields[-1]), fields[-1], int(float(fields[1]))))
            if limit and len(items) == limit:
                break
    if not items:
        raise SystemExit(f"{list_path}: no images")
    return items


def work_dir(args, name):
    """ARGS.work/NAME (made if missing), where a peer keeps its converted copy of the data."""
    base = args.work or os.path.join(os.path.abspath(args.root), ".peers")
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


class Timer:
    """Steady-state images/s, the same for every system: the first batch (start-up, thread or
    process launch, cold reads, lazy compilation) is not timed; the rate is the images delivered
    after it over the time from the first batch to the last."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first = self.last = None
        self.images = self.timed_images = self.batches = 0

    def batch(self, size):
        now = time.perf_counter()
        self.batches += 1
        self.images += size
        if self.first is None:
            self.first = now
        else:
            self.timed_images += size
        self.last = now

    @classmethod
    def from_stamps(cls, stamps, batch):
        """The timer of a run that delivers images one at a time from several threads: `stamps`
        are the images' completion times; the first `batch` of them stand for the first batch,
        not timed, as a loader's first batch is not."""
        stamps = sorted(stamps)
        timer = cls()
        timer.start = stamps[0]
        timer.first = stamps[batch - 1]
        timer.last = stamps[-1]
        timer.batches = len(stamps) // batch
        timer.images = len(stamps)
        timer.timed_images = len(stamps) - batch
        return timer

    def result(self, peer, args, output, **extra):
        if self.batches < 2:
            raise SystemExit(f"{peer}: need at least 2 batches to time the steady state, got "
                             f"{self.batches}")
        seconds = self.last - self.first
        rate = self.timed_images / seconds
        result = {
            "peer": peer,
            "recipe": args.recipe,
            "images_per_second": rate,
            "threads": args.threads,
            "batch": args.batch,
            "epochs": args.epochs,
            "images": self.images,
            "batches": self.batches,
            "timed_images": self.timed_images,
            "timed_seconds": seconds,
            "first_batch_seconds": self.first - self.start,
            "output": output,
            "python": platform.python_version(),
        }
        result.update(extra)
        return result


def time_batches(batches, size):
    """Draws every batch from the iterable `batches` and returns the Timer that timed them;
    `size(batch)` is the number of images in one. The iteration starts after the timer does, so
    a loader that starts its workers when it is first iterated counts that in the first batch's
    time, which is not in the rate."""
    timer = Timer()
    for b in batches:
        timer.batch(size(b))
    return timer


def report(args, result):
    settings = ", ".join(f"{k} {v}" for k, v in result.get("settings", {}).items())
    print(f"{result['peer']} {result['recipe']}: {args.threads} threads"
          f"{', ' + settings if settings else ''}, batch {args.batch}, {result['images']} images, "
          f"{result['images_per_second']:.1f} images/s (steady state over "
          f"{result['timed_images']} images in {result['timed_seconds']:.2f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


def batches_for(items, epochs, batch):
    """Full batches only, as millrace's `batch: {last: drop}` delivers them: per epoch."""
    return len(items) // batch * epochs


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)
