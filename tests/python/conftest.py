"""Fixtures of the Python package's tests: the CLI binary and the source tree (from the
environment ctest sets), a small dataset made once per session with the CLI, one copy of it with
bad files mixed in, and helpers to run the CLI.

Everything the tests write goes under pytest's temporary folders."""

import os
import shutil
import subprocess

import pytest

RUN_TIMEOUT_S = 120
DATASET_COUNT = 40


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through ctest (tests/python)")
    return value


@pytest.fixture(scope="session")
def cli():
    return _env("MILLRACE_CLI")


@pytest.fixture(scope="session")
def source():
    return _env("MILLRACE_SOURCE")


def run_cli(cli_path, *args, cwd=None):
    result = subprocess.run([cli_path, *map(str, args)], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S, cwd=cwd, check=False)
    return result


@pytest.fixture(scope="session")
def dataset(cli, tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "imagenet-like"
    result = run_cli(cli, "make-dataset", root, "--count", DATASET_COUNT, "--classes", 4)
    assert result.returncode == 0, result.stderr
    return str(root)


@pytest.fixture(scope="session")
def bad_dataset(dataset, source, tmp_path_factory):
    """The dataset as a scanned folder with an empty file and a file of random bytes added, both named .jpg."""
    root = tmp_path_factory.mktemp("bad") / "images"
    shutil.copytree(dataset, root)
    os.remove(root / "labels.lst")
    bad = os.path.join(source, "tests", "data", "bad")
    shutil.copy(os.path.join(bad, "empty.jpg"), root / "class_000" / "zz_empty.jpg")
    shutil.copy(os.path.join(bad, "random.jpg"), root / "class_001" / "zz_random.jpg")
    return str(root)
