"""MXNet's side of the MXNet comparison test: runs inside .venv-mxnet (MXNet 1.9.1, numpy 1.23).

Two commands, each reading a JSON request from argv[1] and writing NumPy files into request["out"]:

  iter    mx.io.ImageRecordIter over one .rec (one epoch): batch_<k>_data.npy (as MXNet gives it,
          NCHW), batch_<k>_label.npy (float32) and batches.json (each batch's `pad`), plus
          records.json: the header id and label of every record in file order, read with
          mx.recordio (the iterator's own `index` is not filled in by ImageRecordIter).
  stages  for the records named in request["positions"] (file order), MXNet's pixels after each
          step of its default augmenter, each from ImageRecordIter itself run over that one
          record (uint8): decode (data shape = the decoded size), resize (data shape = the
          resized size) and the center crop (the case's data shape; an image smaller than it
          is scaled up first). <pos>_<stage>.npy, HWC uint8 RGB.

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
        records.append({"id": int(header.id), "label": label, "payload": payload, "raw": item})
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


def exif_orientation(data):
    """The EXIF orientation (1-8) of a JPEG, 1 when it has none; only to know the shape that
    cv::imdecode, which applies it, gives."""
    if data[:2] != b"\xff\xd8":
        return 1
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
            tiff = data[pos + 10:pos + 2 + length]
            order = "little" if tiff[:2] == b"II" else "big"
            ifd = int.from_bytes(tiff[4:8], order)
            count = int.from_bytes(tiff[ifd:ifd + 2], order)
            for i in range(count):
                entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
                if int.from_bytes(entry[0:2], order) == 0x0112:
                    value = int.from_bytes(entry[8:10], order)
                    return value if 1 <= value <= 8 else 1
            return 1
        pos += 2 + length
    return 1


def iterate_one(rec, data_shape, resize):
    """ImageRecordIter over a one-record .rec, uint8: the record's pixels after MXNet's own
    decode, resize and center crop, HWC."""
    kwargs = dict(path_imgrec=rec, data_shape=tuple(data_shape), batch_size=1, dtype="uint8",
                  shuffle=False, rand_crop=False, rand_mirror=False, preprocess_threads=1)
    if resize > 0:
        kwargs["resize"] = resize
    batch = next(iter(mx.io.ImageRecordIter(**kwargs)))
    return np.ascontiguousarray(batch.data[0].asnumpy()[0].transpose(1, 2, 0))


def run_stages(req):
    """Each stage's pixels from ImageRecordIter itself, over the one record: `decode` with a
    data shape equal to the decoded size (the center crop then takes all of it), `resize` with
    `resize` and a data shape equal to the resized size, `crop` with the case's recipe."""
    out = req["out"]
    os.makedirs(out, exist_ok=True)
    records = read_records(req["rec"])
    _, crop_h, crop_w = req["data_shape"]
    resize = req.get("resize", 0)
    for pos in req["positions"]:
        rec = os.path.join(out, "%d.rec" % pos)
        writer = mx.recordio.MXRecordIO(rec, "w")
        writer.write(records[pos]["raw"])
        writer.close()
        payload = records[pos]["payload"]
        # The stored size (mx.image.imdecode reads no EXIF), turned as cv::imdecode turns it.
        h, w = mx.image.imdecode(payload, flag=1).shape[:2]
        if exif_orientation(payload) >= 5:
            h, w = w, h
        np.save(os.path.join(out, "%d_decode.npy" % pos), iterate_one(rec, (3, h, w), 0))
        if resize > 0:
            if h > w:
                h, w = resize * h // w, resize
            else:
                h, w = resize, resize * w // h
            np.save(os.path.join(out, "%d_resize.npy" % pos),
                    iterate_one(rec, (3, h, w), resize))
        np.save(os.path.join(out, "%d_crop.npy" % pos),
                iterate_one(rec, (3, crop_h, crop_w), resize))


def main():
    command = sys.argv[1]
    with open(sys.argv[2]) as f:
        req = json.load(f)
    {"iter": run_iter, "stages": run_stages}[command](req)


if __name__ == "__main__":
    main()
