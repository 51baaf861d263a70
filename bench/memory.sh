#!/usr/bin/env bash
# Peak memory does not grow with the data set: runs the same pipeline over 1,000 images and over
# 20,000, and prints both peak resident set sizes (/usr/bin/time's "Maximum resident set size")
# and their ratio, for the validation recipe with shuffle off and on, and for configs/train.yaml,
# then the largest ratio against the target (below 1.10).
#
#   bench/memory.sh [DATASET_ROOT] [MILLRACE]
#
# DATASET_ROOT holds at least 1,000 images and an im2rec labels.lst (default data/imagenet-like,
# from `millrace make-dataset data/imagenet-like --count 2000`). The 1,000 set is its first 1,000
# list entries. The 20,000 set costs no generation time: 20 hard-linked copies of the data set's
# folder tree (symbolic links when the temporary folder is on another file system), listed under
# 20,000 distinct names and ids, so the source really walks 20,000 entries and opens 20,000 paths.
set -euo pipefail
root=$(realpath "${1:-data/imagenet-like}")
millrace=$(realpath "${2:-build/millrace}")
small=1000
copies=20
large=$((small * copies))

[[ -f "$root/labels.lst" ]] || { echo "memory.sh: $root/labels.lst not found" >&2; exit 2; }
have=$(grep -c . "$root/labels.lst")
((have >= small)) || { echo "memory.sh: $root lists $have images, needs $small" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "memory.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

# Beside the data set when possible, so that hard links work.
work=$(mktemp -d "$(dirname "$root")/.millrace_memory_XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT

head -n "$small" "$root/labels.lst" > "$work/small.lst"
mkdir -p "$work/large"
link=-l
for ((c = 0; c < copies; ++c)); do
  dir=$(printf 'copy%02d' "$c")
  mkdir "$work/large/$dir"
  for class in "$root"/*/; do
    cp -R $link "$class" "$work/large/$dir/" 2>/dev/null ||
      { link=-s; cp -R $link "$class" "$work/large/$dir/"; }
  done
done
awk -F '\t' -v OFS='\t' -v n="$small" -v copies="$copies" '
  { line[NR] = $0; path[NR] = $NF }
  END {
    for (c = 0; c < copies; ++c)
      for (i = 1; i <= NR; ++i) {
        $0 = line[i]; $1 = c * n + (i - 1); $NF = sprintf("copy%02d/%s", c, path[i]); print
      }
  }' "$work/small.lst" > "$work/large/labels.lst"

# The validation recipe of configs/default.yaml with a discarding sink (npy would write 3 GB).
cat > "$work/validation.yaml" <<'YAML'
pipeline: {name: memory-validation, threads: 2, queue: 8, ordered: true}
stages:
  - {type: files, root: ., list: labels.lst, shuffle: false, seed: 42}
  - {type: decode, concurrency: 2, on_error: skip}
  - {type: augment, resize: 256, crop: center, size: [224, 224]}
  - {type: normalize, dtype: int8, mean: [123.68, 116.779, 103.939], layout: NCHW}
  - {type: batch, size: 64, last: pad}
  - {type: discard}
YAML

# Runs a config over a data set; prints "images peak_kib".
peak() {
  local config=$1 data=$2 list=$3
  shift 3
  /usr/bin/time -v -o "$work/time.txt" "$millrace" run "$config" --quiet --json "$work/run.json" \
    --set files.root="$data" --set files.list="$list" "$@" > /dev/null
  local images kib
  images=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"])' \
    "$work/run.json")
  kib=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")
  echo "$images $kib"
}

echo "| run | images | peak RSS (MiB) | images | peak RSS (MiB) | 20,000 / 1,000 |"
echo "| --- | --- | --- | --- | --- | --- |"
worst=0
row() {
  local name=$1 config=$2
  shift 2
  read -r n1 k1 < <(peak "$config" "$root" "$work/small.lst" "$@")
  read -r n2 k2 < <(peak "$config" "$work/large" labels.lst "$@")
  local ratio
  ratio=$(awk -v k1="$k1" -v k2="$k2" 'BEGIN { printf "%.3f", k2 / k1 }')
  awk -v name="$name" -v n1="$n1" -v k1="$k1" -v n2="$n2" -v k2="$k2" -v r="$ratio" 'BEGIN {
    printf "| %s | %d | %.1f | %d | %.1f | %s |\n", name, n1, k1 / 1024, n2, k2 / 1024, r }'
  worst=$(awk -v w="$worst" -v r="$ratio" 'BEGIN { print (r + 0 > w + 0 ? r : w) }')
}
row "validation, shuffle off" "$work/validation.yaml"
row "validation, shuffle on" "$work/validation.yaml" --set files.shuffle=true
row "configs/train.yaml (shuffle on)" "$(cd "$(dirname "$0")/.." && pwd)/configs/train.yaml"
echo
awk -v w="$worst" 'BEGIN {
  printf "largest 20,000 / 1,000 ratio: %.3f (target: below 1.100, %s)\n", w,
    w < 1.1 ? "met" : "NOT met" }'
