#!/usr/bin/env python3
"""int8 inference peers on an ONNX file: OpenVINO + NNCF, ONNX Runtime, PyTorch 2 (x86 backend).

  .venv-infer-peers/bin/python bench/peers/infer_peers.py speed --systems openvino,onnxruntime,torch2
      --model data/models/resnet18.onnx --calibration-list LIST --batches 32,1 --json OUT
  .venv-infer-peers/bin/python bench/peers/infer_peers.py predict --systems ... --model M.onnx
      --calibration-list LIST --images LIST --json OUT

(.venv-infer-peers is made by `scripts/setup --peers`.) Every system reads the same ONNX file
and is quantized post-training, statically, on the same calibration images, each its own way:

  openvino     openvino.Core().read_model(FILE); int8: nncf.quantize(model, nncf.Dataset(...),
               subset_size=len(calibration)) (NNCF's defaults: mixed preset, per-channel
               weights, min/max-style ranges per its algorithms); compiled for CPU with
               INFERENCE_NUM_THREADS = THREADS, NUM_STREAMS 1, the input reshaped to the batch.
               The fp32 model is compiled with INFERENCE_PRECISION_HINT f32 (else OpenVINO runs it
               in bf16 on a CPU with AMX); the int8 model with OpenVINO's default.
  onnxruntime  int8: onnxruntime.quantization.quant_pre_process, then quantize_static(QDQ,
               per_channel=True, MinMax calibration, U8 activations and S8 weights: the U8S8
               form ONNX Runtime's x86 kernels run fastest, 2-3.4x its S8S8 default on these
               models on this CPU); an
               InferenceSession on the CPU provider with intra_op_num_threads = THREADS,
               inter_op 1, ORT_ENABLE_ALL.
  torch2       the ONNX graph rebuilt as a torch.nn.Module (OnnxModule below: the same weights,
               the same operators, BatchNormalization folded into the convolution before it);
               int8: FX graph mode post-training static quantization with the x86 backend
               (get_default_qconfig_mapping("x86"), prepare_fx, calibrate, convert_fx);
               torch.set_num_threads(THREADS), inference_mode.

Images are prepared as a user of these libraries prepares them: PIL decode, RGB, resize of the
shorter side to 256 (bilinear), centre crop 224, (pixel - mean) / std per channel, float32 NCHW.

`speed`: images/s of inference alone on one ready batch (the first images of the calibration
list, repeated to fill it), after WARMUP untimed runs: the median of REPEATS timings of enough runs
to cover --images images. `predict`: each system's fp32 and int8 top-5 of every listed image.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

SYSTEMS = ("openvino", "onnxruntime", "torch2")


# ----------------------------------------------------------------------------- images

def read_list(path, root=None):
    """An im2rec list (index<TAB>label<TAB>path) or a plain list of paths: [(path, label)]."""
    items = []
    base = root if root is not None else os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) >= 3:
                items.append((os.path.join(base, fields[-1]), int(float(fields[1]))))
            elif len(fields) == 1:
                items.append((os.path.join(base, fields[0]), -1))
            else:
                raise SystemExit(f"{path}:{number}: expected 'index<TAB>label<TAB>path' or a path")
    return items


def prepare(path, mean, std, size=224, resize=256):
    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        scale = resize / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def prepare_all(paths, mean, std):
    return np.stack([prepare(p, mean, std) for p in paths])


# ----------------------------------------------------------------------------- OpenVINO

def openvino_runner(model_path, precision, calibration, batches, threads):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model_path)
    info = {"openvino": ov.__version__}
    if precision == "int8":
        import nncf
        dataset = nncf.Dataset(list(calibration), lambda x: x[None])
        model = nncf.quantize(model, dataset, subset_size=len(calibration))
        info["nncf"] = nncf.__version__
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY"}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    runs = {}
    for batch in batches:
        model.reshape({model.inputs[0].get_any_name(): [batch, 3, 224, 224]})
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        info["inference_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

        def run(x, request=request, output=compiled.outputs[0]):
            request.infer({0: x})
            return request.get_tensor(output).data.copy()

        runs[batch] = run
    return runs, info


# ----------------------------------------------------------------------------- ONNX Runtime

def onnxruntime_runner(model_path, precision, calibration, batches, threads, work):
    import onnxruntime as ort

    path = model_path
    if precision == "int8":
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process

        input_name = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]) \
            .get_inputs()[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{input_name: x[None]} for x in calibration])

            def get_next(self):
                return next(self.items, None)

        prepared = os.path.join(work, "ort_prepared.onnx")
        quant_pre_process(model_path, prepared)
        path = os.path.join(work, "ort_int8.onnx")
        quantize_static(prepared, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: x})[0]

    return {batch: run for batch in batches}, {"onnxruntime": ort.__version__}


# ----------------------------------------------------------------------------- PyTorch 2

def onnx_module(model_path):
    """The ONNX graph as a torch.nn.Module (FX-traceable: its forward walks a fixed op list)."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(model_path).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def attrs(node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    class OnnxModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []  # (kind, module name or op, inputs, output)
            self.mods = torch.nn.ModuleDict()
            skip = set()
            nodes = list(graph.node)
            producer = {}
            for node in nodes:
                for out in node.output:
                    producer[out] = node
            bn_after = {}
            for node in nodes:
                if node.op_type == "BatchNormalization":
                    src = producer.get(node.input[0])
                    if src is not None and src.op_type == "Conv" and readers[node.input[0]] == 1:
                        bn_after[id(src)] = node
                        skip.add(id(node))
            for index, node in enumerate(nodes):
                if id(node) in skip or node.op_type == "Constant":
                    continue
                a = attrs(node)
                key = f"m{index}"
                op = node.op_type
                if op == "Conv":
                    w = consts[node.input[1]].astype(np.float32)
                    b = (consts[node.input[2]].astype(np.float32) if len(node.input) > 2
                         and node.input[2] else np.zeros(w.shape[0], np.float32))
                    output = node.output[0]
                    bn = bn_after.get(id(node))
                    if bn is not None:
                        gamma, beta, mu, var = (consts[n].astype(np.float32) for n in bn.input[1:5])
                        scale = gamma / np.sqrt(var + attrs(bn).get("epsilon", 1e-5))
                        w = w * scale[:, None, None, None]
                        b = (b - mu) * scale + beta
                        output = bn.output[0]
                    pads = list(a.get("pads", [0, 0, 0, 0]))
                    symmetric = pads[0] == pads[2] and pads[1] == pads[3]
                    conv = torch.nn.Conv2d(w.shape[1] * a.get("group", 1), w.shape[0],
                                           tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
                                           padding=(pads[0], pads[1]) if symmetric else 0,
                                           dilation=tuple(a.get("dilations", [1, 1])),
                                           groups=a.get("group", 1), bias=True)
                    conv.weight.data = torch.from_numpy(w.copy())
                    conv.bias.data = torch.from_numpy(b.copy())
                    if symmetric:
                        self.mods[key] = conv
                    else:
                        self.mods[key] = torch.nn.Sequential(
                            torch.nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])), conv)
                    self.steps.append(("mod", key, [node.input[0]], output))
                elif op == "BatchNormalization":
                    gamma, beta, mu, var = (torch.from_numpy(consts[n].astype(np.float32))
                                            for n in node.input[1:5])
                    bn = torch.nn.BatchNorm2d(gamma.numel(), eps=a.get("epsilon", 1e-5)).eval()
                    bn.weight.data, bn.bias.data = gamma, beta
                    bn.running_mean.data, bn.running_var.data = mu, var
                    self.mods[key] = bn
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "Relu":
                    self.mods[key] = torch.nn.ReLU()
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "Clip":
                    lo = float(consts[node.input[1]]) if len(node.input) > 1 and node.input[1] \
                        else a.get("min", -np.inf)
                    hi = float(consts[node.input[2]]) if len(node.input) > 2 and node.input[2] \
                        else a.get("max", np.inf)
                    if lo == 0.0 and hi == 6.0:
                        self.mods[key] = torch.nn.ReLU6()
                    elif lo == 0.0 and hi == np.inf:
                        self.mods[key] = torch.nn.ReLU()
                    else:
                        self.mods[key] = torch.nn.Hardtanh(lo, hi)
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "MaxPool":
                    p = a.get("pads", [0, 0, 0, 0])
                    assert p[0] == p[2] and p[1] == p[3], "asymmetric MaxPool pads"
                    self.mods[key] = torch.nn.MaxPool2d(tuple(a["kernel_shape"]),
                                                        tuple(a.get("strides", [1, 1])),
                                                        (p[0], p[1]),
                                                        ceil_mode=bool(a.get("ceil_mode", 0)))
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "AveragePool":
                    p = a.get("pads", [0, 0, 0, 0])
                    assert p[0] == p[2] and p[1] == p[3], "asymmetric AveragePool pads"
                    self.mods[key] = torch.nn.AvgPool2d(
                        tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])), (p[0], p[1]),
                        ceil_mode=bool(a.get("ceil_mode", 0)),
                        count_include_pad=bool(a.get("count_include_pad", 0)))
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "GlobalAveragePool":
                    self.mods[key] = torch.nn.AdaptiveAvgPool2d(1)
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op in ("Flatten", "Reshape"):
                    self.mods[key] = torch.nn.Flatten(1)
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "Gemm":
                    w = consts[node.input[1]].astype(np.float32)
                    if not a.get("transB", 0):
                        w = w.T
                    linear = torch.nn.Linear(w.shape[1], w.shape[0])
                    linear.weight.data = torch.from_numpy(np.ascontiguousarray(w))
                    linear.bias.data = torch.from_numpy(consts[node.input[2]].astype(np.float32))
                    self.mods[key] = linear
                    self.steps.append(("mod", key, [node.input[0]], node.output[0]))
                elif op == "Add":
                    self.steps.append(("add", None, list(node.input), node.output[0]))
                elif op in ("Identity", "Dropout"):
                    self.steps.append(("id", None, [node.input[0]], node.output[0]))
                else:
                    raise SystemExit(f"{model_path}: the torch2 peer cannot rebuild {op}")
            self.input_name = graph.input[0].name
            self.output_name = graph.output[0].name

        def forward(self, x):
            values = {self.input_name: x}
            for kind, key, inputs, output in self.steps:
                if kind == "mod":
                    values[output] = self.mods[key](values[inputs[0]])
                elif kind == "add":
                    values[output] = values[inputs[0]] + values[inputs[1]]
                else:
                    values[output] = values[inputs[0]]
            return values[self.output_name]

    return OnnxModule().eval()


def torch2_runner(model_path, precision, calibration, batches, threads):
    import torch

    torch.set_num_threads(threads)
    model = onnx_module(model_path)
    if precision == "int8":
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        example = (torch.from_numpy(calibration[:1]),)
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example)
        with torch.inference_mode():
            for start in range(0, len(calibration), 32):
                prepared(torch.from_numpy(calibration[start:start + 32]))
        model = convert_fx(prepared)

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return {batch: run for batch in batches}, {"torch": torch.__version__,
                                               "quantized_engine": "x86"}


def make_runner(system, model_path, precision, calibration, batches, threads, work):
    """({batch: run(x) -> logits}, facts): the model quantized once, prepared for each batch."""
    if system == "openvino":
        return openvino_runner(model_path, precision, calibration, batches, threads)
    if system == "onnxruntime":
        return onnxruntime_runner(model_path, precision, calibration, batches, threads, work)
    if system == "torch2":
        return torch2_runner(model_path, precision, calibration, batches, threads)
    raise SystemExit(f"unknown system {system}")


# ----------------------------------------------------------------------------- modes

def speed(args, calibration, work):
    rows = []
    for system in args.systems:
        for precision in args.precisions:
            started = time.perf_counter()
            runs, info = make_runner(system, args.model, precision, calibration, args.batches,
                                     args.threads, work)
            setup_seconds = time.perf_counter() - started
            for batch in args.batches:
                run = runs[batch]
                x = np.ascontiguousarray(np.resize(calibration, (batch,) + calibration.shape[1:]))
                for _ in range(args.warmup):
                    run(x)
                count = max(1, -(-args.images // batch))
                rates = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    for _ in range(count):
                        run(x)
                    rates.append(count * batch / (time.perf_counter() - t0))
                rate = statistics.median(rates)
                print(f"{system} {os.path.basename(args.model)} {precision} batch {batch}: "
                      f"{rate:.1f} images/s (repeats {', '.join(f'{r:.1f}' for r in rates)})",
                      flush=True)
                rows.append({"system": system, "precision": precision, "batch": batch,
                             "images_per_second": rate, "repeat_images_per_second": rates,
                             "setup_seconds": setup_seconds, **info})
    return rows


def predict(args, calibration, work):
    items = read_list(args.images_list, args.root)
    rows = []
    for system in args.systems:
        for precision in args.precisions:
            runs, info = make_runner(system, args.model, precision, calibration,
                                     [args.predict_batch], args.threads, work)
            run = runs[args.predict_batch]
            top = []
            for start in range(0, len(items), args.predict_batch):
                chunk = items[start:start + args.predict_batch]
                x = prepare_all([p for p, _ in chunk], args.mean, args.std)
                if len(chunk) < args.predict_batch:  # fixed-shape systems: pad the last batch
                    x = np.concatenate([x, np.zeros((args.predict_batch - len(chunk),) +
                                                    x.shape[1:], np.float32)])
                logits = run(x)[:len(chunk)]
                top += np.argsort(-logits, axis=1)[:, :5].tolist()
            rows.append({"system": system, "precision": precision,
                         "paths": [p for p, _ in items], "labels": [l for _, l in items],
                         "top5": top, **info})
            print(f"{system} {precision}: predicted {len(items)} images", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "predict"))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--precisions", default="int8,fp32")
    parser.add_argument("--model", required=True, help="the ONNX file")
    parser.add_argument("--calibration-list", required=True,
                        help="calibration images: an im2rec list (paths relative to it) or paths")
    parser.add_argument("--calibration-root",
                        help="folder the calibration list's paths are relative to (default: the "
                             "list's folder)")
    parser.add_argument("--calibration-images", type=int, default=64,
                        help="how many of the list's images, spread evenly (default %(default)s)")
    parser.add_argument("--root", help="predict: folder the --images-list paths are relative to "
                        "(default: the list's folder)")
    parser.add_argument("--images-list", help="predict: the images to classify (im2rec list)")
    parser.add_argument("--mean", default="123.675,116.28,103.53", help="pixel units")
    parser.add_argument("--std", default="58.395,57.12,57.375", help="pixel units")
    parser.add_argument("--batches", default="32,1", help="speed: batch sizes")
    parser.add_argument("--predict-batch", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256,
                        help="speed: images per timed repeat (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    if any(s not in SYSTEMS for s in args.systems):
        parser.error(f"--systems: choose from {', '.join(SYSTEMS)}")
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.mean = [float(v) for v in args.mean.split(",")]
    args.std = [float(v) for v in args.std.split(",")]
    if args.mode == "predict" and not args.images_list:
        parser.error("predict needs --images-list")

    listed = read_list(args.calibration_list, args.calibration_root)
    count = min(args.calibration_images, len(listed))
    chosen = [listed[i * len(listed) // count][0] for i in range(count)]
    calibration = prepare_all(chosen, args.mean, args.std)
    with tempfile.TemporaryDirectory(prefix="millrace_peers_") as work:
        rows = speed(args, calibration, work) if args.mode == "speed" else \
            predict(args, calibration, work)
    report = {"mode": args.mode, "model": os.path.abspath(args.model), "threads": args.threads,
              "calibration_images": chosen, "mean": args.mean, "std": args.std,
              "python": platform.python_version(), "cpus": os.cpu_count(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
