"""The millrace Python package against its contract: the same bytes as the CLI, zero-copy batches
that live as long as Python holds them, deterministic epochs, resuming without replaying,
Ctrl-C, bad configs and bad files, and no thread or memory left behind."""

import glob
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch

import millrace

from conftest import DATASET_COUNT, run_cli


def train_overrides(dataset, **extra):
    """configs/train.yaml on the small dataset: shuffled, random-resized crops, mirrored; batches
    of 6 so that an epoch of 40 ends with a short batch, padded from the epoch's first samples."""
    o = {"files.root": dataset, "batch.size": 6, "batch.last": "pad",
         "augment.size": [64, 64], "pipeline.threads": 2}
    o.update(extra)
    return o


def train(source, dataset, state=None, **extra):
    return millrace.Pipeline(os.path.join(source, "configs", "train.yaml"),
                             train_overrides(dataset, **extra), state=state)


def snapshot(batch):
    """A batch's content as copies, for comparing runs."""
    return (np.array(batch.data), np.array(batch.labels), np.array(batch.ids), batch.pad,
            batch.epoch)


def assert_same(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        for part, (a, b) in enumerate(zip(g, w)):
            assert np.array_equal(a, b), f"batch {i}, part {part} differs"


def epoch_snapshots(pipe):
    return [snapshot(b) for b in pipe]


# ---- the same bytes as the CLI --------------------------------------------------------------------


def test_batches_equal_the_cli_npy_output(cli, source, dataset, tmp_path):
    config = os.path.join(source, "configs", "default.yaml")
    out = tmp_path / "npy"
    sets = {"files.root": dataset, "batch.size": 16, "npy.dir": str(out)}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    result = run_cli(cli, "run", config, "--quiet", *args)
    assert result.returncode == 0, result.stderr
    with millrace.Pipeline(config, {**sets, "npy.dir": str(tmp_path / "py")}) as pipe:
        batches = [snapshot(b) for b in pipe]
    files = sorted(glob.glob(str(out / "batch_*_data.npy")))
    assert len(batches) == len(files) == 3  # 40 images in batches of 16, the last one padded
    for k, (data, labels, ids, pad, _) in enumerate(batches):
        assert data.dtype == np.int8 and data.shape == (16, 3, 224, 224)
        assert np.array_equal(data, np.load(out / f"batch_{k:06d}_data.npy"))
        assert np.array_equal(labels, np.load(out / f"batch_{k:06d}_label.npy"))
    lines = [json.loads(line) for line in open(out / "batches.jsonl")]
    assert [b[3] for b in batches] == [line["pad"] for line in lines]
    assert [b[2].tolist() for b in batches] == [line["ids"] for line in lines]


def test_a_dict_config_gives_what_its_yaml_file_gives(source, dataset, tmp_path):
    config = {
        "pipeline": {"name": "from-dict", "threads": 2, "seed": 3},
        "stages": [
            {"type": "files", "root": dataset, "list": "labels.lst", "shuffle": True},
            {"type": "decode"},
            {"type": "augment", "resize": 40, "crop": "random", "size": [32, 32], "mirror": 0.5},
            {"type": "normalize", "dtype": "int8", "mean": [123.68, 116.779, 103.939],
             "layout": "NHWC"},
            {"type": "batch", "size": 8},
        ],
    }
    yaml_path = tmp_path / "same.yaml"
    yaml_path.write_text(json.dumps(config, indent=2))
    with millrace.Pipeline(config) as a, millrace.Pipeline(str(yaml_path)) as b:
        got = epoch_snapshots(a)
        assert_same(got, epoch_snapshots(b))
    assert got[0][0].shape == (8, 32, 32, 3)  # NHWC as configured


def test_relative_paths_follow_the_config_file_or_the_current_directory(dataset, tmp_path,
                                                                         monkeypatch):
    """`root: data/x` in a file is the file's folder's data/x; in a dict or in overrides, the
    current directory's. The two data sets differ in size, so the count says which was read."""
    here = tmp_path / "data" / "x" / "c0"
    here.mkdir(parents=True)
    for photo in sorted(glob.glob(os.path.join(dataset, "*", "*.jpg")))[:5]:
        shutil.copy(photo, here)
    (tmp_path / "sub" / "data").mkdir(parents=True)
    os.symlink(dataset, tmp_path / "sub" / "data" / "x")
    config = {
        "pipeline": {"threads": 2},
        "stages": [
            {"type": "files", "root": "data/x"},
            {"type": "decode"},
            {"type": "augment", "size": [16, 16]},
            {"type": "normalize", "mean": [124, 117, 104]},
            {"type": "batch", "size": 4, "last": "partial"},
        ],
    }
    (tmp_path / "sub" / "config.yaml").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)

    def count(pipe):
        with pipe:
            return sum(len(b.ids) - b.pad for b in pipe)

    assert count(millrace.Pipeline("sub/config.yaml")) == DATASET_COUNT
    assert count(millrace.Pipeline(config)) == 5
    assert count(millrace.Pipeline("sub/config.yaml", {"files.root": "data/x"})) == 5
    assert count(millrace.Pipeline("sub/config.yaml", ["files.root=data/x"])) == 5
    # From a folder without data/x, the file still finds its own; the dict does not.
    monkeypatch.chdir(tmp_path / "sub" / "data")
    assert count(millrace.Pipeline(str(tmp_path / "sub" / "config.yaml"))) == DATASET_COUNT
    assert millrace.validate(str(tmp_path / "sub" / "config.yaml")) == []
    assert any("data/x" in d.message for d in millrace.validate(config))


# ---- zero copy and lifetime -----------------------------------------------------------------------


def test_arrays_view_the_batch_buffer_and_torch_shares_it(source, dataset):
    with train(source, dataset) as pipe:
        batch = next(iter(pipe))
        data = batch.data
        assert data.dtype == np.int8 and data.flags["C_CONTIGUOUS"]
        assert data.base is not None  # a view, not a copy
        again = batch.data
        assert again.__array_interface__["data"][0] == data.__array_interface__["data"][0]
        tensor = torch.from_numpy(data)
        assert tensor.data_ptr() == data.__array_interface__["data"][0]
        assert tensor.dtype == torch.int8 and tuple(tensor.shape) == data.shape
        assert tuple(batch.data.shape) == (6, 3, 64, 64)
        assert batch.labels.dtype == np.float32 and batch.labels.shape == (6,)
        assert batch.ids.dtype == np.int64 and batch.ids.shape == (6,)
        q = batch.quantization
        assert q["unit"] == [1.0, 1.0, 1.0] and q["zero_point"] == 0 and q["mxnet_compatible"]


def test_a_batch_kept_alive_keeps_its_bytes_while_iteration_goes_on(source, dataset):
    # The engine recycles buffers: were the first batch's buffer handed back while Python still
    # held it, a later batch would be written over it.
    with train(source, dataset, **{"pipeline.prefetch": 3, "pipeline.queue": 2}) as pipe:
        it = iter(pipe)
        kept = next(it)
        view = torch.from_numpy(kept.data)  # the tensor alone keeps the buffer too
        copy = view.clone()
        del kept
        later = [snapshot(b) for b in it]
    assert len(later) == 6
    assert torch.equal(view, copy)
    assert not any(np.array_equal(copy.numpy(), b[0]) for b in later)


def test_holding_every_buffer_is_an_error_not_a_hang(source, dataset):
    with train(source, dataset, **{"pipeline.prefetch": 2}) as pipe:
        it = iter(pipe)
        held = [next(it), next(it)]
        with pytest.raises(RuntimeError, match="pipeline.prefetch"):
            next(it)
        assert len(held) == 2


def test_close_drop_and_context_leak_no_thread_and_no_memory(source, dataset):
    def threads():
        return len(os.listdir("/proc/self/task"))

    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def cycle(k):
        pipe = train(source, dataset)
        it = iter(pipe)
        held = next(it)
        if k % 3 == 0:
            pipe.close()
        elif k % 3 == 1:
            with pipe:
                next(it)
        del pipe, it  # the last form: dropped mid-epoch
        assert held.data.shape[0] == 6  # still readable after its pipeline is gone
        del held

    for k in range(3):
        cycle(k)  # the thread pools start once per process
    base_threads, base_rss = threads(), rss_kib()
    for k in range(30):
        cycle(k)
    assert threads() <= base_threads
    assert rss_kib() - base_rss < 20 * 1024


# ---- epochs and resuming --------------------------------------------------------------------------


def test_each_loop_is_the_next_epoch_and_epochs_are_reproducible(source, dataset):
    with train(source, dataset) as pipe:
        assert len(pipe) == 7
        first = epoch_snapshots(pipe)
        second = epoch_snapshots(pipe)
        assert pipe.state() == {"epoch": 2, "samples": 0, "batches": 0, "first_batch_samples": 0}
    assert len(first) == len(second) == 7
    assert {b[4] for b in first} == {0} and {b[4] for b in second} == {1}
    assert first[-1][3] == 2  # 40 = 6 * 6 + 4: two pad rows
    # A new shuffle and new augmentation each epoch.
    assert not np.array_equal(np.concatenate([b[2] for b in first]),
                              np.concatenate([b[2] for b in second]))
    with train(source, dataset, **{"pipeline.threads": 1, "pipeline.queue": 1}) as other:
        assert_same(epoch_snapshots(other.epoch(1)), second)
        assert_same(epoch_snapshots(other.epoch(0)), first)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_resume_gives_the_rest_of_the_epoch_byte_for_byte(source, dataset, k):
    with train(source, dataset) as pipe:
        epoch_snapshots(pipe)  # resume inside epoch 1, whose order differs from epoch 0
        it = iter(pipe)
        head = [snapshot(next(it)) for _ in range(k)]
        state = pipe.state()
        tail = [snapshot(b) for b in it]
    assert state["epoch"] == 1 and state["batches"] == k and state["samples"] == 6 * k
    with train(source, dataset, state=state, **{"pipeline.threads": 1}) as resumed:
        rest = epoch_snapshots(resumed)
        # The run goes on into the next epoch as any other.
        assert_same(epoch_snapshots(resumed), epoch_snapshots(train(source, dataset).epoch(2)))
    assert_same(rest, tail)
    assert len(head) + len(rest) == 7


def test_resume_without_padding_reads_nothing_before_the_resume_point(source, dataset):
    extra = {"batch.last": "drop", "pipeline.prefetch": 2}
    with train(source, dataset, **extra) as pipe:
        it = iter(pipe)
        for _ in range(4):
            next(it)
        state = pipe.state()
        tail = [snapshot(b) for b in it]
    with train(source, dataset, state=state, **extra) as resumed:
        rest = []
        for b in resumed:
            rest.append(snapshot(b))
        read = resumed.stats()["samples_read"]
    assert_same(rest, tail)
    assert len(rest) == 2  # 40 // 6 = 6 batches, the last 4 samples dropped
    assert read <= DATASET_COUNT - 24 + 40  # the rest of epoch 0, and at most epoch 1 read ahead


@pytest.mark.parametrize("indexed", [True, False])
def test_resume_and_epochs_from_a_recordio_file(cli, dataset, tmp_path, indexed):
    rec = tmp_path / "train.rec"
    result = run_cli(cli, "pack", "--list", os.path.join(dataset, "labels.lst"), "--root", dataset,
                     "--resize", 48, rec)
    assert result.returncode == 0, result.stderr
    if not indexed:
        os.remove(tmp_path / "train.idx")
    config = {
        "pipeline": {"threads": 2, "seed": 5},
        "stages": [
            # Without an index the shuffle goes through a buffer of 16 records.
            {"type": "recordio", "path": str(rec), "shuffle": True, "shuffle_buffer": 16},
            {"type": "decode"},
            {"type": "augment", "crop": "random_resized", "size": [32, 32], "mirror": 0.5},
            {"type": "normalize", "dtype": "int8", "mean": [124, 117, 104]},
            {"type": "batch", "size": 6, "last": "pad"},
        ],
    }
    with millrace.Pipeline(config) as pipe:
        if indexed:
            assert len(pipe) == 7
        else:
            with pytest.raises(TypeError):
                len(pipe)
        first = epoch_snapshots(pipe)
        it = iter(pipe)
        head = [snapshot(next(it)) for _ in range(3)]
        state = pipe.state()
        tail = [snapshot(b) for b in it]
    assert len(first) == len(head) + len(tail) == 7
    with millrace.Pipeline(config, {"pipeline.threads": 1}, state=state) as resumed:
        assert_same(epoch_snapshots(resumed), tail)
    with millrace.Pipeline(config) as other:
        assert_same(epoch_snapshots(other.epoch(1)), head + tail)


def test_a_bad_state_is_refused(source, dataset):
    with pytest.raises(ValueError, match="samples"):
        train(source, dataset, state={"epoch": 0, "batches": 1, "first_batch_samples": 0})
    with pytest.raises(ValueError, match="past"):
        train(source, dataset,
              state={"epoch": 0, "samples": 6, "batches": 1, "first_batch_samples": 12})


# ---- interrupt ------------------------------------------------------------------------------------


def test_ctrl_c_stops_iteration_within_a_second_and_iteration_resumes_after(source, dataset):
    # One thread and full-size crops, epoch after epoch, so that iteration is waiting in the
    # engine when the signal comes.
    slow = {"pipeline.threads": 1, "augment.size": [224, 224], "batch.size": 8}
    with train(source, dataset, **slow) as pipe:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        sent = time.monotonic() + 0.3
        with pytest.raises(KeyboardInterrupt):
            for _ in range(1000):
                for _ in pipe:
                    pass
        assert time.monotonic() - sent < 1.0
        timer.join()
        assert pipe.stats()["cancelled"]
        # The stream stands after the last batch handed out; the next loop continues from there
        # with the rest of that epoch.
        after = pipe.state()
        rest = epoch_snapshots(pipe)
        assert after["batches"] + len(rest) == 5
        assert {b[4] for b in rest} <= {after["epoch"]}


def test_other_python_threads_run_while_iteration_waits(source, dataset, tmp_path):
    # Were the GIL held while waiting for a batch, a pure-Python thread would stall for as long
    # as the main thread waits, which is most of a slow epoch.
    def spin(stop, counts):
        while not stop.is_set():
            counts[0] += 1

    def count_for(seconds_or_epoch):
        stop, counts = threading.Event(), [0]
        worker = threading.Thread(target=spin, args=(stop, counts))
        start = time.monotonic()
        worker.start()
        if isinstance(seconds_or_epoch, float):
            time.sleep(seconds_or_epoch)
        else:
            for _ in seconds_or_epoch:
                pass
        stop.set()
        worker.join()
        return counts[0] / (time.monotonic() - start)

    # One thread making 1024x1024 crops of images enlarged to 1500 pixels: the main thread spends
    # nearly all of the epoch waiting.
    slow = {"files.root": dataset, "pipeline.threads": 1, "augment.resize": 1500,
            "augment.size": [1024, 1024], "batch.size": 4, "npy.dir": str(tmp_path)}
    config = os.path.join(source, "configs", "default.yaml")
    with millrace.Pipeline(config, slow) as pipe:
        alone = count_for(0.5)
        during = count_for(iter(pipe))
    # Measured on 2 cores: half the lone rate or more (the pipeline's thread takes a core), and
    # a sixteenth with the GIL held through the waits.
    assert during > alone / 4, (during, alone)


# ---- errors ---------------------------------------------------------------------------------------


def test_config_errors_carry_every_problem_with_its_place(cli, source):
    broken = os.path.join(source, "configs", "broken.yaml")
    with pytest.raises(millrace.ConfigError) as raised:
        millrace.Pipeline(broken)
    expected = run_cli(cli, "validate", broken)
    assert expected.returncode == 2
    cli_errors = [line for line in expected.stderr.splitlines() + expected.stdout.splitlines()
                  if ": error: " in line]
    got = [str(d) for d in raised.value.diagnostics if not d.warning]
    assert len(got) >= 5 and sorted(got) == sorted(cli_errors)
    d = raised.value.diagnostics[0]
    assert d.file == broken and d.line > 0 and d.column > 0
    assert isinstance(raised.value, ValueError)


def test_validate_lists_problems_without_raising(source, dataset):
    assert millrace.validate(os.path.join(source, "configs", "train.yaml"),
                             {"files.root": dataset}) == []
    problems = millrace.validate(os.path.join(source, "configs", "broken.yaml"))
    assert len([d for d in problems if not d.warning]) >= 5
    assert "| `mirror` |" in millrace.stages(markdown=True)


def test_an_override_error_names_the_override(source, dataset):
    with pytest.raises(millrace.ConfigError, match=r"--set batch.sizee=3: error: .*'sizee'"):
        train(source, dataset, **{"batch.sizee": 3})
    with pytest.raises(TypeError):
        millrace.Pipeline(42)


def test_a_bad_file_is_skipped_and_listed(source, bad_dataset):
    config = os.path.join(source, "configs", "default.yaml")
    sets = {"files.root": bad_dataset, "files.list": "", "batch.size": 8, "batch.last": "partial",
            "augment.resize": 40, "augment.size": [32, 32]}
    with millrace.Pipeline(config, {**sets, "npy.dir": "/dev/null/never"}) as pipe:
        pass  # building must not touch the npy folder; only a run does
    sets["npy.dir"] = os.path.join(os.path.dirname(bad_dataset), "npy")
    with millrace.Pipeline(config, sets) as pipe:
        ids = np.concatenate([np.array(b.ids) for b in pipe])
        stats = pipe.stats()
    skipped = {os.path.basename(s["path"]): s for s in stats["skipped"]}
    assert set(skipped) == {"zz_empty.jpg", "zz_random.jpg"}
    assert all(s["stage"] == "decode" and s["error"] for s in skipped.values())
    assert len(ids) == DATASET_COUNT and len(set(ids.tolist())) == DATASET_COUNT
    assert stats["images"] == DATASET_COUNT


def test_a_failing_run_raises_run_error(source, bad_dataset):
    config = os.path.join(source, "configs", "default.yaml")
    sets = {"files.root": bad_dataset, "files.list": "", "decode.on_error": "fail",
            "augment.resize": 40, "augment.size": [32, 32], "batch.size": 4,
            "npy.dir": os.path.join(os.path.dirname(bad_dataset), "npy-fail")}
    with millrace.Pipeline(config, sets) as pipe:
        with pytest.raises(millrace.RunError, match="zz_empty.jpg|zz_random.jpg"):
            for _ in pipe:
                pass


# ---- inference outputs and statistics ------------------------------------------------------------


def test_inference_outputs_travel_with_the_batch(cli, source, dataset, tmp_path):
    config = os.path.join(source, "configs", "resnet18_int8.yaml")
    tiny = os.path.join(source, "tests", "data", "models", "tiny.onnx")
    sets = {"files.root": dataset, "augment.resize": 36, "augment.size": [32, 32],
            "infer.model": tiny, "batch.size": 8,
            "infer.calibration": f"{{batches: 2, table: {tmp_path / 'calib.json'}}}",
            "predictions.path": str(tmp_path / "predictions.jsonl")}
    overrides = [f"{k}={v}" for k, v in sets.items()]  # the CLI's strings, as they are
    with millrace.Pipeline(config, overrides) as pipe:
        outputs = [(np.array(b.ids), np.array(b.outputs)) for b in pipe]
        stats = pipe.stats()
    assert len(outputs) == 5
    assert all(o.shape[0] == 8 and o.shape[1] > 1 and np.isfinite(o).all() for _, o in outputs)
    predictions = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    by_id = {p["id"]: p["top_k"][0][0] for p in predictions}
    for ids, logits in outputs:
        for i, row in zip(ids.tolist()[:3], logits[:3]):
            assert by_id[i] == int(np.argmax(row))
    assert any(name.startswith("infer.") for name in stats["metrics"])


def test_stats_say_where_each_stage_spends_its_time(source, dataset):
    with train(source, dataset) as pipe:
        epoch_snapshots(pipe)
        stats = pipe.stats()
    names = [s["name"] for s in stats["stages"]]
    assert names[:5] == ["files", "decode", "augment", "normalize", "batch"]
    decode = stats["stages"][1]
    for key in ("busy_seconds", "wait_input_seconds", "blocked_output_seconds"):
        assert decode[key] >= 0
    assert decode["busy_seconds"] > 0 and decode["items"] >= DATASET_COUNT
    assert stats["skipped"] == [] and stats["images"] >= DATASET_COUNT
