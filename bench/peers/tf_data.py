#!/usr/bin/env python3
"""tf.data on the CPU (tensorflow-cpu): the recipes as TensorFlow's official ImageNet input
pipeline writes them.

  train  read_file -> extract_jpeg_shape -> stateless_sample_distorted_bounding_box (area
         0.08-1, ratio 3/4-4/3, 10 attempts, whole image when none fits) -> decode_and_crop_jpeg
         (decodes the window only) -> resize 224x224 (bilinear) -> random left-right flip
  val    read_file -> decode_jpeg -> resize, shorter side 256 (bilinear) -> centre crop 224

Both decoders run with TensorFlow's default `dct_method` (''), which its JPEG kernels map to
libjpeg's fast integer inverse DCT (JDCT_IFAST): TensorFlow chose speed over decoded quality;
`--dct-method INTEGER_ACCURATE` asks for the accurate one, millrace's default. Then
the int8 contract: clamp(pixel - (124, 117, 104)) as int8, transposed to CHW; batch with
drop_remainder. map() runs with num_parallel_calls=AUTOTUNE and the pipeline ends in
prefetch(AUTOTUNE) unless --prefetch N fixes it; the dataset's private thread pool has --threads
threads, and TensorFlow's intra- and inter-op pools the same count, so the core budget holds.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    p = peerlib.parser(__doc__.split("\n\n")[0])
    p.add_argument("--prefetch", type=int, default=-1, help="batches to prefetch (-1: AUTOTUNE)")
    p.add_argument("--pool", type=int, default=0,
                   help="the dataset's private thread pool size (0: --threads)")
    p.add_argument("--dct-method", choices=["", "INTEGER_FAST", "INTEGER_ACCURATE"], default="",
                   help="the JPEG decoders' dct_method; '' is TensorFlow's default, which its "
                        "decode kernels map to INTEGER_FAST (libjpeg's JDCT_IFAST)")
    args = p.parse_args()
    peerlib.check(p, args)

    import tensorflow as tf

    pool = args.pool or args.threads
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    items = peerlib.read_list(args.root, args.images)
    paths = [path for path, _, _ in items]
    labels = [label for _, _, label in items]
    train = args.recipe == "train"
    mean = tf.constant(peerlib.IMAGENET_MEAN_INT, dtype=tf.float32)
    whole = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])

    def to_int8(image):
        image = tf.clip_by_value(tf.round(image) - mean, -128.0, 127.0)
        return tf.transpose(tf.cast(image, tf.int8), [2, 0, 1])

    def train_map(path, label, seed):
        data = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(data)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=whole, seed=seed, min_object_covered=0.0,
            aspect_ratio_range=peerlib.TRAIN_RATIO, area_range=peerlib.TRAIN_SCALE,
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        y, x, _ = tf.unstack(begin)
        h, w, _ = tf.unstack(size)
        image = tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3,
                                           dct_method=args.dct_method)
        image = tf.image.resize(image, [peerlib.CROP, peerlib.CROP], method="bilinear")
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
        return to_int8(image), label

    def val_map(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method=args.dct_method)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = peerlib.VAL_RESIZE / tf.reduce_min(shape)
        size = tf.cast(tf.round(shape * scale), tf.int32)
        image = tf.image.resize(image, size, method="bilinear")
        top = (size[0] - peerlib.CROP) // 2
        left = (size[1] - peerlib.CROP) // 2
        image = image[top:top + peerlib.CROP, left:left + peerlib.CROP, :]
        return to_int8(image), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if train:
        ds = ds.shuffle(len(items), seed=peerlib.SEED, reshuffle_each_iteration=True)
    ds = ds.repeat(args.epochs)
    if train:
        seeds = tf.data.Dataset.random(seed=peerlib.SEED).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda pl, s: train_map(pl[0], pl[1], s),
                                                   num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=False)
    else:
        ds = ds.map(val_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(args.batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE if args.prefetch < 0 else args.prefetch)
    options = tf.data.Options()
    options.threading.private_threadpool_size = pool
    options.autotune.enabled = True
    options.autotune.cpu_budget = args.threads
    ds = ds.with_options(options)

    timer = peerlib.time_batches(ds, lambda batch: int(batch[0].shape[0]))
    peerlib.report(args, timer.result(
        "tfdata", args, "int8 NCHW (clamp(pixel - mean), transposed from TensorFlow's HWC)",
        settings={"private_threadpool_size": pool,
                  "prefetch": "AUTOTUNE" if args.prefetch < 0 else args.prefetch,
                  "dct_method": args.dct_method or "default (INTEGER_FAST)"},
        tensorflow=tf.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
