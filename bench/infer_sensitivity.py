#!/usr/bin/python3
"""Where MobileNetV2's int8 accuracy goes: millrace's quantization scheme emulated in PyTorch, one
part at a time, against the fp32 model on the same batches.

  /usr/bin/python3 bench/infer_accuracy.py --models mobilenet_v2 --keep out/acc
  /usr/bin/python3 bench/infer_sensitivity.py --keep out/acc [--json out/bench/sensitivity.json]

It reads the batches that infer_accuracy.py's runs wrote with --keep (the calibration run's and
the evaluation run's int8 batches, exactly the bytes millrace's network saw) and the ONNX file,
loaded into torchvision's MobileNetV2 with every BatchNorm folded into its convolution. The
emulation quantizes as network.hpp describes: weights s8 per output channel (127 / max|w|), every
convolution's output per tensor (u8 after ReLU6, s8 otherwise), a residual block's projection
quantized only after its Add (the sum post-op), ranges from the calibration batches. Each row
turns one part on (or changes how ranges are chosen) and reports the centred cosine (mean / worst
image) and top-1 agreement against fp32, as infer_accuracy.py computes them:

  scheme (minmax)             everything, min/max ranges: should land near millrace's own figure
  weights only                only the s8 weights
  activations only            only the activations, and then only those of one kind of layer
  activations mse             ranges of least squared error (calibration.mode: mse) for all
  fp32, input noise           no quantization: uniform noise of +-0.5 pixel on the input, how much
                              the random network amplifies the smallest rounding
  per-channel activations     a range per channel (least squared error) where a convolution feeds
                              only another convolution, mse elsewhere: what a per-tensor scheme
                              cannot reach, the headroom left
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
import infer_accuracy  # noqa: E402  (reads the npy runs, computes the agreement)
import torch_int8  # noqa: E402  (builds torchvision's model with the ONNX file's weights)
from benchlib import print_table  # noqa: E402


def fold(conv, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros(conv.weight.shape[0]) if conv.bias is None else conv.bias
    return ((conv.weight * scale.reshape(-1, 1, 1, 1)).detach(),
            ((bias - bn.running_mean) * scale + bn.bias).detach())


def layers_of(model):
    """The folded convolutions in order, and the blocks: (residual?, layer indices)."""
    layers, blocks = [], []

    def add(conv, bn, kind, relu6):
        weight, bias = fold(conv, bn)
        layers.append({"kind": kind, "weight": weight, "bias": bias, "conv": conv, "relu6": relu6})
        return len(layers) - 1

    features = model.features
    blocks.append((False, [add(features[0][0], features[0][1], "stem", True)]))
    for block in features[1:-1]:
        parts = list(block.conv)
        ids = [add(m[0], m[1], "depthwise" if m[0].groups > 1 else "expand", True)
               for m in parts[:-2]]
        ids.append(add(parts[-2], parts[-1], "project", False))
        blocks.append((block.use_res_connect, ids))
    blocks.append((False, [add(features[-1][0], features[-1][1], "last", True)]))
    return layers, blocks


def quantize_weight(w):
    scale = w.abs().reshape(w.shape[0], -1).max(1).values.clamp(min=1e-30) / 127
    scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
    return torch.round(w / scale).clamp(-127, 127) * scale


def quantize(x, limit, unsigned):
    """Per tensor (a float limit) or per channel (a tensor of limits), over [0, T] or [-T, T]."""
    if torch.is_tensor(limit):
        limit = limit.reshape(1, -1, 1, 1).clamp(min=1e-12)
    levels = 255 if unsigned else 127
    step = limit / levels
    return torch.round(x / step).clamp(0 if unsigned else -levels, levels) * step


def mse_limit(values, unsigned, top):
    """The limit of least squared error over 81 candidates in [0.2, 1] x the largest value."""
    best, best_limit = None, top
    for fraction in np.linspace(0.2, 1.0, 81):
        error = ((quantize(values, top * fraction, unsigned) - values) ** 2).mean().item()
        if best is None or error < best:
            best, best_limit = error, top * fraction
    return best_limit


class Emulation:
    def __init__(self, model):
        self.model = model
        self.layers, self.blocks = layers_of(model)
        self.fc = model.classifier[1]

    def names(self):
        """Every quantized value: a layer index, or ("add", block index)."""
        out = []
        for b, (residual, ids) in enumerate(self.blocks):
            out += ids[:-1] + ([("add", b)] if residual else ids[-1:])
        return out

    def unsigned(self, name):
        return not isinstance(name, tuple) and self.layers[name]["relu6"]

    def kind(self, name):
        return "add" if isinstance(name, tuple) else self.layers[name]["kind"]

    def forward(self, x, weights=False, limits=None, observe=None):
        """limits: value name -> limit (per tensor) or tensor (per channel); absent: fp32."""
        limits = limits or {}

        def out(name, y):
            if observe is not None:
                observe.setdefault(name, []).append(y)
            return quantize(y, limits[name], self.unsigned(name)) if name in limits else y

        for b, (residual, ids) in enumerate(self.blocks):
            block_input = x
            for i in ids:
                layer = self.layers[i]
                conv = layer["conv"]
                w = quantize_weight(layer["weight"]) if weights else layer["weight"]
                y = F.conv2d(x, w, layer["bias"], conv.stride, conv.padding, conv.dilation,
                             conv.groups)
                if layer["relu6"]:
                    y = y.clamp(0, 6)
                if residual and i == ids[-1]:
                    x = out(("add", b), y + block_input)
                else:
                    x = out(i, y)
        x = x.mean((2, 3))
        w = quantize_weight(self.fc.weight.detach()) if weights else self.fc.weight.detach()
        return F.linear(x, w, self.fc.bias.detach())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", required=True,
                        help="the --keep folder of an infer_accuracy.py run on mobilenet_v2")
    parser.add_argument("--onnx", default=os.path.join(infer_accuracy.REPO, "data", "models",
                                                       "mobilenet_v2.onnx"))
    parser.add_argument("--sample", type=int, default=1_000_000,
                        help="values per tensor the range searches look at (default %(default)s)")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    torch.manual_seed(0)
    std = infer_accuracy.MODEL_STD
    calibration = infer_accuracy.read_npy_run(
        os.path.join(args.keep, "mobilenet_v2_int8_calibration"), std)["x"]
    evaluation = infer_accuracy.read_npy_run(os.path.join(args.keep, "mobilenet_v2_int8"), std)["x"]
    model, _ = torch_int8.build_float("mobilenet_v2", args.onnx, quantizable_model=False)
    emulation = Emulation(model)
    rows, results = [], {}

    with torch.inference_mode():
        reference = [model(torch.from_numpy(x)).numpy().astype(np.float64) for x in evaluation]
        # Per value, over every calibration batch: the largest magnitude (per tensor and per
        # channel) and a random sample of the values, whole and per channel, for the searches
        # (all of them would take tens of GB).
        top, channel_top, sample, channel_sample = {}, {}, {}, {}
        per_batch = max(args.sample // len(calibration), 1)
        for x in calibration:
            seen = {}
            emulation.forward(torch.from_numpy(x), observe=seen)
            for name, (y,) in seen.items():
                magnitude = y.abs()
                top[name] = max(top.get(name, 0.0), magnitude.max().item())
                c_top = magnitude.amax((0, 2, 3))
                channel_top[name] = torch.maximum(channel_top.get(name, c_top), c_top)
                flat = y.flatten()
                sample.setdefault(name, []).append(flat[torch.randint(flat.numel(), (per_batch,))])
                by_channel = y.transpose(0, 1).reshape(y.shape[1], -1)
                keep = torch.randint(by_channel.shape[1], (max(per_batch // y.shape[1], 200),))
                channel_sample.setdefault(name, []).append(by_channel[:, keep])
        names = emulation.names()
        minmax, mse, per_channel = {}, {}, {}
        for name in names:
            unsigned = emulation.unsigned(name)
            minmax[name] = top[name]
            mse[name] = mse_limit(torch.cat(sample[name]), unsigned, top[name])
            if name != names[-1] and not isinstance(name, tuple):
                channels = torch.cat(channel_sample[name], dim=1)
                per_channel[name] = torch.tensor(
                    [mse_limit(c, unsigned, channel_top[name][k].item())
                     for k, c in enumerate(channels)], dtype=torch.float32)

        def row(label, **kw):
            out = [emulation.forward(torch.from_numpy(x), **kw).numpy() for x in evaluation]
            a = infer_accuracy.agreement(out, reference)
            results[label] = a
            rows.append((label, f"{a['centred_cosine_mean']:.4f} / {a['centred_cosine_min']:.4f}",
                         f"{a['top1_agreement']:.3f}"))
            print(f"  {label}: {rows[-1][1]}", flush=True)

        # How much the fp32 network itself amplifies small noise: half a pixel on its input.
        generator = torch.Generator().manual_seed(1)
        noise = torch.tensor(std).reshape(1, 3, 1, 1)
        noisy = [model(torch.from_numpy(x) + (torch.rand(x.shape, generator=generator) - 0.5) /
                       noise).numpy() for x in evaluation]
        a = infer_accuracy.agreement(noisy, reference)
        results["fp32, input +-0.5 pixel noise"] = a
        rows.append(("fp32, input +-0.5 pixel noise",
                     f"{a['centred_cosine_mean']:.4f} / {a['centred_cosine_min']:.4f}",
                     f"{a['top1_agreement']:.3f}"))
        row("scheme (minmax)", weights=True, limits=minmax)
        row("weights only", weights=True)
        row("activations only", limits=minmax)
        for kind in ("stem", "expand", "depthwise", "project", "add", "last"):
            row(f"activations only: {kind}",
                limits={n: t for n, t in minmax.items() if emulation.kind(n) == kind})
        row("activations mse", limits=mse)
        row("scheme, activations mse", weights=True, limits=mse)
        row("scheme, per-channel activations", weights=True, limits={**mse, **per_channel})

    print()
    print_table(("emulated int8 vs fp32", "centred cosine", "top-1 agreement"), rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"keep": args.keep, "onnx": args.onnx, "results": results}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
