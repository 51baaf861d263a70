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


def test_the_loop_trains_under_distributed_data_parallel_on_two_ranks(source, dataset, tmp_path):
    # Two processes with the variables torchrun sets (Debian's torch 1.13 launcher fails on
    # Python 3.11 before it starts anything).
    script = os.path.join(source, "examples", "python", "train_loop.py")
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
        procs.append(subprocess.Popen(
            [sys.executable, "-B", script, "--root", dataset, "--loader", "millrace", "--model",
             "resnet18", "--steps", "3", "--batch", "2", "--threads", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    lines = [LINE.findall(out) for out, _ in outs]
    assert len(lines[0]) == 1 and lines[1] == []  # rank 0 alone reports
    assert int(lines[0][0][1]) == 2 * 2 and 0 < float(lines[0][0][4]) < 3 * 20
