#!/usr/bin/env python3
"""PyTorch 2 (the CPU build) with torchvision's own JPEG decoder and transforms v2, as
torchvision's reference training scripts use them with `--use-v2`:

  train  read_file -> decode_jpeg (RGB) -> v2.RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3,
         antialias) -> v2.RandomHorizontalFlip(0.5); shuffled
  val    read_file -> decode_jpeg (RGB) -> v2.Resize(256, antialias) -> v2.CenterCrop(224)

The output is torchvision's natural one, uint8 NCHW tensors (the default collate stacks them); no
mean subtraction, which is less work than millrace's int8 batch. decode_jpeg decodes the whole
image (libjpeg-turbo inside torchvision). DataLoader with `--threads` worker processes (each at
torch.set_num_threads(1)), `--prefetch` batches per worker (prefetch_factor), persistent workers,
full batches only.

Where torchvision cannot be imported beside this torch (PyPI's torchvision wheels are CUDA builds:
0.28.0, the release for torch 2.13, needs libc10_cuda.so, which the CPU build of torch 2.13.0 does
not have, and PyPI has no torchvision source to build), the same work runs on torch's own ops:
Pillow decodes the whole image (its libjpeg-turbo; `--decoder pil`), torch.from_numpy gives the
HWC pixels, and the crop and resize are what transforms v2 does to a uint8 tensor: the same
RandomResizedCrop parameter draw (10 tries, then the centre crop clamped to the ratio range),
a slice, and torch.nn.functional.interpolate(bilinear, antialias=True) on the uint8 tensor (the
kernel v2.Resize calls), torch.flip for the mirror. The JSON's "decoder" says which ran.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


def torch_ops_loader(torch, Image, recipe):
    """path -> uint8 CHW tensor: Pillow's decode, then what transforms v2 does to a uint8 tensor
    (torchvision/transforms/v2/_geometry.py, functional/_geometry.py), on torch's own ops."""
    import math
    import random
    import warnings

    import numpy as np
    import torch.nn.functional as F

    log_ratio = (math.log(peerlib.TRAIN_RATIO[0]), math.log(peerlib.TRAIN_RATIO[1]))

    # The decoded image is only read (crop, interpolate and flip make new tensors), so the
    # read-only array Pillow hands out is taken as it is rather than copied.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def pixels(path):
        with Image.open(path) as image:
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        return torch.from_numpy(array).permute(2, 0, 1)  # CHW view, channels-last memory

    def resize(image, height, width):
        # v2's uint8 path: interpolate straight on the uint8 batch of one (no float round trip).
        return F.interpolate(image[None], size=(height, width), mode="bilinear",
                             align_corners=False, antialias=True)[0]

    def random_resized_crop(image):
        height, width = image.shape[-2:]
        area = height * width
        for _ in range(10):
            target = area * random.uniform(*peerlib.TRAIN_SCALE)
            ratio = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                break
        else:
            in_ratio = width / height
            if in_ratio < peerlib.TRAIN_RATIO[0]:
                w, h = width, int(round(width / peerlib.TRAIN_RATIO[0]))
            elif in_ratio > peerlib.TRAIN_RATIO[1]:
                h, w = height, int(round(height * peerlib.TRAIN_RATIO[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        out = resize(image[:, top:top + h, left:left + w], peerlib.CROP, peerlib.CROP)
        return torch.flip(out, dims=[-1]) if random.random() < 0.5 else out

    def resize_centre_crop(image):
        height, width = image.shape[-2:]
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(peerlib.VAL_RESIZE * long / short)
        h, w = ((peerlib.VAL_RESIZE, new_long) if height <= width
                else (new_long, peerlib.VAL_RESIZE))
        image = resize(image, h, w)
        top = int(round((h - peerlib.CROP) / 2.0))
        left = int(round((w - peerlib.CROP) / 2.0))
        return image[:, top:top + peerlib.CROP, left:left + peerlib.CROP]

    transform = random_resized_crop if recipe == "train" else resize_centre_crop
    return lambda path: transform(pixels(path))


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--prefetch", type=int, default=2, help="prefetch_factor (batches per worker)")
    p.add_argument("--decoder", choices=["auto", "torchvision", "pil"], default="auto",
                   help="auto: torchvision's decode_jpeg + transforms v2 when torchvision "
                        "imports, else Pillow + torch's own ops")
    args = p.parse_args()
    peerlib.check(p, args)

    import torch
    from torch.utils.data import DataLoader, Dataset

    decoder, why = args.decoder, None
    if decoder in ("auto", "torchvision"):
        try:
            import torchvision
            from torchvision.io import ImageReadMode, decode_jpeg, read_file
            from torchvision.transforms import v2
            decoder, version = "torchvision", torchvision.__version__
        except (ImportError, RuntimeError, OSError) as e:
            if decoder == "torchvision":
                peerlib.fail(f"torch2: torchvision cannot be imported: {e}")
            decoder, why = "pil", f"torchvision cannot be imported: {type(e).__name__}: {e}"
    if decoder == "pil":
        import PIL
        from PIL import Image
        version = f"none (Pillow {PIL.__version__})"

    if decoder == "torchvision":
        if args.recipe == "train":
            transform = v2.Compose([
                v2.RandomResizedCrop(peerlib.CROP, scale=peerlib.TRAIN_SCALE,
                                     ratio=peerlib.TRAIN_RATIO, antialias=True),
                v2.RandomHorizontalFlip(0.5)])
        else:
            transform = v2.Compose([v2.Resize(peerlib.VAL_RESIZE, antialias=True),
                                    v2.CenterCrop(peerlib.CROP)])

        def load(path):
            return transform(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))
    else:
        load = torch_ops_loader(torch, Image, args.recipe)

    class Files(Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            path, _, label = self.items[index]
            return load(path), label

    def one_thread(_worker):
        torch.set_num_threads(1)

    items = peerlib.read_list(args.root, args.images)
    torch.manual_seed(peerlib.SEED)
    loader = DataLoader(Files(items), batch_size=args.batch, shuffle=args.recipe == "train",
                        num_workers=args.threads, drop_last=True, worker_init_fn=one_thread,
                        persistent_workers=True, prefetch_factor=args.prefetch)
    timer = peerlib.time_batches((b for _ in range(args.epochs) for b in loader),
                                 lambda batch: int(batch[0].shape[0]))
    peerlib.report(args, timer.result(
        "torch2", args, "uint8 NCHW (" + ("torchvision's decode_jpeg + transforms v2"
                                         if decoder == "torchvision" else
                                         "Pillow decode + torch ops as transforms v2 runs them")
        + ", no normalize)",
        settings={"num_workers": args.threads, "prefetch_factor": args.prefetch},
        decoder=decoder, decoder_note=why, torch=torch.__version__, torchvision=version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
