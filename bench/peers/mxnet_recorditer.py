#!/usr/bin/env python3
"""Apache MXNet 1.9.1's ImageRecordIter, the C++ loader millrace descends from, over a RecordIO
file that `millrace pack` writes from the same files (the original JPEG bytes, as im2rec stores
them; WORK/mxnet/, made once per list, not timed).

  train  random_resized_crop (area 0.08-1, ratio 3/4-4/3), rand_mirror, 224x224
  val    resize=256 (shorter side), centre crop 224 (rand_crop off)

dtype='int8' with mean_r/g/b: the int8 contract's MXNet mode, int8 NCHW, the batch millrace
writes. `--threads` is preprocess_threads (the decode and augment threads; the iterator's own
prefetch thread comes on top, as in every MXNet run); `--prefetch` is prefetch_buffer. round_batch
is off and a padded last batch is not counted: full batches only, as everywhere else.
The interpreter needs mxnet (`.venv-mxnet`, made by scripts/setup).
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


def pack(millrace, root, items, out_dir):
    """WORK/mxnet/firstN.rec (+ .idx) from the first N lines of the list, by `millrace pack`."""
    stem = os.path.join(out_dir, f"first{len(items)}")
    rec = stem + ".rec"
    if os.path.exists(rec) and os.path.exists(stem + ".idx"):
        return rec, stem + ".idx"
    listing = stem + ".lst"
    with open(listing, "w") as f:
        for index, (_, rel, label) in enumerate(items):
            f.write(f"{index}\t{label}\t{rel}\n")
    subprocess.run([millrace, "pack", "--list", listing, "--root", os.path.abspath(root),
                    stem + ".partial.rec"], check=True, stdout=subprocess.DEVNULL)
    os.replace(stem + ".partial.idx", stem + ".idx")
    os.replace(stem + ".partial.rec", rec)
    return rec, stem + ".idx"


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--prefetch", type=int, default=4, help="prefetch_buffer")
    p.add_argument("--millrace", required=True, help="the millrace executable (for `pack`)")
    args = p.parse_args()
    peerlib.check(p, args)

    import mxnet as mx

    items = peerlib.read_list(args.root, args.images)
    rec, idx = pack(args.millrace, args.root, items, peerlib.work_dir(args, "mxnet"))
    mean_r, mean_g, mean_b = peerlib.IMAGENET_MEAN_PIXELS
    common = dict(path_imgrec=rec, path_imgidx=idx, data_shape=(3, peerlib.CROP, peerlib.CROP),
                  batch_size=args.batch, preprocess_threads=args.threads,
                  prefetch_buffer=args.prefetch, dtype="int8", mean_r=mean_r, mean_g=mean_g,
                  mean_b=mean_b, round_batch=False, seed=peerlib.SEED)
    if args.recipe == "train":
        it = mx.io.ImageRecordIter(shuffle=True, random_resized_crop=True,
                                   min_random_area=peerlib.TRAIN_SCALE[0],
                                   max_random_area=peerlib.TRAIN_SCALE[1],
                                   min_aspect_ratio=peerlib.TRAIN_RATIO[0],
                                   max_aspect_ratio=peerlib.TRAIN_RATIO[1], rand_mirror=True,
                                   **common)
    else:
        it = mx.io.ImageRecordIter(shuffle=False, resize=peerlib.VAL_RESIZE, rand_crop=False,
                                   **common)

    def full_batches():
        for epoch in range(args.epochs):
            if epoch:
                it.reset()
            yield from (batch for batch in it if not batch.pad)

    timer = peerlib.time_batches(full_batches(), lambda batch: batch.data[0].shape[0])
    peerlib.report(args, timer.result(
        "mxnet", args, "int8 NCHW (ImageRecordIter dtype='int8', mean only)",
        settings={"preprocess_threads": args.threads, "prefetch_buffer": args.prefetch},
        mxnet=mx.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
