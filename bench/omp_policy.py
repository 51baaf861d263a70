#!/usr/bin/python3
"""How libgomp's wait policy shares the 2 cores between oneDNN and the data stages.

  /usr/bin/python3 bench/omp_policy.py [--millrace build/millrace] [--model resnet50]
      [--images 320] [--repeats 3] [--json out/bench/omp_policy.json]

configs/<model>_int8.yaml runs end to end (JPEG files -> int8 batches -> int8 network) under
each policy in turn, --repeats rounds taking turns:

  spin 1000      GOMP_SPINCOUNT=1000, what the `millrace` command sets when the user set neither
                 variable: an idle OpenMP thread spins about 25 microseconds, then sleeps
  passive        OMP_WAIT_POLICY=PASSIVE: every wait is a futex sleep
  active         OMP_WAIT_POLICY=ACTIVE: idle OpenMP threads spin (libgomp's spinning default)
  passive, direct  OMP_WAIT_POLICY=PASSIVE and infer.winograd=false

For each: end-to-end images/s (steady state), the network's rate inside the running pipeline,
its rate alone (`infer.alone`, data stages idle), and the CPU seconds the whole process used per
image (user + system, from the kernel's accounting of the child). A policy that oversubscribes
the cores shows as end to end falling below inference alone while CPU per image rises.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile

from benchlib import RunFailed, print_table, run, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
POLICIES = (
    ("spin 1000", {"GOMP_SPINCOUNT": "1000"}, []),
    ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}, []),
    ("active", {"OMP_WAIT_POLICY": "ACTIVE"}, []),
    ("passive, direct", {"OMP_WAIT_POLICY": "PASSIVE"}, ["infer.winograd=false"]),
)


def run_once(args, work, name, env_extra, sets):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    stem = name.replace(" ", "_").replace(",", "")
    result_json = os.path.join(work, stem + ".json")
    cmd = [args.millrace, "run", os.path.join(REPO, "configs", f"{args.model}_int8.yaml"),
           "--json", result_json, "--quiet",
           "--set", f"files.limit={args.images}",
           "--set", f"predictions.path={os.path.join(work, stem + '.jsonl')}",
           "--set", f"infer.calibration.table={os.path.join(work, 'table.calib.json')}",
           "--set", f"infer.alone={args.alone}"]
    for s in sets:
        cmd += ["--set", s]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run(cmd, args.timeout, f"millrace ({name})", cwd=REPO, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(result_json) as f:
        report = json.load(f)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    metrics = report["metrics"]
    return {"end_to_end": float(report["images_per_second"]),
            "in_pipeline": float(metrics["infer.inference_images_per_second"]),
            "alone": float(metrics["infer.alone_images_per_second"]),
            "cpu_ms_per_image": 1000.0 * cpu / (args.images + args.alone * 32),
            "command": cmd, "environment": env_extra}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--millrace", default=os.path.join(REPO, "build", "millrace"))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--alone", type=int, default=4, help="infer.alone batches per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        return measure(args)
    except RunFailed as e:
        print(f"omp_policy: {e}", file=sys.stderr)
        return 1


def measure(args):
    runs = {name: [] for name, _, _ in POLICIES}
    with tempfile.TemporaryDirectory(prefix="millrace-omp-") as work:
        # The first run writes the calibration table the others load.
        run_once(args, work, "calibration", dict(POLICIES[0][1]), [])
        for r in range(args.repeats):
            for name, env_extra, sets in POLICIES:
                runs[name].append(run_once(args, work, name, env_extra, sets))
                x = runs[name][-1]
                print(f"[round {r + 1}] {name}: end to end {x['end_to_end']:.1f}, in the "
                      f"pipeline {x['in_pipeline']:.1f}, alone {x['alone']:.1f} images/s, "
                      f"{x['cpu_ms_per_image']:.2f} CPU ms/image", flush=True)

    print()
    print(f"{args.model}, {args.images} images per run, medians of {args.repeats} rounds")
    header = ("policy", "end to end", "in the pipeline", "alone", "end to end / alone",
              "CPU ms / image")
    rows = []
    summary = {}
    for name, _, _ in POLICIES:
        med = {k: statistics.median(x[k] for x in runs[name])
               for k in ("end_to_end", "in_pipeline", "alone", "cpu_ms_per_image")}
        summary[name] = dict(med, rounds=runs[name])
        rows.append((name, f"{med['end_to_end']:.1f}", f"{med['in_pipeline']:.1f}",
                     f"{med['alone']:.1f}", f"{med['end_to_end'] / med['alone']:.2f}",
                     f"{med['cpu_ms_per_image']:.2f}"))
    print_table(header, rows)
    if args.json:
        write_json(args.json, {"model": args.model, "images": args.images, "policies": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
