#!/usr/bin/python3
"""Correctness checks of millrace's `infer` stage on the exported models; exits 1 on a failure.

  /usr/bin/python3 bench/infer_accuracy.py [--millrace build/millrace]
      [--models resnet18,resnet50,mobilenet_v2] [--images 96] [--json out/infer_accuracy.json]

Per model, configs/<model>_int8.yaml (ResNet-18 / ResNet-50; MobileNetV2 borrows ResNet-18's
config with its own model file) is rewritten with an `npy` sink after `infer` and run on two
disjoint slices of a fixed permutation (--seed) of data/imagenet-like/labels.lst, which is sorted
by class:
  calibration  the first CALIBRATION_BATCHES x 32 images: an int8 run that writes the table
  evaluation   the next IMAGES images: int8 with that table, and fp32
so that the int8 figures are measured on images the calibration never saw.

(a) fp32 against independent implementations, on the very batch millrace's network saw. The npy
    data are int8 (q) with the loader's quantization (unit u_c, zero point z, batches.jsonl); the
    model sees x_c = (q - z) * u_c / std_c, std from the config's `infer.input`. That x goes
    through OpenCV's DNN module (cv2.dnn.readNetFromONNX) and through PyTorch with the ONNX file's
    weights loaded into torchvision's model. Error = max |millrace - reference| / max |reference|
    over the logits; it must be <= 1e-4 for every reference that can read the model (OpenCV 4.6
    cannot read MobileNetV2's Clip: reported).
(b) int8 against fp32 (millrace's own, same batches): cosine similarity of each image's logits
    (mean over images, minimum shown) must be >= 0.99, and >= 0.95 after subtracting each batch's
    mean logit vector from each side (random-weight networks give every image similar logits: the
    centred figure is the one that tells images apart), for ResNet-18 and ResNet-50; MobileNetV2
    is reported. Top-1 agreement is reported. For reference, the same figures for PyTorch's eager
    int8 (bench/peers/torch_int8.py: onednn engine, calibrated on the same calibration images as
    millrace saw them) against PyTorch's fp32, and millrace's int8 with the same table but
    `infer.winograd: false` (direct convolutions only: what the Winograd kernels cost).
(c) reported: the float32 loader (normalize dtype float32 with the model's std, the network's
    calibrated quantize path, calibrated the same way) against the int8 loader, both int8 networks.
Both fp32 and int8 runs must also have seen the same bytes (the same samples, in the same order).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

try:
    import cv2
    import numpy as np
    import torch
    import yaml
except ImportError:
    # Debian's python3-torch and python3-opencv live in the system interpreter.
    if os.path.exists("/usr/bin/python3") and not os.environ.get("MILLRACE_NO_REEXEC") and \
            os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.environ["MILLRACE_NO_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
import torch_int8  # noqa: E402  (the peer's model building and quantization)
from benchlib import print_table  # noqa: E402

MODELS = ("resnet18", "resnet50", "mobilenet_v2")
GATED = ("resnet18", "resnet50")  # (b) is a requirement for these, a report for the others
FP32_LIMIT = 1e-4
COSINE_LIMIT = 0.99
CENTRED_LIMIT = 0.95
BATCH = 32
MODEL_STD = [58.395, 57.12, 57.375]


class CheckError(Exception):
    pass


# ----------------------------------------------------------------------------- millrace runs

def write_list(path, lines):
    with open(path, "w") as f:
        f.writelines(lines)


def make_config(model, list_path, out_dir, precision, loader, table, calibration_batches,
                calibration_mode, winograd, channel_ranges):
    """configs/<model>_int8.yaml with absolute paths, the given slice, and an npy sink."""
    source = "resnet18" if model == "mobilenet_v2" else model
    with open(os.path.join(REPO, "configs", f"{source}_int8.yaml")) as f:
        config = yaml.safe_load(f)
    stages = []
    for stage in config["stages"]:
        kind = stage["type"]
        if kind == "files":
            # Relative to the config's folder, as millrace reads it.
            stage["root"] = os.path.normpath(os.path.join(REPO, "configs", stage["root"]))
            stage["list"] = list_path
        elif kind == "normalize" and loader == "float32":
            stage["dtype"] = "float32"
            stage["std"] = MODEL_STD
        elif kind == "infer":
            stage["model"] = os.path.join(REPO, "data", "models", f"{model}.onnx")
            stage["precision"] = precision
            stage["winograd"] = winograd
            stage["channel_ranges"] = channel_ranges
            stage["calibration"] = {"batches": calibration_batches, "mode": calibration_mode,
                                    "table": table}
            stages.append(stage)
            stages.append({"type": "npy", "dir": out_dir})
            continue
        elif kind == "predictions":
            continue
        stages.append(stage)
    config["stages"] = stages
    return config


def millrace_run(args, model, work, name, list_path, images, precision, loader, table,
                 winograd=True):
    out_dir = os.path.join(work, f"{model}_{name}")
    config = make_config(model, list_path, out_dir, precision, loader, table,
                         args.calibration_batches, args.calibration_mode, winograd,
                         not args.no_channel_ranges)
    config_path = os.path.join(work, f"{model}_{name}.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    result_json = os.path.join(work, f"{model}_{name}.json")
    cmd = [args.millrace, "run", config_path, "--json", result_json, "--quiet"]
    started = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                cwd=REPO)
    except subprocess.TimeoutExpired:
        raise CheckError(f"millrace did not finish within {args.timeout} s: {' '.join(cmd)}")
    if result.returncode != 0:
        raise CheckError(f"millrace failed with status {result.returncode}: {' '.join(cmd)}\n"
                         f"{result.stdout}{result.stderr}")
    with open(result_json) as f:
        report = json.load(f)
    if report.get("images") != images:
        raise CheckError(f"{' '.join(cmd)}: delivered {report.get('images')} images, "
                         f"{images} expected")
    print(f"[{model}] millrace {name}: {images} images, "
          f"{report['metrics'].get('infer.inference_images_per_second', 0):.1f} images/s "
          f"inference ({time.perf_counter() - started:.1f} s)", flush=True)
    return out_dir, {"command": cmd, "config": config, "report": report}


def read_npy_run(out_dir, std):
    """The run's batches as model input x (float32 NCHW), raw data (NCHW), logits and paths."""
    with open(os.path.join(out_dir, "batches.jsonl")) as f:
        index = [json.loads(line) for line in f]
    if not index:
        raise CheckError(f"{out_dir}: no batches")
    xs, raws, logits, paths = [], [], [], []
    for entry in sorted(index, key=lambda e: e["index"]):
        stem = os.path.join(out_dir, f"batch_{entry['index']:06d}")
        data = np.load(stem + "_data.npy")
        out = np.load(stem + "_logits.npy")
        if entry["pad"]:
            raise CheckError(f"{stem}: padded batch (use a multiple of {BATCH} images)")
        if entry["layout"] == "NHWC":
            data = data.transpose(0, 3, 1, 2)
        elif entry["layout"] != "NCHW":
            raise CheckError(f"{stem}: unexpected layout {entry['layout']}")
        data = np.ascontiguousarray(data)
        q = entry.get("quantization")
        if q is not None:
            unit = np.asarray(q["unit"], dtype=np.float64).reshape(1, 3, 1, 1)
            zero = float(q["zero_point"])
        elif entry["dtype"] == "float32":
            unit = np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
            zero = 0.0
        else:
            raise CheckError(f"{stem}: {entry['dtype']} batch without quantization metadata")
        x = (data.astype(np.float64) - zero) * unit / np.asarray(std).reshape(1, 3, 1, 1)
        xs.append(x.astype(np.float32))
        raws.append(data)
        logits.append(out.astype(np.float64))
        paths += entry["paths"]
    return {"x": xs, "raw": raws, "logits": logits, "paths": paths, "dtype": index[0]["dtype"],
            "layout": index[0]["layout"], "quantization": index[0].get("quantization")}


# ----------------------------------------------------------------------------- measures

def relative_error(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def cosines(a, b):
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-300)


def agreement(test_batches, ref_batches):
    """Per-image cosine (raw and batch-centred) and top-1 agreement of two lists of batches."""
    raw, centred, same = [], [], []
    for t, r in zip(test_batches, ref_batches):
        raw.append(cosines(t, r))
        centred.append(cosines(t - t.mean(axis=0, keepdims=True),
                               r - r.mean(axis=0, keepdims=True)))
        same.append(t.argmax(axis=1) == r.argmax(axis=1))
    raw, centred, same = np.concatenate(raw), np.concatenate(centred), np.concatenate(same)
    return {"cosine_mean": float(raw.mean()), "cosine_min": float(raw.min()),
            "centred_cosine_mean": float(centred.mean()),
            "centred_cosine_min": float(centred.min()),
            "top1_agreement": float(same.mean()), "images": int(same.size)}


def opencv_logits(onnx_path, xs):
    try:
        net = cv2.dnn.readNetFromONNX(onnx_path)
    except cv2.error as error:
        lines = [line.strip("> ") for line in str(error).splitlines() if "Node [" in line]
        return None, (lines[0] if lines else str(error).strip().splitlines()[-1])
    out = []
    for x in xs:
        net.setInput(x)
        out.append(net.forward().astype(np.float64))
    return out, None


def torch_logits(model, xs):
    with torch.inference_mode():
        return [model(torch.from_numpy(x)).numpy().astype(np.float64) for x in xs]


# ----------------------------------------------------------------------------- per model

def check_model(args, model, work, lines):
    onnx_path = os.path.join(REPO, "data", "models", f"{model}.onnx")
    calib_images = args.calibration_batches * BATCH
    calib_list = os.path.join(work, "calibration.lst")
    eval_list = os.path.join(work, "evaluation.lst")
    # labels.lst is sorted by class: a fixed permutation spreads both slices over every class.
    order = np.random.RandomState(args.seed).permutation(len(lines))
    write_list(calib_list, [lines[i] for i in order[:calib_images]])
    write_list(eval_list, [lines[i] for i in order[calib_images:calib_images + args.images]])

    runs = {}
    table = os.path.join(work, f"{model}_s8.calib.json")
    table_f32 = os.path.join(work, f"{model}_f32.calib.json")
    for stale in (table, table_f32):  # a kept folder's old table would be loaded, not rewritten
        if os.path.exists(stale):
            os.remove(stale)
    calib_dir, runs["int8_calibration"] = millrace_run(args, model, work, "int8_calibration",
                                                       calib_list, calib_images, "int8", "int8",
                                                       table)
    int8_dir, runs["int8"] = millrace_run(args, model, work, "int8", eval_list, args.images,
                                          "int8", "int8", table)
    fp32_dir, runs["fp32"] = millrace_run(args, model, work, "fp32", eval_list, args.images,
                                          "fp32", "int8", table)
    # The same table without the Winograd kernels: what they cost in accuracy.
    direct_dir, runs["int8_direct"] = millrace_run(args, model, work, "int8_direct", eval_list,
                                                   args.images, "int8", "int8", table,
                                                   winograd=False)
    f32_loader = None
    if not args.skip_f32_loader:
        millrace_run(args, model, work, "f32_loader_calibration", calib_list, calib_images,
                     "int8", "float32", table_f32)
        f32_dir, runs["f32_loader"] = millrace_run(args, model, work, "f32_loader", eval_list,
                                                   args.images, "int8", "float32", table_f32)
        f32_loader = read_npy_run(f32_dir, MODEL_STD)

    calib = read_npy_run(calib_dir, MODEL_STD)
    int8 = read_npy_run(int8_dir, MODEL_STD)
    fp32 = read_npy_run(fp32_dir, MODEL_STD)
    direct = read_npy_run(direct_dir, MODEL_STD)

    failures = []
    result = {"model": model, "images": args.images, "calibration_images": calib_images,
              "int8_batch": {"dtype": int8["dtype"], "layout": int8["layout"],
                             "quantization": int8["quantization"]},
              "fp32_batch": {"dtype": fp32["dtype"], "layout": fp32["layout"]}}

    # The int8 and fp32 runs must have fed their networks the same samples and bytes.
    same_input = int8["paths"] == fp32["paths"] and all(
        np.array_equal(a, b) for a, b in zip(int8["raw"], fp32["raw"]))
    result["int8_and_fp32_runs_saw_same_bytes"] = bool(same_input)
    if not same_input:
        failures.append("the int8 and fp32 runs' batches differ (samples or bytes)")

    # (a) fp32 against OpenCV DNN and PyTorch on the same x.
    references = {}
    cv_out, cv_reason = opencv_logits(onnx_path, fp32["x"])
    if cv_out is None:
        references["opencv"] = {"error": None, "unavailable": f"OpenCV cannot read the model: "
                                                               f"{cv_reason}"}
    else:
        references["opencv"] = {"error": relative_error(np.concatenate(fp32["logits"]),
                                                        np.concatenate(cv_out))}
    float_model, weights = torch_int8.build_float(model, onnx_path, quantizable_model=False)
    if not weights.startswith("from "):
        raise CheckError(f"{onnx_path}: cannot load the ONNX weights into PyTorch")
    torch_fp32 = torch_logits(float_model, fp32["x"])
    references["pytorch"] = {"error": relative_error(np.concatenate(fp32["logits"]),
                                                     np.concatenate(torch_fp32))}
    if cv_out is not None:
        references["opencv_vs_pytorch"] = {
            "error": relative_error(np.concatenate(cv_out), np.concatenate(torch_fp32))}
    for name in ("opencv", "pytorch"):
        error = references[name]["error"]
        if error is not None and not error <= FP32_LIMIT:
            failures.append(f"(a) fp32 logits vs {name}: max relative error {error:.3g} > "
                            f"{FP32_LIMIT:g}")
    result["fp32_vs_reference"] = references

    # (b) int8 against fp32, millrace's and, for reference, PyTorch's.
    b = agreement(int8["logits"], fp32["logits"])
    result["int8_vs_fp32"] = b
    result["int8_direct_vs_fp32"] = agreement(direct["logits"], fp32["logits"])
    result["winograd_convolutions"] = runs["int8"]["report"]["metrics"].get(
        "infer.winograd_convolutions")
    if model in GATED:
        if not b["cosine_mean"] >= COSINE_LIMIT:
            failures.append(f"(b) int8 vs fp32 cosine {b['cosine_mean']:.4f} < {COSINE_LIMIT}")
        if not b["centred_cosine_mean"] >= CENTRED_LIMIT:
            failures.append(f"(b) int8 vs fp32 centred cosine {b['centred_cosine_mean']:.4f} < "
                            f"{CENTRED_LIMIT}")
    # PyTorch's int8 is compared with the fp32 of the model it quantizes: for MobileNetV2 that
    # is torchvision's quantizable variant (ReLU for ReLU6), not the exported network.
    engine = torch_int8.choose_engine()
    quantized, _ = torch_int8.build_float(model, onnx_path)
    torch_fp32_q = torch_fp32 if model.startswith("resnet") else torch_logits(quantized, fp32["x"])
    torch_int8.quantize(quantized, [torch.from_numpy(x) for x in calib["x"]], engine)
    result["pytorch_int8_vs_fp32"] = dict(agreement(torch_logits(quantized, fp32["x"]),
                                                    torch_fp32_q), engine=engine)

    # (c) float32 loader + quantize against the int8 loader.
    if f32_loader is not None:
        if f32_loader["paths"] != int8["paths"]:
            failures.append("(c) the float32-loader run saw other samples than the int8 run")
        result["f32_loader_vs_int8_loader"] = agreement(f32_loader["logits"], int8["logits"])
        result["f32_loader_vs_fp32"] = agreement(f32_loader["logits"], fp32["logits"])
        result["f32_loader_batch"] = {"dtype": f32_loader["dtype"],
                                      "layout": f32_loader["layout"]}

    result["failures"] = failures
    result["runs"] = {k: {"command": v["command"], "metrics": v["report"].get("metrics")}
                      for k, v in runs.items()}
    return result


def fmt_error(ref):
    if ref.get("error") is None:
        return "n/a"
    return f"{ref['error']:.2e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--millrace", default=os.path.join(REPO, "build", "millrace"))
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--images", type=int, default=96,
                        help="evaluation images, a multiple of 32 (default %(default)s)")
    parser.add_argument("--calibration-batches", type=int, default=8,
                        help="batches of 32 to calibrate on, as the configs do (default "
                             "%(default)s)")
    parser.add_argument("--calibration-mode", choices=["minmax", "entropy", "mse"], default="minmax",
                        help="millrace's calibration mode (default %(default)s, as the configs)")
    parser.add_argument("--no-channel-ranges", action="store_true",
                        help="infer.channel_ranges: false (one scale per value, as before it "
                             "existed)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the permutation of labels.lst that the calibration and "
                             "evaluation slices are taken from (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="OpenCV's and PyTorch's threads (default %(default)s)")
    parser.add_argument("--skip-f32-loader", action="store_true",
                        help="leave out (c), the float32-loader runs")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--keep", help="keep configs, npy outputs and tables in this folder")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per millrace run")
    args = parser.parse_args()

    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in MODELS for m in models):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if args.images < BATCH or args.images % BATCH or args.calibration_batches < 1:
        parser.error(f"--images must be a positive multiple of {BATCH}, "
                     "--calibration-batches >= 1")
    args.millrace = os.path.abspath(args.millrace)
    if not (os.path.isfile(args.millrace) and os.access(args.millrace, os.X_OK)):
        parser.error(f"{args.millrace} is not an executable file")
    for m in models:
        if not os.path.isfile(os.path.join(REPO, "data", "models", f"{m}.onnx")):
            parser.error(f"data/models/{m}.onnx is missing (make it with bench/models/export.py)")
    with open(os.path.join(REPO, "data", "imagenet-like", "labels.lst")) as f:
        lines = f.readlines()
    if len(lines) < args.calibration_batches * BATCH + args.images:
        parser.error(f"labels.lst has {len(lines)} images; "
                     f"{args.calibration_batches * BATCH + args.images} are needed")

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    cv2.setLogLevel(0)  # an unreadable model is reported once, in the table

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        work_context, work = None, os.path.abspath(args.keep)
    else:
        work_context = tempfile.TemporaryDirectory(prefix="millrace_infer_accuracy_")
        work = work_context.name
    results = []
    try:
        for m in models:
            results.append(check_model(args, m, work, lines))
    except CheckError as e:
        print(f"infer_accuracy: {e}", file=sys.stderr)
        return 1
    finally:
        if work_context is not None:
            work_context.cleanup()

    print()
    print(f"(a) fp32 logits: max |millrace - reference| / max |reference| "
          f"(limit {FP32_LIMIT:g}), {args.images} images")
    print_table(("model", "vs OpenCV DNN", "vs PyTorch", "OpenCV vs PyTorch"),
                [(r["model"], fmt_error(r["fp32_vs_reference"]["opencv"]),
                  fmt_error(r["fp32_vs_reference"]["pytorch"]),
                  fmt_error(r["fp32_vs_reference"].get("opencv_vs_pytorch", {})))
                 for r in results])
    for r in results:
        unavailable = r["fp32_vs_reference"]["opencv"].get("unavailable")
        if unavailable:
            print(f"  {r['model']}: {unavailable}")
    print()
    print(f"(b) int8 vs fp32 logits, per image (mean / min); limits {COSINE_LIMIT} and "
          f"{CENTRED_LIMIT} for {', '.join(GATED)}")
    rows = []
    for r in results:
        for who, key in (("millrace", "int8_vs_fp32"),
                         ("millrace no Winograd", "int8_direct_vs_fp32"),
                         ("pytorch", "pytorch_int8_vs_fp32"),
                         ("millrace f32 loader", "f32_loader_vs_fp32")):
            if key not in r:
                continue
            a = r[key]
            rows.append((f"{r['model']} {who}", f"{a['cosine_mean']:.4f} / {a['cosine_min']:.4f}",
                         f"{a['centred_cosine_mean']:.4f} / {a['centred_cosine_min']:.4f}",
                         f"{a['top1_agreement']:.3f}"))
    print_table(("model", "cosine", "centred cosine", "top-1 agreement"), rows)
    print("  millrace: as configured (infer.winograd: true); no Winograd: the same table, "
          "infer.winograd: false (direct convolutions only)")
    print("  pytorch: PyTorch's eager int8 against its own fp32 on the same input (MobileNetV2: "
          "torchvision's quantizable variant, ReLU for ReLU6)")
    if any("f32_loader_vs_int8_loader" in r for r in results):
        print()
        print("(c) float32 loader + quantize vs int8 loader, both int8 networks")
        print_table(("model", "cosine", "centred cosine", "top-1 agreement"),
                    [(r["model"],
                      f"{r['f32_loader_vs_int8_loader']['cosine_mean']:.4f} / "
                      f"{r['f32_loader_vs_int8_loader']['cosine_min']:.4f}",
                      f"{r['f32_loader_vs_int8_loader']['centred_cosine_mean']:.4f} / "
                      f"{r['f32_loader_vs_int8_loader']['centred_cosine_min']:.4f}",
                      f"{r['f32_loader_vs_int8_loader']['top1_agreement']:.3f}")
                     for r in results if "f32_loader_vs_int8_loader" in r])

    failures = [f"{r['model']}: {f}" for r in results for f in r["failures"]]
    print()
    for f in failures:
        print(f"FAIL {f}")
    print("infer_accuracy: " + ("FAILED" if failures else "all checks passed"))
    if args.json:
        report = {"images": args.images, "calibration_batches": args.calibration_batches,
                  "calibration_mode": args.calibration_mode, "seed": args.seed,
                  "limits": {"fp32_relative_error": FP32_LIMIT, "cosine": COSINE_LIMIT,
                             "centred_cosine": CENTRED_LIMIT, "gated_models": list(GATED)},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "versions": {"opencv": cv2.__version__, "torch": torch.__version__,
                               "numpy": np.__version__},
                  "results": results, "failures": failures, "passed": not failures}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
