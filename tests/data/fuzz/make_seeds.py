#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into tests/data/fuzz/<target>/seed_*.

Small valid inputs of every kind each parser reads, so that fuzzing starts from deep inside the
formats instead of having to discover their headers. Every file comes from fixed formulas, so
running this again reproduces the committed bytes. The other files in those folders (crash_*,
hang_*) are inputs that once broke a target, kept after their fix; this script leaves them alone.
Needs the system python3 with Debian's python3-numpy, python3-opencv, python3-pil and python3-onnx.

Usage: /usr/bin/python3 tests/data/fuzz/make_seeds.py
"""

import io
import pathlib
import struct

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
MAGIC = 0xCED7230A


def pattern(width, height, channels=3):
    y, x = np.mgrid[0:height, 0:width]
    planes = [(x * 37 + y * 11) % 256, (x * 5 + y * 29) % 256, (x * y * 7) % 256, (x + y) * 9 % 256]
    return np.dstack(planes[:channels]).astype(np.uint8)


def pil_bytes(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def cv_bytes(ext, bgr, params=()):
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buf.tobytes()


def jpeg_seeds():
    rgb = Image.fromarray(pattern(16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "seed_baseline_420.jpg": pil_bytes(rgb, "JPEG", quality=75),
        "seed_progressive.jpg": pil_bytes(rgb, "JPEG", quality=75, progressive=True),
        "seed_444.jpg": pil_bytes(rgb, "JPEG", quality=90, subsampling=0),
        "seed_422.jpg": pil_bytes(rgb, "JPEG", quality=75, subsampling=1),
        "seed_restart.jpg": cv_bytes(".jpg", pattern(24, 16), [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]),
        "seed_gray.jpg": pil_bytes(Image.fromarray(pattern(16, 8, 1)[:, :, 0]), "JPEG"),
        "seed_exif_rotated.jpg": pil_bytes(Image.fromarray(pattern(16, 24)), "JPEG", exif=exif),
        "seed_cmyk.jpg": pil_bytes(Image.fromarray(pattern(8, 8, 4), "CMYK"), "JPEG"),
    }


def image_seeds():
    rgb = pattern(8, 6)
    return {
        "seed_rgb.png": cv_bytes(".png", rgb),
        "seed_gray16.png": cv_bytes(".png", (pattern(8, 6, 1)[:, :, 0].astype(np.uint16) * 257)),
        "seed_rgba.png": cv_bytes(".png", pattern(8, 6, 4)),
        "seed_palette.png": pil_bytes(Image.fromarray(rgb).quantize(4), "PNG"),
        "seed_rgb.bmp": cv_bytes(".bmp", rgb),
        "seed_palette.bmp": pil_bytes(Image.fromarray(rgb).quantize(4), "BMP"),
        "seed_lossy.webp": cv_bytes(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 50]),
        "seed_lossless.webp": cv_bytes(".webp", rgb, [cv2.IMWRITE_WEBP_QUALITY, 101]),
        "seed_rgb.tiff": cv_bytes(".tiff", rgb),
    }


def frame(payload):
    """One RecordIO record: split at every 4-aligned magic, parts flagged 1, 2.., 3 (or 0)."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    parts, start = [], 0
    for cut in cuts:
        parts.append(payload[start:cut])
        start = cut + 4
    parts.append(payload[start:])
    out = b""
    for k, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if k == 0 else 3 if k == len(parts) - 1 else 2
        out += struct.pack("<II", MAGIC, (flag << 29) | len(part))
        out += part + b"\0" * (-len(part) % 4)
    return out


def image_record(record_id, labels, image):
    if len(labels) == 1:
        header = struct.pack("<IfQQ", 0, labels[0], record_id, 0)
    else:
        header = struct.pack("<IfQQ", len(labels), 0.0, record_id, 0)
        header += struct.pack("<%df" % len(labels), *labels)
    return header + image


def recordio_seeds():
    tiny = pil_bytes(Image.fromarray(pattern(8, 8)), "JPEG", quality=50)
    with_magic = b"abcd" + struct.pack("<I", MAGIC) + b"efghij" + struct.pack("<I", MAGIC) + b"k"
    return {
        "seed_three.rec": frame(image_record(0, [1.0], tiny))
        + frame(image_record(1, [2.0, 0.5, -1.0], b"\xff\xd8\xff\xe0"))
        + frame(image_record(2, [3.0], with_magic)),
        "seed_split.rec": frame(with_magic * 3),
    }


def onnx_seed():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1],
                                [0.5, -0.25, 1.0, 0.0, 2.0, -1.0])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.1, -0.1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1])
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [8, 3], [float(i % 5) - 2 for i in range(24)])
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "seed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight, bias, shape, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="millrace-seed")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return {"seed_conv_pool_matmul.onnx": model.SerializeToString()}


CONFIG_FILES = b"""pipeline:
  name: seed
  threads: 2
  queue: 4
  max_errors: 0.1
stages:
  - type: files
    root: data
    list: labels.lst
    shuffle: true
    seed: 7
  - type: decode
    on_error: skip
    max_pixels: 1000000
    reduce: auto
  - type: augment
    crop: random_resized
    size: [32, 32]
    mirror: 0.5
  - type: normalize
    dtype: int8
    mean: [123.68, 116.779, 103.939]
    std: [58.4, 57.1, 57.4]
    layout: NCHW
  - type: batch
    size: 4
    last: partial
  - type: npy
    dir: out
"""

CONFIG_RECORDIO = b"""stages:
  - {type: recordio, path: [a.rec, b.rec], index: a.idx, label_width: 2, shuffle_buffer: 16}
  - {type: decode, strict: false, dct: fast}
  - {type: augment, resize: 40, crop: center, size: [32, 32]}
  - {type: normalize, dtype: float32, layout: NHWC}
  - {type: batch, size: 2, last: drop}
"""


def main():
    seeds = {
        "jpeg": jpeg_seeds(),
        "image": image_seeds(),
        "recordio": recordio_seeds(),
        "idx": {"seed.idx": b"0\t0\n1\t40\n2\t100\n", "seed_unsorted.idx": b"5\t64\n3\t0\n"},
        "lst": {"seed.lst": b"0\t1.000000\tcats/a.jpg\n1\t0.000000\tdogs/b.jpg\n",
                "seed_multi.lst": b"0\t1\t2.5\ta.jpg\r\n\n7.0\t3\t-1e2\tsub dir/b c.png\n"},
        "config": {"seed_files.yaml": CONFIG_FILES, "seed_recordio.yaml": CONFIG_RECORDIO},
        "onnx": onnx_seed(),
        "calibration": {"seed.json": b'{"mode": "entropy", "fingerprint": "model m (graph hash '
                        b'0123456789abcdef)", "values": [\n  {"id": 0, "min": -1.5, "max": 2.25},'
                        b'\n  {"id": 3, "min": 0, "max": 6.00000048}\n]}\n'},
    }
    for target, files in seeds.items():
        folder = HERE / target
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            print(f"{target}/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
