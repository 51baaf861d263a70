#!/usr/bin/env python3
"""An independent MXNet RecordIO reader, written from the format description with Python's struct
module only, to check what millrace writes without trusting millrace's own reader.

usage: read_rec.py FILE.rec [--idx FILE.idx]

Prints one line per image record, in file order:
    offset<TAB>id<TAB>flag<TAB>labels<TAB>sha256
where labels are the record's labels (flag 0: the header label; flag k > 0: the k labels after the
header) written with %.9g and joined by commas, and sha256 is the hex digest of the encoded image
bytes (the payload after the header and labels).

With --idx, also checks the index: every line is `key<TAB>offset`, every offset is the start of a
record, every record is listed once, and each key equals that record's header id.

Exits 1 with a message naming the byte offset on the first framing error (strict: no
resynchronisation), 2 on a usage error.
"""

import argparse
import hashlib
import struct
import sys

MAGIC = 0xCED7230A
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2


class RecError(Exception):
    pass


def read_records(data):
    """Yields (offset, payload) for each record, reassembling split records."""
    pos = 0
    size = len(data)
    if size % 4:
        raise RecError(f"file size {size} is not a multiple of 4")
    while pos < size:
        head = pos
        parts = []
        expect_continuation = False
        while True:
            if pos + 8 > size:
                raise RecError(f"record at offset {head}: truncated part header at offset {pos}")
            magic, lrec = struct.unpack_from("<II", data, pos)
            if magic != MAGIC:
                raise RecError(f"bad magic 0x{magic:08X} at offset {pos}")
            cflag = lrec >> 29
            length = lrec & ((1 << 29) - 1)
            if expect_continuation and cflag not in (2, 3):
                raise RecError(f"record at offset {head}: part at offset {pos} has cflag {cflag}, "
                               "expected 2 or 3")
            if not expect_continuation and cflag not in (0, 1):
                raise RecError(f"part at offset {pos} has cflag {cflag} but no first part")
            start = pos + 8
            if start + length > size:
                raise RecError(f"record at offset {head}: part at offset {pos} runs past the end")
            parts.append(data[start:start + length])
            pad = (4 - length % 4) % 4
            if any(data[start + length:start + length + pad]):
                raise RecError(f"record at offset {head}: non-zero padding after offset {pos}")
            pos = start + length + pad
            if cflag in (0, 3):
                break
            expect_continuation = True
        yield head, struct.pack("<I", MAGIC).join(parts)


def parse_image(offset, payload):
    if len(payload) < HEADER.size:
        raise RecError(f"record at offset {offset}: payload of {len(payload)} bytes has no header")
    flag, label, rec_id, _id2 = HEADER.unpack_from(payload, 0)
    body = HEADER.size
    if flag == 0:
        labels = [label]
    else:
        if body + 4 * flag > len(payload):
            raise RecError(f"record at offset {offset}: flag {flag} runs past the payload")
        labels = list(struct.unpack_from(f"<{flag}f", payload, body))
        body += 4 * flag
    return rec_id, flag, labels, payload[body:]


def read_index(path):
    entries = []
    with open(path, encoding="ascii") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
                raise RecError(f"{path}:{number}: malformed line {line!r}")
            entries.append((int(fields[0]), int(fields[1])))
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec")
    parser.add_argument("--idx")
    args = parser.parse_args()
    with open(args.rec, "rb") as f:
        data = f.read()
    try:
        records = {}
        lines = []
        for offset, payload in read_records(data):
            rec_id, flag, labels, image = parse_image(offset, payload)
            records[offset] = rec_id
            text = ",".join("%.9g" % v for v in labels)
            lines.append(f"{offset}\t{rec_id}\t{flag}\t{text}\t{hashlib.sha256(image).hexdigest()}")
        if args.idx:
            index = read_index(args.idx)
            offsets = [o for _, o in index]
            if len(set(offsets)) != len(offsets):
                raise RecError(f"{args.idx}: an offset is listed twice")
            for key, offset in index:
                if offset not in records:
                    raise RecError(f"{args.idx}: offset {offset} (key {key}) is not a record start")
                if records[offset] != key:
                    raise RecError(f"{args.idx}: key {key} at offset {offset}, the record's id is "
                                   f"{records[offset]}")
            if set(offsets) != set(records):
                raise RecError(f"{args.idx}: lists {len(offsets)} records, the file has "
                               f"{len(records)}")
    except RecError as e:
        print(f"read_rec.py: {args.rec}: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
