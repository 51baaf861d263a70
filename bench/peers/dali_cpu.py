#!/usr/bin/env python3
"""NVIDIA DALI on the CPU alone (device_id=None): the recipes as DALI's own ResNet-50 example
writes them, every operator on the CPU backend.

  train  fn.readers.file (shuffled) -> fn.decoders.image_random_crop (decodes the window only)
         -> fn.resize 224x224 -> fn.crop_mirror_normalize (mirror 0.5)
  val    fn.readers.file -> fn.decoders.image -> fn.resize (shorter side 256)
         -> fn.crop_mirror_normalize (centre 224)

crop_mirror_normalize subtracts the int8 contract's rounded means (124, 117, 104) with std 1 and
writes dtype INT8, layout CHW: the int8 NCHW batch millrace writes, bit for bit in intent.
`--threads` is the pipeline's num_threads; `--prefetch` its prefetch_queue_depth.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--prefetch", type=int, default=2, help="prefetch_queue_depth")
    args = p.parse_args()
    peerlib.check(p, args)

    import nvidia.dali as dali
    from nvidia.dali import fn, pipeline_def, types

    items = peerlib.read_list(args.root, args.images)
    # DALI's file_list: "relative/path label" per line, paths under file_root.
    listing = os.path.join(peerlib.work_dir(args, "dali"), f"list_{len(items)}.txt")
    with open(listing, "w") as f:
        for _, rel, label in items:
            f.write(f"{rel} {label}\n")
    train = args.recipe == "train"

    @pipeline_def(batch_size=args.batch, num_threads=args.threads, device_id=None,
                  prefetch_queue_depth=args.prefetch, seed=peerlib.SEED)
    def pipeline():
        jpegs, labels = fn.readers.file(file_root=os.path.abspath(args.root), file_list=listing,
                                        random_shuffle=train, name="reader")
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device="cpu", output_type=types.RGB,
                random_area=list(peerlib.TRAIN_SCALE),
                random_aspect_ratio=list(peerlib.TRAIN_RATIO), num_attempts=10)
            images = fn.resize(images, resize_x=peerlib.CROP, resize_y=peerlib.CROP)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=peerlib.VAL_RESIZE)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.INT8, output_layout="CHW",
                                          crop=(peerlib.CROP, peerlib.CROP),
                                          mean=list(peerlib.IMAGENET_MEAN_INT),
                                          std=[1.0, 1.0, 1.0], mirror=mirror)
        return images, labels

    pipe = pipeline()
    pipe.build()
    timer = peerlib.time_batches(
        (pipe.run() for _ in range(peerlib.batches_for(items, args.epochs, args.batch))),
        lambda out: len(out[0]))
    peerlib.report(args, timer.result(
        "dali", args, "int8 NCHW (crop_mirror_normalize dtype INT8, mean 124/117/104)",
        settings={"num_threads": args.threads, "prefetch_queue_depth": args.prefetch},
        dali=dali.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
