"""What the bench/ scripts share: running a command, printing a table, writing the JSON report.

Imported as `benchlib` by the scripts in this folder (Python puts a script's own folder first on
its path).
"""

import json
import os
import subprocess
import time


class RunFailed(Exception):
    """A command the benchmark needs failed, timed out or could not start; the message says which."""


def run(cmd, timeout, what, cwd=None, env=None):
    """Runs `cmd`, capturing its output; returns (CompletedProcess, wall seconds)."""
    started = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                env=env)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{what} did not finish within {timeout} s: {' '.join(cmd)}")
    except OSError as e:
        raise RunFailed(f"{what} could not start: {e}")
    if result.returncode != 0:
        raise RunFailed(f"{what} failed with status {result.returncode}: {' '.join(cmd)}\n"
                        f"{result.stdout}{result.stderr}")
    return result, time.perf_counter() - started


def print_table(header, rows):
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(header))
    for r in rows:
        print(line(r))


def write_json(path, data):
    """Writes `data` to `path` (creating its folder), indented, and says so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"wrote {path}")
