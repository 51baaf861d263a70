#!/usr/bin/env bash
# Proves that an installed millrace can be embedded with find_package(Millrace): builds and
# installs the library into a private prefix, builds tests/consumer against that prefix only, makes
# a small dataset with the installed CLI and runs the consumer on it.
#
#   tests/packaging_test.sh SOURCE_DIR WORK_DIR
#
# WORK_DIR/build and WORK_DIR/consumer-build are reused between runs (incremental); WORK_DIR/prefix
# and WORK_DIR/dataset are recreated, so a stale install cannot hide a missing file.
# MILLRACE_PACKAGING_JOBS sets the build parallelism (default 2).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 SOURCE_DIR WORK_DIR" >&2
  exit 2
fi
source_dir=$(cd "$1" && pwd)
mkdir -p "$2"
work_dir=$(cd "$2" && pwd)
jobs=${MILLRACE_PACKAGING_JOBS:-2}
prefix=$work_dir/prefix

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

step() { printf '\n== %s\n' "$*"; }

# A build folder configured with another generator cannot be reconfigured with this one.
for dir in "$work_dir/build" "$work_dir/consumer-build"; do
  if [[ -f $dir/CMakeCache.txt && ${#generator[@]} -gt 0 ]] &&
    ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$dir/CMakeCache.txt"; then
    rm -rf "$dir"
  fi
done
rm -rf "$prefix" "$work_dir/dataset"

step "configure millrace"
cmake -S "$source_dir" -B "$work_dir/build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DMILLRACE_BUILD_TESTS=OFF \
  -DMILLRACE_BUILD_BENCH=OFF

step "build millrace"
cmake --build "$work_dir/build" --parallel "$jobs"

step "install millrace into $prefix"
cmake --install "$work_dir/build"

for file in include/millrace/millrace.hpp bin/millrace; do
  if [[ ! -f $prefix/$file ]]; then
    echo "error: the install is missing $file" >&2
    exit 1
  fi
done
for file in MillraceConfig.cmake MillraceConfigVersion.cmake MillraceTargets.cmake; do
  if ! compgen -G "$prefix/lib*/cmake/Millrace/$file" >/dev/null; then
    echo "error: the install is missing lib/cmake/Millrace/$file" >&2
    exit 1
  fi
done
# The public headers must stand on their own: nothing from the engine or the stages leaks out.
if grep -rnE '#include +"(engine|stages|datasets)/' "$prefix/include/millrace"; then
  echo "error: an installed header includes a file that is not installed" >&2
  exit 1
fi

step "configure the consumer against $prefix only"
cmake -S "$source_dir/tests/consumer" -B "$work_dir/consumer-build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON

step "build the consumer"
cmake --build "$work_dir/consumer-build" --parallel "$jobs"

step "make a dataset with the installed CLI"
"$prefix/bin/millrace" make-dataset "$work_dir/dataset" --count 12 --classes 2

step "run the consumer"
"$work_dir/consumer-build/millrace_consumer" "$work_dir/dataset"

step "import the installed Python package and read a batch"
site=$(compgen -G "$prefix/lib/python3*/dist-packages" | head -n 1)
if [[ -z $site || ! -f $site/millrace/__init__.py ]]; then
  echo "error: the install is missing the Python package (lib/python3.X/dist-packages/millrace)" >&2
  exit 1
fi
(cd "$work_dir" && PYTHONPATH=$site /usr/bin/python3 -B -c '
import sys, millrace
pipe = millrace.Pipeline({"stages": [
    {"type": "files", "root": sys.argv[1]}, {"type": "decode"},
    {"type": "augment", "resize": 36, "size": [32, 32]},
    {"type": "normalize", "dtype": "int8", "mean": [124, 117, 104]},
    {"type": "batch", "size": 4}]})
batch = next(iter(pipe))
assert millrace.__file__.startswith(sys.argv[2]), millrace.__file__
assert batch.data.shape == (4, 3, 32, 32) and str(batch.data.dtype) == "int8", batch
' "$work_dir/dataset" "$site")
echo "packaging test passed"
