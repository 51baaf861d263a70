#!/usr/bin/python3
"""End-to-end tests of runtime faults: a stop signal in the middle of writing batches, an output
disk that fills up, an output folder that turns read-only while a run writes into it, and input
files that vanish or change while a run reads them.

  fault_test.py --millrace BIN --example BIN --source DIR [unittest arguments]

The full and read-only disks are real: a small tmpfs and a read-only bind mount, each made inside a
private mount namespace (`unshare`) that ends with the command, so that nothing is mounted on the
machine when a test ends, however it ends. Root makes them directly; another user gets them in a
user namespace of its own (unshare --map-root-user). Permission bits would not do: root, whom CI
runs as, writes through them.

What an npy folder must look like whatever stopped the run: no .npy file partly written, every
line of batches.jsonl whole and naming files that load with NumPy in the shape it gives, and no
batch file that the index does not name.
"""

import sys

sys.dont_write_bytecode = True  # imports must not leave __pycache__ folders in the source tree

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import unittest

import numpy as np

import e2e_support as e2e
from e2e_support import Env, sets

# Well past the time any of these runs needs to reach the point the test waits for.
WAIT_S = 60


def load_json(path):
    with open(path) as f:
        return json.load(f)


def private_mounts_prefix():
    """The command prefix that runs a command in a private mount namespace where it may mount."""
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def run_in_private_mounts(testcase, command):
    """Runs `command` (a list) in a private mount namespace; a machine that allows none fails
    the test saying so, rather than with the run's missing output."""
    result = e2e.run(private_mounts_prefix() + command)
    if result.returncode != 0 and "unshare" in result.stderr and not result.stdout:
        testcase.fail("this test needs a private mount namespace (root, or unprivileged user "
                      "namespaces): " + e2e.describe(result))
    return result


def line_count(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(proc, path, count):
    """Waits until `path` holds `count` lines; fails if the process ends first."""
    deadline = time.monotonic() + WAIT_S
    while line_count(path) < count:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {path} had "
                                 f"{count} line(s)")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} had no {count} line(s) after {WAIT_S} s")
        time.sleep(0.02)


class FaultCase(unittest.TestCase):
    """Runs of configs/default.yaml on the small dataset, and the check of an npy folder."""

    def run_args(self, npy_dir, json_path, *overrides, root=None):
        return [Env.millrace, "run", e2e.source_path("configs", "default.yaml"), "--quiet",
                "--json", json_path,
                *sets(f"files.root={root or e2e.dataset()}", f"npy.dir={npy_dir}", *overrides)]

    def check_npy_folder(self, folder, allow_temporary=False):
        """The folder's promise (see the module's docstring); returns the index's records."""
        names = sorted(os.listdir(folder))
        hidden = [n for n in names if n.startswith(".")]
        if allow_temporary:
            for name in hidden:
                self.assertRegex(name, r"^\.batch_\d{6}_(data|label)\.npy\.tmp$")
        else:
            self.assertEqual(hidden, [], "temporary files left behind")
        self.assertIn("batches.jsonl", names)
        with open(os.path.join(folder, "batches.jsonl"), "rb") as f:
            text = f.read().decode("utf-8")
        self.assertTrue(text == "" or text.endswith("\n"), f"a partial last line: {text[-200:]!r}")
        records = [json.loads(line) for line in text.splitlines()]
        named = set()
        for record in records:
            stem = os.path.join(folder, f"batch_{record['index']:06d}")
            data = np.load(stem + "_data.npy")
            self.assertEqual(list(data.shape), record["shape"], stem)
            self.assertEqual(str(data.dtype), record["dtype"], stem)
            labels = np.load(stem + "_label.npy")
            self.assertEqual(labels.shape[0], len(record["ids"]), stem)
            named.update({os.path.basename(stem) + "_data.npy",
                          os.path.basename(stem) + "_label.npy"})
        on_disk = {n for n in names if n.endswith(".npy") and not n.startswith(".")}
        if allow_temporary:
            # Killed outright, the sink may have renamed the next batch's files into place and not
            # yet written the line that names them: those two files alone may stand unnamed (the
            # next run into the folder removes them); no line ever names a missing file.
            following = f"batch_{len(records):06d}"
            on_disk -= {following + "_data.npy", following + "_label.npy"}
        self.assertEqual(on_disk, named, "batch files that the index does not name, or the reverse")
        return records


class StopSignalTest(FaultCase):
    """SIGINT and SIGTERM in the middle of writing batches: a clean stop with the summary."""

    @contextlib.contextmanager
    def long_run(self, npy_dir, json_path):
        """A run of endless epochs in batches of 32 images (4.8 MB of int8 each, so that a good
        share of it is spent writing), yielded once three batches are written; never left running
        whatever the test does with it."""
        proc = subprocess.Popen(self.run_args(npy_dir, json_path, "files.epochs=10000",
                                              "batch.size=32"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=e2e.scratch_dir())
        try:
            wait_for_lines(proc, os.path.join(npy_dir, "batches.jsonl"), 3)
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    def stop_with(self, signum):
        work = e2e.new_dir("signal")
        npy_dir = os.path.join(work, "npy")
        json_path = os.path.join(work, "summary.json")
        with self.long_run(npy_dir, json_path) as proc:
            proc.send_signal(signum)
            sent = time.monotonic()
            stdout, stderr = proc.communicate(timeout=30)
            took = time.monotonic() - sent
        self.assertEqual(proc.returncode, 128 + signum, stderr)
        self.assertLess(took, 5, "the stop took too long")
        self.assertIn("images in", stdout)
        summary = load_json(json_path)
        self.assertTrue(summary["cancelled"])
        self.assertEqual(summary["error"], "")
        records = self.check_npy_folder(npy_dir)
        self.assertGreaterEqual(len(records), 3)
        # Every batch the sink took is in the folder: the one being written when the signal came
        # was finished, not dropped. (The summary's `batches` counts those that reached the
        # caller after the sink, which the stop may cut short of these.)
        sink = [s for s in summary["stages"] if s["type"] == "npy"][0]
        self.assertEqual(len(records), sink["items"])
        self.assertLessEqual(summary["batches"], len(records))
        self.assertEqual([r["index"] for r in records], list(range(len(records))))

    def test_a_killed_run_leaves_only_whole_files(self):
        # SIGKILL cannot be handled: what the folder holds then is the write protocol's doing.
        work = e2e.new_dir("killed")
        npy_dir = os.path.join(work, "npy")
        with self.long_run(npy_dir, os.path.join(work, "summary.json")) as proc:
            time.sleep(0.05)
            proc.kill()
            proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertGreaterEqual(len(self.check_npy_folder(npy_dir, allow_temporary=True)), 3)

    def test_a_second_signal_ends_the_process_at_once(self):
        work = e2e.new_dir("signal-twice")
        npy_dir = os.path.join(work, "npy")
        with self.long_run(npy_dir, os.path.join(work, "summary.json")) as proc:
            proc.send_signal(signal.SIGINT)
            # The clean stop takes at least the progress thread's next wake-up (up to 100 ms).
            time.sleep(0.02)
            self.assertIsNone(proc.poll(), "the clean stop was over before the second signal")
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, -signal.SIGINT, stderr)
        # Killed in the middle of the sink's work, the folder still keeps its promise; only a
        # hidden temporary file may be left, for the next run to remove.
        self.check_npy_folder(npy_dir, allow_temporary=True)

    def test_sigint_stops_cleanly_with_130(self):
        self.stop_with(signal.SIGINT)

    def test_sigterm_stops_cleanly_with_143(self):
        self.stop_with(signal.SIGTERM)


class OutputDiskTest(FaultCase):
    """A full disk and a folder that turns read-only: the run fails naming the file and the
    system's reason, prints its summary, and leaves a folder that keeps its promise."""

    def check_failed_run(self, result, summary, reason, npy_dir):
        self.assertEqual(result.returncode, 1, e2e.describe(result))
        self.assertIn("millrace: run failed", result.stderr)
        self.assertIn(reason, result.stderr)
        self.assertRegex(result.stderr, npy_dir + r"/batch_\d{6}_(data|label)\.npy: cannot ",
                         e2e.describe(result))
        self.assertIn("images in", result.stdout)
        self.assertIn(reason, summary["error"])

    def test_a_full_disk_fails_the_run_naming_the_file(self):
        work = e2e.new_dir("full")
        mount_point = os.path.join(work, "disk")
        kept = os.path.join(work, "kept")
        os.makedirs(mount_point)
        os.makedirs(kept)
        json_path = os.path.join(work, "summary.json")
        npy_dir = os.path.join(mount_point, "npy")
        # 6 MB holds four batches of 8 (1.2 MB of int8 each) and part of the fifth. The tmpfs goes
        # with the namespace, so the script copies what the run left on it out first.
        script = ('mount -t tmpfs -o size=6m millrace-test "$0" || exit 97\n'
                  'kept=$1; shift\n'
                  '"$@"; code=$?\n'
                  'cp -a "$0/." "$kept/"; exit $code\n')
        result = run_in_private_mounts(self, [
            "sh", "-c", script, mount_point, kept,
            *self.run_args(npy_dir, json_path, "files.epochs=10", "batch.size=8")])
        self.assertNotEqual(result.returncode, 97, "cannot mount a tmpfs: " + e2e.describe(result))
        summary = load_json(json_path)
        self.check_failed_run(result, summary, os.strerror(28), npy_dir)  # ENOSPC
        records = self.check_npy_folder(os.path.join(kept, "npy"))
        self.assertGreaterEqual(len(records), 3, "the disk filled before the third batch")

    def test_a_folder_turned_read_only_mid_run_fails_the_run_naming_the_file(self):
        work = e2e.new_dir("read-only")
        npy_dir = os.path.join(work, "npy")
        view = os.path.join(work, "view")
        os.makedirs(npy_dir)
        os.makedirs(view)
        json_path = os.path.join(work, "summary.json")
        # After the second line, a read-only view of the folder is moved over it in one step (made
        # read-only apart first: remounting a mount that the run writes through is refused), so
        # that later creates and renames fail with EROFS while the run holds the index open on
        # the writable mount underneath.
        script = ('out=$0; view=$1; shift; "$@" & pid=$!\n'
                  'i=0; while [ "$(cat "$out/batches.jsonl" 2>/dev/null | wc -l)" -lt 2 ]; do\n'
                  '  kill -0 $pid 2>/dev/null || { wait $pid; exit 98; }\n'
                  f'  i=$((i+1)); [ $i -lt {WAIT_S * 50} ] || {{ kill $pid; exit 98; }}\n'
                  '  sleep 0.02\n'
                  'done\n'
                  'mount --bind "$out" "$view" && mount -o remount,bind,ro "$view" && '
                  'mount --move "$view" "$out" || { kill $pid; wait $pid; exit 97; }\n'
                  'wait $pid\n')
        result = run_in_private_mounts(self, [
            "sh", "-c", script, npy_dir, view,
            *self.run_args(npy_dir, json_path, "files.epochs=10000", "batch.size=8")])
        self.assertNotIn(result.returncode, (97, 98), e2e.describe(result))
        summary = load_json(json_path)
        self.check_failed_run(result, summary, os.strerror(30), npy_dir)  # EROFS
        # A temporary file whose rename the read-only folder refused cannot be removed from it
        # either; it stays hidden, and the next run into the folder removes it.
        records = self.check_npy_folder(npy_dir, allow_temporary=True)
        self.assertGreaterEqual(len(records), 2)


class InputChangesTest(FaultCase):
    """Input files that vanish or are replaced while a run reads them: each is a skipped sample
    with its reason (or fails the run under on_error: fail); the run never hangs or crashes."""

    EPOCHS = 6
    REASONS = {
        "gone": "No such file or directory",
        "folder": "not a regular file: a folder",
        "fifo": "not a regular file: a FIFO",
        "emptied": "empty",
    }

    def changed_run(self, *overrides):
        work = e2e.new_dir("changes")
        root = os.path.join(work, "root")
        shutil.copytree(e2e.dataset(), root)
        npy_dir = os.path.join(work, "npy")
        json_path = os.path.join(work, "summary.json")
        images = sorted(os.path.join(d, f) for d, _, files in os.walk(root)
                        for f in files if f.endswith(".jpg"))
        victims = dict(zip(("gone", "folder", "fifo", "emptied"), images[-7::2]))
        proc = subprocess.Popen(
            self.run_args(npy_dir, json_path, f"files.epochs={self.EPOCHS}", "batch.size=8",
                          *overrides, root=root),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=e2e.scratch_dir())
        try:
            wait_for_lines(proc, os.path.join(npy_dir, "batches.jsonl"), 1)
            for kind, path in victims.items():
                os.remove(path)
                if kind == "folder":
                    os.mkdir(path)
                elif kind == "fifo":
                    os.mkfifo(path)
                elif kind == "emptied":
                    open(path, "wb").close()
            stdout, stderr = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        summary = load_json(json_path) if os.path.exists(json_path) else None
        return result, summary, victims, npy_dir

    def test_changed_files_are_skipped_with_their_reasons(self):
        result, summary, victims, npy_dir = self.changed_run()
        self.assertEqual(result.returncode, 0, e2e.describe(result))
        total = self.EPOCHS * e2e.DATASET_COUNT
        self.assertEqual(summary["samples_read"], total)
        skipped = summary["skipped"]
        self.assertEqual(summary["images"] + len(skipped), total)
        by_path = {}
        for entry in skipped:
            by_path.setdefault(entry["path"], set()).add(entry["error"])
        self.assertEqual(set(by_path), set(victims.values()), skipped)
        for kind, path in victims.items():
            with self.subTest(kind=kind):
                # Changed during the first epoch; the epochs whose loads began after that (all but
                # the few the bounded queues had read ahead) read it changed.
                count = sum(1 for e in skipped if e["path"] == path)
                self.assertGreaterEqual(count, 1)
                self.assertLessEqual(count, self.EPOCHS)
                for error in by_path[path]:
                    self.assertIn(self.REASONS[kind], error)
                self.assertIn(os.path.basename(path), result.stdout)
        self.check_npy_folder(npy_dir)

    def test_under_on_error_fail_a_changed_file_fails_the_run_naming_it(self):
        result, summary, victims, npy_dir = self.changed_run("files.on_error=fail",
                                                             "decode.on_error=fail")
        self.assertEqual(result.returncode, 1, e2e.describe(result))
        self.assertTrue(any(path in result.stderr for path in victims.values()),
                        e2e.describe(result))
        self.assertNotEqual(summary["error"], "")
        self.assertIn("images in", result.stdout)
        self.check_npy_folder(npy_dir)


if __name__ == "__main__":
    e2e.main()
