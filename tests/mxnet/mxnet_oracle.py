"""MXNet's side of the MXNet comparison test: runs inside .venv-mxnet (MXNet 1.9.1, numpy 1.23).

Two commands, each reading a JSON request from argv[1] and writing NumPy files into request["out"]:

  iter    mx.io.ImageRecordIter over one .rec (one epoch): batch_<k>_data.npy (as MXNet gives it,
          NCHW), batch_<k>_label.npy (float32) and batches.json (each batch's `pad`), plus
          records.json: the header id and label of every record in file order, read with
          mx.recordio (the iterator's own `index` is not filled in by ImageRecordIter).
  stages  for the records named in request["positions"] (file order), MXNet's pixels after each
          step of its default augmenter, computed with the same OpenCV calls through MXNet's
          image operators: decode (cv::imdecode, then BGR to RGB), resize (cv::resize,
          INTER_LINEAR, shorter side to `resize`, longer side resize * long / short), the
          upscale of an image smaller than the crop, and the center crop. HWC uint8 RGB.

The comparison itself is in mxnet_compat_test.py, which runs under Debian's Python.
"""

import json
import os
import sys

import mxnet as mx
import numpy as np


def read_records(rec):
    reader = mx.recordio.MXRecordIO(rec, "r")
    records = []
    while True:
        item = reader.read()
        if item is None:
            break
        header, payload = mx.recordio.unpack(item)
        label = header.label
        label = [float(v) for v in np.atleast_1d(label)]
        records.append({"id": int(header.id), "label": label, "payload": payload})
    reader.close()
    return records


def run_iter(req):
    out = req["out"]
    os.makedirs(out, exist_ok=True)
    kwargs = dict(
        path_imgrec=req["rec"],
        data_shape=tuple(req["data_shape"]),
        batch_size=req["batch_size"],
        dtype=req["dtype"],
        round_batch=req["round_batch"],
        shuffle=False,
        rand_crop=False,
        rand_mirror=False,
        preprocess_threads=req.get("threads", 2),
        prefetch_buffer=1,
    )
    if req.get("idx"):
        kwargs["path_imgidx"] = req["idx"]
    if req.get("resize", 0) > 0:
        kwargs["resize"] = req["resize"]
    if req.get("mean"):
        kwargs["mean_r"], kwargs["mean_g"], kwargs["mean_b"] = req["mean"]
    it = mx.io.ImageRecordIter(**kwargs)
    pads = []
    for k, batch in enumerate(it):
        np.save(os.path.join(out, "batch_%06d_data.npy" % k), batch.data[0].asnumpy())
        np.save(os.path.join(out, "batch_%06d_label.npy" % k), batch.label[0].asnumpy())
        pads.append(int(batch.pad))
    with open(os.path.join(out, "batches.json"), "w") as f:
        json.dump({"pads": pads}, f)
    records = [{"id": r["id"], "label": r["label"]} for r in read_records(req["rec"])]
    with open(os.path.join(out, "records.json"), "w") as f:
        json.dump(records, f)


def run_stages(req):
    out = req["out"]
    os.makedirs(out, exist_ok=True)
    records = read_records(req["rec"])
    _, crop_h, crop_w = req["data_shape"]
    resize = req.get("resize", 0)
    for pos in req["positions"]:
        payload = records[pos]["payload"]
        # ImageRecordIter decodes with cv::imdecode(buf, 1) (this wheel has no TurboJPEG path);
        # _cvimdecode is the same call followed by cv::cvtColor BGR -> RGB.
        img = mx.image.imdecode(payload, flag=1, to_rgb=1)
        np.save(os.path.join(out, "%d_decode.npy" % pos), img.asnumpy())
        if resize > 0:
            h, w = img.shape[0], img.shape[1]
            if h > w:
                nh, nw = resize * h // w, resize
            else:
                nh, nw = resize, resize * w // h
            img = mx.image.imresize(img, nw, nh, interp=1)
            np.save(os.path.join(out, "%d_resize.npy" % pos), img.asnumpy())
        # The default augmenter's center crop first scales up an image smaller than the crop,
        # with the new side truncated from float arithmetic.
        h, w = img.shape[0], img.shape[1]
        if h < crop_h:
            nw = int(np.float32(crop_h) / np.float32(h) * np.float32(w))
            img = mx.image.imresize(img, nw, crop_h, interp=1)
            h, w = img.shape[0], img.shape[1]
        if w < crop_w:
            nh = int(np.float32(crop_w) / np.float32(w) * np.float32(h))
            img = mx.image.imresize(img, crop_w, nh, interp=1)
            h, w = img.shape[0], img.shape[1]
        y = (h - crop_h) // 2
        x = (w - crop_w) // 2
        crop = img.asnumpy()[y:y + crop_h, x:x + crop_w]
        np.save(os.path.join(out, "%d_crop.npy" % pos), np.ascontiguousarray(crop))


def main():
    command = sys.argv[1]
    with open(sys.argv[2]) as f:
        req = json.load(f)
    {"iter": run_iter, "stages": run_stages}[command](req)


if __name__ == "__main__":
    main()
