#!/usr/bin/python3
"""Exports the ONNX models that millrace's infer stage is tested and benchmarked on.

Models are made here, never downloaded: torchvision's ResNet-18, ResNet-50 and MobileNetV2 with
random weights from a fixed seed, and a tiny CNN whose graph holds one of every construct the
importer lowers (see README.md next to this file).

Random deep networks let activations shrink or grow layer after layer (MobileNetV2's logits come
out near 1e-8), which makes them useless for comparing int8 with fp32. So before export every
BatchNorm's running statistics are re-estimated on images in training mode (a cumulative average
over the batches, not the default exponential one, so that a few batches are enough and the
result does not depend on the initial statistics), and the model is then exported in eval mode.
The last BatchNorm of each residual branch gets a small scale first, as in trained networks
(see damp_residual_branches: without it the random ResNet-50 is chaotic).

BatchNormalization nodes are kept in the exported graphs (training=PRESERVE on a model in eval
mode skips PyTorch's own Conv+BN folding), so that millrace's importer does the folding.

Usage:
  /usr/bin/python3 bench/models/export.py --data data/imagenet-like --out data/models \
      --models resnet18,resnet50,mobilenet_v2
  /usr/bin/python3 bench/models/export.py --tiny --out tests/data/models
"""

import argparse
import pathlib
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as transforms
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 13
BIG_MODELS = ("resnet18", "resnet50", "mobilenet_v2")


class TinyNet(nn.Module):
    """3x32x32 -> 10 classes; one of each construct the importer lowers.

    conv 3x3 s2 + BN + ReLU, depthwise conv + BN + ReLU6, a residual block (conv + BN + ReLU,
    conv + BN, Add, ReLU), max pool, average pool with ceil_mode, global average pool, flatten,
    a Linear and a final Softmax.
    """

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=1, padding=1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.relu6 = nn.ReLU6()  # as MobileNetV2 writes it
        self.res1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.res1_bn = nn.BatchNorm2d(16)
        self.res2 = nn.Conv2d(16, 16, 3, padding=1, bias=True)
        self.res2_bn = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avgpool = nn.AvgPool2d(3, stride=2, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(16, classes)

    def logits(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))  # 16 x 16 x 16
        x = self.relu6(self.dw_bn(self.dw(x)))
        y = torch.relu(self.res1_bn(self.res1(x)))
        y = self.res2_bn(self.res2(y))
        x = torch.relu(x + y)
        x = self.maxpool(x)  # 16 x 8 x 8
        x = self.avgpool(x)  # 16 x 4 x 4 (ceil_mode)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


def normalize(pixels):
    """uint8 NCHW pixels -> float32 as torchvision's ToTensor + Normalize(ImageNet) gives."""
    x = torch.from_numpy(pixels).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_pixels(rng, count, size):
    """Image-like uint8 NCHW: smooth random colour fields plus fine noise."""
    coarse = torch.from_numpy(rng.uniform(0, 255, (count, 3, 4, 4)).astype(np.float32))
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                       align_corners=False).numpy()
    noisy = smooth + rng.normal(0, 24, smooth.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def dataset_images(root):
    root = pathlib.Path(root)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        sys.exit(f"export.py: no images under {root} (make some with "
                 f"`build/millrace make-dataset {root} --count 200`)")
    return paths


def load_imagenet_style(path):
    """Resize 256 / center crop 224 / ToTensor / Normalize, as torchvision's reference recipe."""
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with Image.open(path) as image:
        return transform(image.convert("RGB"))


@torch.no_grad()
def fit_batchnorm(model, batches):
    """Re-estimates every BatchNorm's running mean and variance on `batches` in training mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch seen
    model.train()
    for batch in batches:
        model(batch)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def randomize_batchnorm_affine(model):
    """Random BatchNorm scale and shift instead of PyTorch's initial 1 and 0.

    Every BatchNorm then has its own parameters: the exporter would otherwise share one initializer
    between all of them through Identity nodes, and folding would be tested only with gamma = 1.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)


@torch.no_grad()
def damp_residual_branches(model):
    """Small scales on the last BatchNorm of every residual branch, as trained networks have.

    With scales near 1 there, a random ResNet-50 is chaotic: half a pixel of input noise changes
    its logits so much that, across images, they keep only 0.91 cosine similarity after the
    batch's mean logit vector is subtracted, and quantizing its first convolution's weights alone
    brings that to 0.85. No quantized engine can agree with such a network; a trained one, whose
    branches add small corrections to the identity path, is not chaotic. Scales drawn from
    U(0.05, 0.3) make the random networks behave that way (the same half pixel: 0.9998).
    """
    for m in model.modules():
        if isinstance(m, torchvision.models.resnet.BasicBlock):
            m.bn2.weight.uniform_(0.05, 0.3)
        elif isinstance(m, torchvision.models.resnet.Bottleneck):
            m.bn3.weight.uniform_(0.05, 0.3)
        elif isinstance(m, torchvision.models.mobilenetv2.InvertedResidual) and m.use_res_connect:
            last_bn = [c for c in m.conv.modules() if isinstance(c, nn.BatchNorm2d)][-1]
            last_bn.weight.uniform_(0.05, 0.3)


def export(model, example, path, output_name):
    with warnings.catch_warnings():
        # PyTorch warns about constant folding with PRESERVE because it assumes a model in
        # training mode; this one is in eval mode, and folding only evaluates constant subgraphs
        # (such as the casts of Clip's bounds).
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(model, example, str(path), opset_version=OPSET, input_names=["input"],
                          output_names=[output_name],
                          dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def check_with_opencv(path, inputs, expected):
    """Runs the exported file through OpenCV's DNN module: an independent reading of the graph.

    Best effort: OpenCV 4.6 reads the ResNets but not Clip with its bounds as inputs (opset >= 11),
    so ReLU6 models are checked against PyTorch only (by millrace's own tests).
    """
    try:
        import cv2
    except ImportError:
        print("  OpenCV cross-check skipped: python3-opencv is not installed")
        return
    try:
        cv2.setLogLevel(0)  # silent: a failure is reported below, once
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as error:
        lines = [line.strip("> ") for line in str(error).splitlines() if "Node [" in line]
        reason = lines[0] if lines else str(error).strip()
        print(f"  OpenCV cross-check skipped: OpenCV cannot read this graph: {reason}")
        return
    net.setInput(inputs.numpy())
    got = net.forward()
    err = np.abs(got - expected.numpy()).max() / max(np.abs(expected.numpy()).max(), 1e-30)
    print(f"  OpenCV DNN vs PyTorch: max |diff| / max |out| = {err:.2e}")
    if err > 1e-3:
        sys.exit(f"export.py: {path}: OpenCV DNN disagrees with PyTorch ({err:.2e})")


def describe_logits(name, logits):
    centred = logits - logits.mean(dim=0, keepdim=True)
    print(f"  {name}: logits std {logits.std().item():.4g}, "
          f"across-image std {centred.std().item():.4g}, "
          f"distinct top-1 {len(set(logits.argmax(1).tolist()))}/{logits.shape[0]}")


def export_tiny(out, seed):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyNet()
    randomize_batchnorm_affine(model)
    fit = [normalize(random_pixels(rng, 32, 32)) for _ in range(4)]
    fit_batchnorm(model, fit)

    pixels = random_pixels(rng, 4, 32)
    inputs = normalize(pixels)
    with torch.no_grad():
        logits = model.logits(inputs)
    path = out / "tiny.onnx"
    export(model, inputs, path, "probabilities")
    np.save(out / "tiny_pixels.npy", pixels)
    np.save(out / "tiny_inputs.npy", inputs.numpy().astype(np.float32))
    np.save(out / "tiny_logits.npy", logits.numpy().astype(np.float32))
    print(f"wrote {path}, tiny_pixels.npy, tiny_inputs.npy, tiny_logits.npy")
    describe_logits("tiny", logits)
    with torch.no_grad():
        check_with_opencv(path, inputs, model(inputs))


def export_unsupported(out):
    """A valid ONNX model that uses an LSTM, which millrace does not run."""
    rng = np.random.default_rng(1)
    init = numpy_helper.from_array
    hidden = 4
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["features"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="pool"),
        helper.make_node("Reshape", ["pooled", "seq_shape"], ["sequence"], name="to_sequence"),
        helper.make_node("LSTM", ["sequence", "lstm_w", "lstm_r"], ["", "state"], name="lstm",
                         hidden_size=hidden),
    ]
    inits = [
        init(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv_w"),
        init(np.array([1, -1, 8], dtype=np.int64), "seq_shape"),
        init(rng.standard_normal((1, 4 * hidden, 8)).astype(np.float32), "lstm_w"),
        init(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "lstm_r"),
    ]
    graph = helper.make_graph(
        nodes, "unsupported_lstm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "batch", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="millrace-export")
    onnx.checker.check_model(model, full_check=True)
    path = out / "unsupported_lstm.onnx"
    onnx.save(model, str(path))
    print(f"wrote {path}")


def export_big(name, out, data, seed, fit_batches, batch_size):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    randomize_batchnorm_affine(model)
    damp_residual_branches(model)
    paths = dataset_images(data)
    needed = fit_batches * batch_size + 8
    if len(paths) < needed:
        sys.exit(f"export.py: {data} has {len(paths)} images; {needed} are needed "
                 f"({fit_batches} batches of {batch_size} to fit BatchNorm, 8 to check)")
    images = torch.stack([load_imagenet_style(p) for p in paths[:needed]])
    fit = list(images[:fit_batches * batch_size].split(batch_size))
    check = images[fit_batches * batch_size:]
    fit_batchnorm(model, fit)
    with torch.no_grad():
        logits = model(check)
    path = out / f"{name}.onnx"
    export(model, check[:1], path, "logits")
    print(f"wrote {path}")
    # A calibration table made for the previous weights no longer matches (a run refuses it).
    stale = out / f"{name}.calib.json"
    if stale.exists():
        stale.unlink()
        print(f"removed {stale} (made for the previous model)")
    describe_logits(name, logits)
    check_with_opencv(path, check, logits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/models", help="output folder (default %(default)s)")
    parser.add_argument("--models", default=",".join(BIG_MODELS),
                        help="comma-separated subset of " + ",".join(BIG_MODELS))
    parser.add_argument("--data", default="data/imagenet-like",
                        help="image folder used to fit BatchNorm statistics (default %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="write the tiny test model, its reference logits and "
                             "unsupported_lstm.onnx to --out instead of the big models")
    parser.add_argument("--seed", type=int, default=2024,
                        help="seeds the weights and the random images (default %(default)s)")
    parser.add_argument("--fit-batches", type=int, default=4,
                        help="batches used to fit BatchNorm statistics (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per fitting batch (default %(default)s)")
    args = parser.parse_args()

    # One thread: reductions then run in one fixed order, so every run writes the same bytes.
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        export_tiny(out, args.seed)
        export_unsupported(out)
        return
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in BIG_MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(BIG_MODELS)}")
    for name in names:
        export_big(name, out, args.data, args.seed, args.fit_batches, args.batch_size)


if __name__ == "__main__":
    main()
