#!/usr/bin/env python3
"""Writes the decoder's bad-input corpus into tests/data/bad/.

Every file is generated from fixed formulas and a fixed seed, so running this again reproduces the
committed bytes. Needs the system python3 with Debian's python3-numpy, python3-opencv and
python3-pil (Pillow writes the CMYK JPEG, which OpenCV cannot). The pixel formulas below are
documented in bad/README.md because the decoder tests check decoded pixels against them.

Usage: python3 tests/data/make_bad_corpus.py
"""

import io
import pathlib
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "bad"


def encode_jpeg(rgb, quality):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def textured(width, height, phase):
    """A deterministic photo-like RGB image: gradients, rings and a checkerboard."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / 17.0 + phase) * np.cos(y / 23.0)
    rings = np.sin(np.hypot(x - width / 2, y - height / 2) / 6.0)
    g = 255 * x / max(width - 1, 1) * 0.6 + 60 * rings
    b = 40 + 150 * (((x // 16) + (y // 16)) % 2) + 30 * np.cos(y / 9.0 + phase)
    return np.clip(np.dstack([r, g, b]), 0, 255).astype(np.uint8)


def truncated_source():
    """300x200: R = x*255//299, G = y*255//199, B = 64 (smooth, so JPEG error stays small)."""
    y, x = np.mgrid[0:200, 0:300]
    rgb = np.dstack([x * 255 // 299, y * 255 // 199, np.full_like(x, 64)])
    return rgb.astype(np.uint8)


def png_named_source():
    """64x48 RGB: R = 4*x, G = 5*y, B = (x*y) % 256 (stored losslessly)."""
    y, x = np.mgrid[0:48, 0:64]
    return np.dstack([4 * x, 5 * y, (x * y) % 256]).astype(np.uint8)


def patch_sof(jpeg, width, height):
    """Rewrites the frame header's size fields by walking the marker segments up to SOF0."""
    data = bytearray(jpeg)
    pos = 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF, "unexpected byte while walking JPEG markers"
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xC0:
            # Segment: length (2), precision (1), height (2), width (2), ...
            data[pos + 5:pos + 7] = struct.pack(">H", height)
            data[pos + 7:pos + 9] = struct.pack(">H", width)
            return bytes(data)
        assert marker != 0xDA, "no SOF0 before the scan"
        pos += 2 + length
    raise AssertionError("no SOF0 marker found")


# CMYK patches as ink amounts (0 = no ink, 255 = full ink) and the RGB a viewer shows for them,
# from the multiplicative model R = (255 - C) * (255 - K) / 255 (likewise G with M, B with Y).
CMYK_PATCHES = [
    ((0, 0, 0, 0), (255, 255, 255)),
    ((255, 0, 0, 0), (0, 255, 255)),
    ((0, 255, 0, 0), (255, 0, 255)),
    ((0, 0, 255, 0), (255, 255, 0)),
    ((0, 255, 255, 0), (255, 0, 0)),
    ((0, 0, 0, 255), (0, 0, 0)),
    ((0, 0, 0, 128), (127, 127, 127)),
    ((128, 64, 0, 64), (95, 143, 191)),
]


def cmyk_adobe():
    """A row of 16x16 CMYK patches (CMYK_PATCHES), 128x16, quality 100, no subsampling.

    Pillow stores CMYK JPEGs the way Photoshop does: an Adobe APP14 marker and inverted values.
    """
    ink = np.zeros((16, 16 * len(CMYK_PATCHES), 4), np.uint8)
    for i, (cmyk, _) in enumerate(CMYK_PATCHES):
        ink[:, 16 * i:16 * (i + 1)] = cmyk
    out = io.BytesIO()
    Image.fromarray(ink, "CMYK").save(out, "JPEG", quality=100, subsampling=0)
    return out.getvalue()


def png_bomb(width, height, rows):
    """A PNG declaring width x height RGB whose IDAT holds `rows` rows of zeros, deflated.

    Zeros deflate about 1000:1: declared sizes cost nothing in the file, only in a decoder that
    believes them before checking.
    """
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\0" * (rows * (1 + 3 * width)), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def progressive_truncated():
    """A progressive JPEG of the truncated.jpg source (300x200), cut to its first 40 % of bytes."""
    out = io.BytesIO()
    Image.fromarray(truncated_source()).save(out, "JPEG", quality=90, progressive=True)
    whole = out.getvalue()
    return whole[:len(whole) * 40 // 100]


def main():
    OUT.mkdir(exist_ok=True)
    files = {}

    files["good_1.jpg"] = encode_jpeg(textured(320, 240, 0.0), 90)
    files["good_2.jpg"] = encode_jpeg(textured(320, 240, 1.7), 85)

    whole = encode_jpeg(truncated_source(), 90)
    files["truncated.jpg"] = whole[:len(whole) * 60 // 100]

    files["empty.jpg"] = b""

    rng = np.random.default_rng(20240611)
    files["random.jpg"] = rng.integers(0, 256, 2048, np.uint8).tobytes()
    for magic in (b"\xff\xd8\xff", b"\x89PNG", b"RIFF", b"BM", b"II*\0", b"MM\0*"):
        assert not files["random.jpg"].startswith(magic)

    ok, png = cv2.imencode(".png", cv2.cvtColor(png_named_source(), cv2.COLOR_RGB2BGR))
    assert ok
    files["png_named.jpg"] = png.tobytes()

    files["bomb.jpg"] = patch_sof(encode_jpeg(textured(16, 16, 0.5), 75), 60000, 60000)

    files["cmyk_adobe.jpg"] = cmyk_adobe()

    files["bomb_65000.jpg"] = patch_sof(encode_jpeg(textured(16, 16, 0.9), 75), 65000, 65000)
    files["zero_width.jpg"] = patch_sof(encode_jpeg(textured(16, 16, 1.1), 75), 0, 16)
    files["png_bomb.jpg"] = png_bomb(20000, 20000, 64)
    files["progressive_truncated.jpg"] = progressive_truncated()

    for name, data in files.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
