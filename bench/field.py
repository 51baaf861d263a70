"""`bench/compare.py --peers ...`: millrace against every loader in bench/peers/, in interleaved
rounds, on the same first N images, one table per recipe with a libjpeg-turbo limit row.

Each peer runs as its own process with its own interpreter (the virtual environments that
`scripts/setup --peers` makes; tensorflow's and mxnet's numpy cannot share one), through its
adapter in bench/peers/, which times it the way peerlib.Timer does: steady state, the first batch
not counted. millrace runs `millrace bench CONFIG --repeats 1` (its warm-up run first, untimed),
whose images/s is steady state too. A round runs every system once per recipe; the order of the
systems turns by one place each round, so that no system always follows the same neighbour, and a
change in the machine's load lands on a round, not on a system. The tables give the median over
the rounds; the ratio is millrace's median over the system's, beside the range of the rounds' own
ratios.
"""

import hashlib
import json
import os
import statistics
import subprocess
import sys

from benchlib import RunFailed, print_table, run, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS_DIR = os.path.join(HERE, "peers")
SYSTEMS = ["millrace", "dali", "tfdata", "ffcv", "mxnet", "torch2", "torch1"]


class Peer:
    """One loader: its adapter, its interpreter, the module it must import, the option that takes
    the thread budget, and the settings the sweep tries (`best` is the one a run uses when no
    sweep is made: the best of the recorded sweep in docs/PERFORMANCE.md)."""

    def __init__(self, name, script, venv, module, sweep, best, thread_option="--threads",
                 extra=()):
        self.name, self.script, self.venv, self.module = name, script, venv, module
        self.sweep, self.best, self.thread_option = sweep, best, thread_option
        self.extra = list(extra)

    def python(self, args):
        if self.venv is None:
            return sys.executable
        return os.path.join(args.venvs, self.venv, "bin", "python")


def peers_table():
    # Settings: (threads, prefetch); prefetch None where the peer has no such knob.
    return {
        "dali": Peer("dali", "dali_cpu.py", ".venv-peers", "nvidia.dali",
                     sweep=[(2, 2), (3, 2), (4, 2), (2, 3), (3, 3)], best=(2, 2)),
        "tfdata": Peer("tfdata", "tf_data.py", ".venv-peers", "tensorflow",
                       sweep=[(2, -1), (3, -1), (4, -1), (2, 4)], best=(3, -1)),
        "ffcv": Peer("ffcv", "ffcv_loader.py", ".venv-peers", "ffcv",
                     # FFCV's workers are numba threads, which numba caps at the core count.
                     sweep=[(1, 3), (2, 3), (2, 6)], best=(2, 3)),
        "mxnet": Peer("mxnet", "mxnet_recorditer.py", ".venv-mxnet", "mxnet",
                      # MXNet clamps preprocess_threads to max(cores / 2 - 1, 1): 1 here.
                      sweep=[(2, 4), (2, 8)], best=(2, 4),
                      extra=["--millrace"]),
        "torch2": Peer("torch2", "torch2_dataloader.py", ".venv-peers", "torch",
                       sweep=[(2, 2), (3, 2), (4, 2), (2, 4)], best=(2, 2)),
        # Debian's PyTorch 1.13 + PIL in the system interpreter; the script re-executes itself
        # with /usr/bin/python3 when the interpreter at hand has no torch.
        "torch1": Peer("torch1", "torch_dataloader.py", None, None,
                       sweep=[(2, None), (3, None), (4, None)], best=(2, None),
                       thread_option="--workers"),
    }


def peer_command(peer, args, recipe, threads, prefetch, epochs, out):
    cmd = [peer.python(args), os.path.join(PEERS_DIR, peer.script), "--root", args.root,
           "--recipe", recipe, peer.thread_option, str(threads), "--batch", str(args.batch),
           "--images", str(args.images), "--epochs", str(epochs), "--json", out]
    if peer.name != "torch1":
        cmd += ["--work", args.peer_work]
    if prefetch is not None:
        cmd += ["--prefetch", str(prefetch)]
    if "--millrace" in peer.extra:
        cmd += ["--millrace", args.millrace]
    return cmd


def probe(peer, args):
    """None when the peer's interpreter imports its module, else the reason it cannot run."""
    python = peer.python(args)
    if not os.path.exists(python):
        return (f"{python} does not exist: `scripts/setup --peers` makes it "
                f"(scripts/setup.d/90-peers.sh)")
    if peer.module is None:
        code = ("import torch, torchvision, PIL; "
                "print(torch.__version__, torchvision.__version__)")
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else python
    else:
        code = f"import {peer.module}"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [l for l in (result.stderr or result.stdout).strip().splitlines() if l.strip()]
        return f"{python} -c '{code}' failed: {lines[-1] if lines else result.returncode}"
    return None


def run_json(cmd, out, timeout, what):
    result, seconds = run(cmd, timeout, what)
    try:
        with open(out) as f:
            data = json.load(f)
        rate = float(data["images_per_second"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFailed(f"{what} wrote no usable JSON at {out}: {e}\n{result.stdout}")
    return rate, data


def error_text(e):
    """The last lines of a failed run: where the pip or runtime error says what went wrong."""
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return " | ".join(lines[:1] + lines[-3:]) if len(lines) > 4 else " | ".join(lines)


def list_length(root):
    with open(os.path.join(root, "labels.lst")) as f:
        return sum(1 for line in f if line.strip())


def millrace_prepare(args, work):
    """The root of a copy of the data made by `millrace prepare SRC DST`, or the reason there is
    none (the binary may predate the command)."""
    usage = subprocess.run([args.millrace], capture_output=True, text=True)
    text = usage.stdout + usage.stderr
    if "\n  prepare " not in text:
        return None, f"{args.millrace} has no `prepare` command (its usage lists none)"
    dst = os.path.join(work, "prepared")
    if not os.path.exists(os.path.join(dst, "labels.lst")):
        try:
            run([args.millrace, "prepare", args.root, dst], args.timeout, "millrace prepare")
        except RunFailed as e:
            return None, error_text(e)
    if not os.path.exists(os.path.join(dst, "labels.lst")):
        return None, f"`millrace prepare {args.root} {dst}` wrote no labels.lst"
    return dst, None


def field_main(args, millrace_config, bench_config):
    """The --peers mode of compare.py; returns the exit status."""
    table = peers_table()
    names = list(table) if args.peers == "all" else [n.strip() for n in args.peers.split(",")]
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"compare: unknown peer(s) {', '.join(unknown)}; known: {', '.join(table)}",
              file=sys.stderr)
        return 2
    available = list_length(args.root)
    if args.images <= 0 or args.images > available:
        args.images = available
    epochs = args.epochs or max(1, -(-args.min_images // args.images))
    recipes = ["train", "val"] if args.recipe == "both" else [args.recipe]
    work = args.work
    # One folder per data set and list length: the converted copies outlive the run.
    tag = hashlib.sha1(os.path.abspath(args.root).encode()).hexdigest()[:8]
    args.peer_work = os.path.join(args.peer_data, f"{os.path.basename(os.path.abspath(args.root))}"
                                                  f"-{tag}")
    os.makedirs(args.peer_work, exist_ok=True)
    print(f"{args.images} images x {epochs} epochs per run, batch {args.batch}, "
          f"millrace at {args.threads} threads; load: {os.getloadavg()}", flush=True)

    load_before = list(os.getloadavg())
    errors = {}  # system -> reason
    for name in names:
        reason = probe(table[name], args)
        if reason:
            errors[name] = reason
            print(f"[{name}] cannot run: {reason}", flush=True)
    prepared_root = None
    if args.prepared:
        prepared_root, reason = millrace_prepare(args, work)
        if reason:
            errors["millrace_prepared"] = reason
            print(f"[millrace_prepared] no row: {reason}", flush=True)

    settings = {name: {recipe: table[name].best for recipe in recipes} for name in names}
    sweeps = []
    if args.sweep:
        for name in names:
            if name in errors:
                continue
            peer = table[name]
            for recipe in recipes:
                best = None
                for threads, prefetch in peer.sweep:
                    out = os.path.join(work, f"sweep_{name}_{recipe}_{threads}_{prefetch}.json")
                    try:
                        rate, _ = run_json(peer_command(peer, args, recipe, threads, prefetch,
                                                        epochs, out), out, args.timeout, name)
                    except RunFailed as e:
                        # A setting the peer refuses is recorded; the peer fails only when
                        # every setting does.
                        failure = error_text(e)
                        sweeps.append({"system": name, "recipe": recipe, "threads": threads,
                                       "prefetch": prefetch, "images_per_second": None,
                                       "error": failure})
                        print(f"[sweep {recipe}] {name} threads {threads} prefetch {prefetch}: "
                              f"failed: {failure}", flush=True)
                        continue
                    sweeps.append({"system": name, "recipe": recipe, "threads": threads,
                                   "prefetch": prefetch, "images_per_second": rate})
                    print(f"[sweep {recipe}] {name} threads {threads} prefetch {prefetch}: "
                          f"{rate:.1f} images/s", flush=True)
                    if best is None or rate > best[0]:
                        best = (rate, (threads, prefetch))
                if best is None:
                    errors[name] = f"every setting failed; the last: {failure}"
                    break
                settings[name][recipe] = best[1]

    # millrace's variants: the first is the one every ratio divides (decode.reduce auto, the
    # window-only decode, unless --reduce says otherwise); `both` adds the other setting as a row
    # of its own.
    reduces = ["auto", "off"] if args.reduce == "both" else [args.reduce]
    dcts = ["accurate", "fast"] if args.dct == "both" else [args.dct]
    variants = {}
    for reduce in reduces:
        for dct in dcts:
            key = "millrace" if not variants else f"millrace:{reduce}:{dct}"
            variants[key] = (reduce, dct)
    configs = {}
    for recipe in recipes:
        for key, (reduce, dct) in variants.items():
            configs[(key, recipe)] = millrace_config(recipe, args.root, args.images, args.threads,
                                                     args.batch, reduce, dct, epochs)
    # The prepared copy at the first reduce setting, with each DCT asked for.
    prepared = {}
    if prepared_root:
        for dct in dcts:
            key = ("millrace_prepared" if not prepared
                   else f"millrace_prepared:{reduces[0]}:{dct}")
            prepared[key] = (reduces[0], dct)
    for recipe in recipes:
        for key, (reduce, dct) in prepared.items():
            configs[(key, recipe)] = millrace_config(recipe, prepared_root, args.images,
                                                     args.threads, args.batch, reduce, dct, epochs)
    ours_systems = list(variants) + list(prepared)
    # --peer-variant NAME:LABEL=ARGS: peer NAME once more, with ARGS (split on spaces) added.
    peer_variants = {}
    for spec in args.peer_variant or []:
        head, _, extra = spec.partition("=")
        name, _, label = head.partition(":")
        if name not in table or not label or name in errors:
            print(f"[{head}] ignored: --peer-variant wants NAME:LABEL=ARGS with NAME a peer "
                  f"that runs", flush=True)
            continue
        peer_variants[head] = (name, extra.split())
        settings[head] = settings[name]
    systems = ours_systems + names + list(peer_variants) + ["limit"]
    print(f"settings: {settings}", flush=True)
    rates = {(s, r): [] for s in systems for r in recipes}
    details = {(s, r): [] for s in systems for r in recipes}

    def one_run(system, recipe, number):
        tag = f"{system}_{recipe}_round{number}"
        if system in ours_systems:
            rate, data, _ = bench_config(args, configs[(system, recipe)], tag.replace(":", "_"),
                                         work, 1)
        elif system == "limit":
            out = os.path.join(work, tag + ".json")
            rate, data = run_json([sys.executable, os.path.join(PEERS_DIR, "turbojpeg_limit.py"),
                                   "--root", args.root, "--recipe", recipe, "--threads",
                                   str(args.threads), "--batch", str(args.batch), "--images",
                                   str(args.images), "--epochs", str(epochs), "--json", out],
                                  out, args.timeout, "limit")
        else:
            name, extra = peer_variants.get(system, (system, []))
            out = os.path.join(work, tag.replace(":", "_") + ".json")
            threads, prefetch = settings[system][recipe]
            rate, data = run_json(peer_command(table[name], args, recipe, threads, prefetch,
                                               epochs, out) + extra, out, args.timeout, system)
        rates[(system, recipe)].append(rate)
        details[(system, recipe)].append(data)
        print(f"[{recipe} round {number + 1}] {system}: {rate:.1f} images/s", flush=True)

    for number in range(args.rounds):
        turn = number % len(systems)
        order = systems[turn:] + systems[:turn]
        print(f"round {number + 1} of {args.rounds}: {' '.join(order)}; load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        for recipe in recipes:
            for system in order:
                if system in errors:
                    continue
                try:
                    one_run(system, recipe, number)
                except RunFailed as e:
                    if system == "millrace":
                        raise
                    errors[system] = error_text(e)
                    print(f"[{system}] failed: {errors[system]}", flush=True)

    rows = []
    for recipe in recipes:
        ours = rates[("millrace", recipe)]
        ours_median = statistics.median(ours)
        limit = rates[("limit", recipe)]
        limit_median = statistics.median(limit) if limit else None
        for system in systems:
            if system in errors:
                continue
            values = rates[(system, recipe)]
            median = statistics.median(values)
            round_ratios = [a / b for a, b in zip(ours, values)]
            threads, prefetch = (settings[system][recipe] if system in settings
                                 else (args.threads, None))
            variant = variants.get(system, prepared.get(system))
            label = system.split(":")[0] + (
                f" (reduce: {variant[0]}, dct: {variant[1]})" if variant else
                f" ({system.split(':', 1)[1]}: {' '.join(peer_variants[system][1])})"
                if system in peer_variants else "")
            rows.append({
                "recipe": recipe, "system": system.split(":")[0], "images_per_second": median,
                "label": label,
                "base": system == "millrace",
                "images_per_second_per_core": median / args.cores,
                "millrace_ratio": ours_median / median,
                "round_ratios": round_ratios,
                "fraction_of_limit": median / limit_median if limit_median else None,
                "rounds": values, "threads": threads, "prefetch": prefetch,
                "output": ("int8 NCHW" if system in ours_systems else
                           details[(system, recipe)][-1].get(
                               "output", "float32 NCHW (ToTensor + Normalize)")),
            })
        for system, reason in errors.items():
            rows.append({"recipe": recipe, "system": "error", "peer": system,
                         "images_per_second": None, "error": reason})

    print(f"\nload after the rounds: {os.getloadavg()}")
    for recipe in recipes:
        print(f"\n{recipe}: {args.images} images x {epochs} epochs, batch {args.batch}, "
              f"{args.rounds} interleaved rounds (medians)")
        cells = []
        failed = []
        for row in rows:
            if row["recipe"] != recipe:
                continue
            if row["system"] == "error":
                cells.append((f"{row['peer']}", "error", "-", "-", "-", "-", "-"))
                failed.append(f"  {row['peer']}: {row['error']}")
                continue
            rr = row["round_ratios"]
            prefetch = {None: None, -1: "AUTOTUNE"}.get(row["prefetch"], row["prefetch"])
            setting = f"{row['threads']} threads" + (
                f", prefetch {prefetch}" if prefetch is not None else "")
            cells.append((row["label"], f"{row['images_per_second']:.1f}",
                          f"{row['images_per_second_per_core']:.1f}",
                          f"{row['millrace_ratio']:.2f}x",
                          f"{min(rr):.2f}-{max(rr):.2f}x",
                          (f"{row['fraction_of_limit']:.2f}" if row["fraction_of_limit"]
                           else "-"), setting))
        print_table(("system", "images/s", "per core", "millrace / it", "rounds",
                     "of limit", "setting"), cells)
        if failed:
            print("\n".join(["errors:"] + failed))

    if args.json:
        write_json(args.json, {
            "root": os.path.abspath(args.root), "images": args.images, "epochs": epochs,
            "batch": args.batch, "threads": args.threads, "cores": args.cores,
            "rounds": args.rounds, "reduce": args.reduce, "dct": args.dct,
            "load_before": load_before, "load_after": list(os.getloadavg()),
            "settings": {n: {r: list(s) for r, s in v.items()} for n, v in settings.items()},
            "sweep": sweeps, "rows": rows,
            "millrace_configs": {f"{s}/{r}": c for (s, r), c in configs.items()},
        })
    return 0
