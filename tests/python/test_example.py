"""examples/python/train_loop.py runs as its docstring says, with either loader."""

import os
import re
import subprocess
import sys

import pytest

LINE = re.compile(r"^(millrace|dataloader): (\d+) images in [\d.]+ s, [\d.]+ images/s "
                  r"\(model (\S+), batch (\d+), checksum (\S+), \(([\d, ]+)\) (\w+), "
                  r"mean (\S+), std (\S+)\)$", re.M)


def run_example(source, *args):
    script = os.path.join(source, "examples", "python", "train_loop.py")
    result = subprocess.run([sys.executable, "-B", script, *args], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ), check=False)
    assert result.returncode == 0, result.stderr
    match = LINE.search(result.stdout)
    assert match, result.stdout
    return match


@pytest.mark.parametrize("loader,dtype", [("millrace", "float32"), ("millrace", "int8"),
                                          ("dataloader", "float32")])
def test_both_loaders_give_the_loop_the_same_kind_of_tensor(source, dataset, loader, dtype):
    m = run_example(source, "--root", dataset, "--loader", loader, "--model", "none",
                    "--steps", "9", "--batch", "4", "--threads", "2", "--dtype", dtype)
    assert m.group(1) == loader and int(m.group(2)) == 8 * 4 and m.group(4) == "4"
    assert m.group(6) == "4, 3, 224, 224" and m.group(7) == "float32"
    # Normalised as torchvision normalises, not in pixel units: about zero mean, unit spread.
    assert abs(float(m.group(8))) < 1.5 and 0.3 < float(m.group(9)) < 2.0


def test_a_torchvision_network_trains_on_millrace_batches(source, dataset):
    m = run_example(source, "--root", dataset, "--loader", "millrace", "--model", "resnet18",
                    "--steps", "2", "--batch", "2", "--threads", "2")
    loss = float(m.group(5))
    assert int(m.group(2)) == 2 and 0 < loss < 2 * 20  # two cross-entropy losses over 1000 classes
