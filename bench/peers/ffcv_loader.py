#!/usr/bin/env python3
"""FFCV: a .beton written once from the same files, then FFCV's Loader with its JIT-compiled
(numba) decoders, as FFCV's ImageNet example configures them.

The .beton: `RGBImageField(write_mode='jpg', max_resolution=None, jpeg_quality=90)`, so every
image is stored as a JPEG at its own size. FFCV cannot store a file's original bytes: its writer
decodes each image (PIL, converted to RGB: grayscale photos become 3 channels) and re-encodes it at
`jpeg_quality` (OpenCV), 90 being FFCV's default. It is written to WORK/ffcv/ once per list and
reused; writing it is not timed.

  train  RandomResizedCropRGBImageDecoder((224, 224), scale 0.08-1, ratio 3/4-4/3) (decodes the
         whole image, then resizes the window with INTER_AREA) -> RandomHorizontalFlip
  val    CenterCropRGBImageDecoder((224, 224), ratio=224/256): the centre square of 224/256 of
         the shorter side, resized to 224, which is resize 256 + centre crop 224

-> ToTensor -> ToTorchImage: uint8 NCHW (a view of NHWC memory, FFCV's channels_last default).
FFCV has no integer normalize (NormalizeImage writes float16/float32), so the output is the raw
pixels: less work than the int8 mean subtraction the others do.
`--threads` is num_workers (threads, not processes); `--prefetch` is batches_ahead.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

JPEG_QUALITY = 90


def write_beton(items, path):
    import numpy as np
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from PIL import Image

    class Files:
        def __len__(self):
            return len(items)

        def __getitem__(self, index):
            file, _, label = items[index]
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB")), label

    tmp = path + ".partial"
    writer = DatasetWriter(tmp, {
        "image": RGBImageField(write_mode="jpg", max_resolution=None, jpeg_quality=JPEG_QUALITY),
        "label": IntField(),
    }, num_workers=2)
    writer.from_indexed_dataset(Files())
    os.replace(tmp, path)


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--prefetch", type=int, default=3, help="batches_ahead")
    args = p.parse_args()
    peerlib.check(p, args)

    import ffcv
    import torch
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import (CenterCropRGBImageDecoder,
                                       RandomResizedCropRGBImageDecoder)
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    torch.set_num_threads(1)
    items = peerlib.read_list(args.root, args.images)
    beton = os.path.join(peerlib.work_dir(args, "ffcv"), f"first{len(items)}_q{JPEG_QUALITY}.beton")
    if not os.path.exists(beton):
        write_beton(items, beton)

    size = (peerlib.CROP, peerlib.CROP)
    if args.recipe == "train":
        decoder = RandomResizedCropRGBImageDecoder(size, scale=peerlib.TRAIN_SCALE,
                                                   ratio=peerlib.TRAIN_RATIO)
        image_pipeline = [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage()]
        order = OrderOption.RANDOM
    else:
        decoder = CenterCropRGBImageDecoder(size, ratio=peerlib.CROP / peerlib.VAL_RESIZE)
        image_pipeline = [decoder, ToTensor(), ToTorchImage()]
        order = OrderOption.SEQUENTIAL
    loader = Loader(beton, batch_size=args.batch, num_workers=args.threads, order=order,
                    os_cache=True, drop_last=True, seed=peerlib.SEED,
                    batches_ahead=args.prefetch,
                    pipelines={"image": image_pipeline, "label": [IntDecoder(), ToTensor()]})

    timer = peerlib.time_batches((b for _ in range(args.epochs) for b in loader),
                                 lambda batch: int(batch[0].shape[0]))
    peerlib.report(args, timer.result(
        "ffcv", args, "uint8 NCHW (view of NHWC memory; FFCV has no integer normalize)",
        settings={"num_workers": args.threads, "batches_ahead": args.prefetch},
        beton=beton, beton_bytes=os.path.getsize(beton), jpeg_quality=JPEG_QUALITY,
        max_resolution=None, ffcv=ffcv.__version__, torch=torch.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
