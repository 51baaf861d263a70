#!/usr/bin/python3
"""The PyTorch int8 inference peer: eager post-training static quantization of torchvision models.

For each model (torchvision's quantizable ResNet-18 / ResNet-50, MobileNetV2 on request):
  build it with quantize=False after torch.manual_seed(SEED) (bench/models/export.py's seed) and,
  when ONNX_DIR/<name>.onnx exists, load that file's weights, so that the peer runs the very
  network millrace runs; fuse_model(); the qconfig of the quantized engine ('onednn' when this
  torch has it, else 'fbgemm', else 'qnnpack', and a line says which); prepare; calibrate on
  CALIBRATION batches of real images spread over the dataset's list (resize 256, center crop 224,
  ToTensor, Normalize with the ImageNet mean and std, as export.py prepares them); convert.
Then images/s of inference alone: a fixed batch of BATCH images at 224x224 (float32 NCHW, the
model's QuantStub quantizes it, as a user of eager quantization feeds it), torch.set_num_threads
(THREADS), WARMUP untimed batches, then REPEATS timings of BATCHES batches each; the median of
the repeats is reported. fp32 of the same model (same weights, not fused) is timed the same way.

Prints one line per model and precision and, with --json, writes
{"peer": "pytorch-int8", "results": [{"model", "precision", "images_per_second", ...}], ...}.

The functions are importable (bench/infer_accuracy.py uses them for PyTorch's own int8 figure).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

try:
    import numpy as np
    import torch
    import torchvision
    import torchvision.models.quantization as quantizable
    from PIL import Image
    from torchvision import transforms
except ImportError:
    # Debian's python3-torch lives in the system interpreter; a pyenv or venv python3 earlier on
    # PATH does not see it.
    if os.path.exists("/usr/bin/python3") and not os.environ.get("MILLRACE_NO_REEXEC") and \
            os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.environ["MILLRACE_NO_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPORT_SEED = 2024  # bench/models/export.py's default seed
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def choose_engine():
    """The quantized engine: oneDNN first (what millrace runs on), else the x86 default."""
    supported = torch.backends.quantized.supported_engines
    for engine in ("onednn", "fbgemm", "qnnpack"):
        if engine in supported:
            return engine
    raise SystemExit(f"torch {torch.__version__} has no quantized engine (supported: {supported})")


def read_list(root, count):
    """`count` image paths spread evenly over ROOT/labels.lst (which is sorted by class)."""
    list_path = os.path.join(root, "labels.lst")
    paths = []
    with open(list_path) as f:
        for number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                raise SystemExit(f"{list_path}:{number}: expected 'index<TAB>label<TAB>path'")
            paths.append(os.path.join(root, fields[-1]))
    if len(paths) < count:
        raise SystemExit(f"{list_path}: {len(paths)} images, {count} needed")
    return [paths[i * len(paths) // count] for i in range(count)]


def load_images(root, count):
    """float32 NCHW [count, 3, 224, 224] as torchvision's reference recipe prepares them."""
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    tensors = []
    for path in read_list(root, count):
        with Image.open(path) as image:
            tensors.append(transform(image.convert("RGB")))
    return torch.stack(tensors)


def load_onnx_weights(model, onnx_path):
    """Copies every initializer of an export.py file into the model by parameter name.

    export.py keeps PyTorch's names for the initializers (BatchNormalization stays in the graph),
    so the state dict and the file must match one to one; anything else is an error, not a
    silently half-loaded model.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(onnx_path).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    state = model.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(wanted - weights.keys())
    extra = sorted(weights.keys() - wanted)
    if missing or extra:
        raise SystemExit(f"{onnx_path}: initializers do not match torchvision's parameters "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name in wanted:
        if tuple(weights[name].shape) != tuple(state[name].shape):
            raise SystemExit(f"{onnx_path}: {name} has shape {tuple(weights[name].shape)}, "
                             f"the model expects {tuple(state[name].shape)}")
    model.load_state_dict({k: weights[k] for k in wanted}, strict=False)


def build_float(name, onnx_path=None, seed=EXPORT_SEED, quantizable_model=True):
    """A torchvision model in fp32 eval mode; (model, description of its weights).

    quantizable_model=False builds the plain model that export.py exported. The quantizable
    ResNets compute the same function; the quantizable MobileNetV2 does not: torchvision replaces
    its ReLU6 activations with ReLU (so that they fuse), whatever `quantize` says.
    """
    torch.manual_seed(seed)
    if quantizable_model:
        model = getattr(quantizable, name)(weights=None, quantize=False)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    if onnx_path and os.path.isfile(onnx_path):
        load_onnx_weights(model, onnx_path)
        weights = f"from {onnx_path}"
    else:
        weights = f"random (seed {seed}; no ONNX file to load)"
    model.eval()
    return model, weights


def quantize(model, calibration, engine):
    """Eager post-training static quantization of a quantizable torchvision model, in place."""
    torch.backends.quantized.engine = engine
    model.eval()
    model.fuse_model()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    torch.ao.quantization.prepare(model, inplace=True)
    with torch.inference_mode():
        for batch in calibration:
            model(batch)
    with warnings.catch_warnings():
        # MobileNetV2's blocks without a residual connection still own an (unused) quantized
        # add whose observer never sees data; its default parameters are never used either.
        warnings.filterwarnings("ignore", message="must run observer before calling")
        torch.ao.quantization.convert(model, inplace=True)
    return model


def time_model(model, batch, warmup, batches, repeats):
    """Median images/s over `repeats` timings of `batches` forward passes, and every repeat."""
    rates = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                model(batch)
            rates.append(batches * batch.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates), rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50",
                        help="comma-separated subset of " + ",".join(MODELS) +
                             " (default %(default)s)")
    parser.add_argument("--precisions", default="int8,fp32",
                        help="int8, fp32 or both (default %(default)s)")
    parser.add_argument("--data", default=os.path.join(REPO, "data", "imagenet-like"),
                        help="dataset folder with labels.lst for calibration and the timed batch "
                             "(default %(default)s)")
    parser.add_argument("--onnx-dir", default=os.path.join(REPO, "data", "models"),
                        help="load <name>.onnx weights from here when present "
                             "(default %(default)s; '' for random weights)")
    parser.add_argument("--seed", type=int, default=EXPORT_SEED,
                        help="torch.manual_seed before building (default %(default)s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--calibration-batches", type=int, default=8,
                        help="batches observed before convert (default %(default)s, as the "
                             "millrace configs calibrate)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=5, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    names = [n for n in args.models.split(",") if n]
    precisions = [p for p in args.precisions.split(",") if p]
    if not names or any(n not in MODELS for n in names):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    if not precisions or any(p not in ("int8", "fp32") for p in precisions):
        parser.error("--precisions: int8, fp32 or int8,fp32")
    if min(args.batch, args.threads, args.calibration_batches, args.batches, args.repeats) < 1 \
            or args.warmup < 0:
        parser.error("--batch, --threads, --calibration-batches, --batches and --repeats must be "
                     ">= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    engine = choose_engine()
    if engine != "onednn":
        print(f"torch_int8: this torch has no 'onednn' quantized engine "
              f"(supported: {torch.backends.quantized.supported_engines}); using '{engine}'",
              file=sys.stderr)

    started = time.perf_counter()
    images = load_images(args.data, args.calibration_batches * args.batch)
    calibration = list(images.split(args.batch))
    batch = calibration[0].contiguous()
    load_seconds = time.perf_counter() - started

    results = []
    for name in names:
        onnx_path = os.path.join(args.onnx_dir, f"{name}.onnx") if args.onnx_dir else None
        for precision in precisions:
            model, weights = build_float(name, onnx_path, args.seed)
            calibration_seconds = 0.0
            if precision == "int8":
                t0 = time.perf_counter()
                quantize(model, calibration, engine)
                calibration_seconds = time.perf_counter() - t0
            rate, rates = time_model(model, batch, args.warmup, args.batches, args.repeats)
            label = f"int8 ({engine})" if precision == "int8" else "fp32"
            print(f"pytorch {name} {label}: {rate:.1f} images/s (median of {args.repeats} x "
                  f"{args.batches} batches of {args.batch}, {args.threads} threads; repeats "
                  f"{', '.join(f'{r:.1f}' for r in rates)})", flush=True)
            results.append({
                "model": name,
                "precision": precision,
                "engine": engine if precision == "int8" else None,
                "images_per_second": rate,
                "repeat_images_per_second": rates,
                "calibration_seconds": calibration_seconds,
                "weights": weights,
            })

    if args.json:
        report = {
            "peer": "pytorch-int8",
            "batch": args.batch,
            "threads": args.threads,
            "warmup": args.warmup,
            "batches": args.batches,
            "repeats": args.repeats,
            "calibration_batches": args.calibration_batches,
            "quantized_engine": engine,
            "qconfig": str(torch.ao.quantization.get_default_qconfig(engine)),
            "image_load_seconds": load_seconds,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "results": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
