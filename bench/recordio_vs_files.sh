#!/usr/bin/env bash
# Reads the same images as files and as a packed .rec through the same decode / augment /
# normalize / batch stages, and prints both rates and their ratio (RecordIO / files).
#
#   bench/recordio_vs_files.sh [DATASET_ROOT] [IMAGES] [MILLRACE]
set -euo pipefail
root=${1:-data/imagenet-like}
images=${2:-1000}
millrace=${3:-build/millrace}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

head -n "$images" "$root/labels.lst" > "$work/subset.lst"
"$millrace" pack --list "$work/subset.lst" --root "$root" "$work/subset.rec" > /dev/null

common='  - {type: decode}
  - {type: augment, resize: 256, crop: center, size: [224, 224]}
  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939], layout: NCHW}
  - {type: batch, size: 64, last: drop}
  - {type: discard}'
cat > "$work/files.yaml" <<YAML
pipeline: {name: files, threads: 2}
stages:
  - {type: files, root: $(realpath "$root"), list: $work/subset.lst}
$common
YAML
cat > "$work/recordio.yaml" <<YAML
pipeline: {name: recordio, threads: 2}
stages:
  - {type: recordio, path: $work/subset.rec}
$common
YAML

rate() { "$millrace" bench "$1" --repeats 3 --warmup 1 --json "$1.json" > /dev/null
         /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images_per_second"])' "$1.json"; }
files=$(rate "$work/files.yaml")
rec=$(rate "$work/recordio.yaml")
/usr/bin/python3 - "$files" "$rec" "$images" <<'PY'
import sys
files, rec, n = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"| source | images/s (median of 3) |\n| --- | --- |")
print(f"| files ({n} JPEGs) | {files:.0f} |\n| recordio (same images packed) | {rec:.0f} |")
print(f"recordio / files = {rec / files:.2f}")
PY
