"""millrace.torch.Loader against its contract: torch tensors of the right types without a copy,
len and set_epoch, state_dict / load_state_dict with a fingerprint, torch's DataLoader refused
with a clear error, fork and pickling; and the package-level fixes that a PyTorch user meets
first (version, dict configs, ids as int64, skipped samples listed once)."""

import multiprocessing
import os
import pickle
import signal

import numpy as np
import pytest
import torch

import millrace
import millrace.torch
from conftest import DATASET_COUNT


def config(dataset, **stage_extra):
    """A small shuffled recipe on the test data set: 40 samples, batches of 6 (the last one short,
    partial), float32 NCHW."""
    files = {"type": "files", "root": dataset, "list": "labels.lst", "shuffle": True}
    files.update(stage_extra)
    return {
        "pipeline": {"threads": 2, "seed": 7},
        "stages": [
            files,
            {"type": "decode"},
            {"type": "augment", "resize": 40, "crop": "random", "size": [32, 32], "mirror": 0.5},
            {"type": "normalize", "dtype": "float32", "mean": [124, 117, 104],
             "std": [58, 57, 57]},
            {"type": "batch", "size": 6, "last": "partial"},
        ],
    }


def take(batch):
    """What a test keeps of a batch: copies, and the rows that are not padding."""
    real = len(batch.ids) - batch.pad
    return {"images": batch.images.clone(), "labels": batch.labels.clone(),
            "ids": batch.ids[:real].tolist(), "pad": batch.pad, "epoch": batch.epoch}


def epoch_of(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [take(b) for b in loader]


def ids_of(batches):
    return [i for b in batches for i in b["ids"]]


# ---- the package ----------------------------------------------------------------------------------


def test_version_and_type_information_are_installed(source):
    text = open(os.path.join(source, "CMakeLists.txt")).read()
    assert f"project(millrace VERSION {millrace.__version__}" in text
    here = os.path.dirname(millrace.__file__)
    for name in ("py.typed", "__init__.pyi", "_millrace.pyi", "torch.pyi"):
        assert os.path.isfile(os.path.join(here, name)), name
    # The stubs name every public class and property of the extension module.
    stub = open(os.path.join(here, "_millrace.pyi")).read()
    for cls in (millrace.Batch, millrace.Diagnostic):
        for name, member in vars(cls).items():
            if isinstance(member, property) and not name.startswith("_"):
                assert f"def {name}(self)" in stub, f"{cls.__name__}.{name} has no stub"


# ---- tensors --------------------------------------------------------------------------------------


def test_batches_are_torch_tensors_of_the_configured_kind_without_a_copy(dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        assert len(loader) == 7 and loader.rank == 0 and loader.world_size == 1
        batch = next(iter(loader))
        images, labels = batch  # unpacks as a (images, labels) pair
        assert images.dtype == torch.float32 and tuple(images.shape) == (6, 3, 32, 32)
        assert labels.dtype == torch.int64 and tuple(labels.shape) == (6,)
        assert batch.ids.dtype == torch.int64
        # cross_entropy takes the labels as they come.
        torch.nn.functional.cross_entropy(torch.zeros(6, 4), labels)
        assert images.is_contiguous()
    nhwc = config(dataset)
    nhwc["stages"][3].update({"dtype": "int8", "layout": "NHWC"})
    nhwc["stages"][3].pop("std")
    with millrace.torch.Loader(nhwc) as loader:
        images, _ = next(iter(loader))
        assert images.dtype == torch.int8 and tuple(images.shape) == (6, 32, 32, 3)


def test_the_loader_hands_out_a_view_of_the_batch_buffer(dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        it = iter(loader)
        first = next(it)
        # The tensors are the engine's batch buffer itself, as the Batch's own arrays see it.
        assert isinstance(first.batch, millrace.Batch)
        assert first.batch.data.__array_interface__["data"][0] == first.images.data_ptr()
        assert first.batch.ids.__array_interface__["data"][0] == first.ids.data_ptr()


def test_labels_as_configured_and_multi_label_as_float(dataset, tmp_path):
    lines = open(os.path.join(dataset, "labels.lst")).read().splitlines()
    multi = tmp_path / "multi.lst"
    with open(multi, "w") as f:
        for line in lines:
            index, label, path = line.split("\t")
            f.write(f"{index}\t{label}\t{float(label) / 2}\t{os.path.join(dataset, path)}\n")
    cfg = config(dataset, list=str(multi), label_width=2)
    with millrace.torch.Loader(cfg) as loader:
        _, labels = next(iter(loader))
        assert labels.dtype == torch.float32 and tuple(labels.shape) == (6, 2)
    with millrace.torch.Loader(config(dataset), labels="float32") as loader:
        assert next(iter(loader)).labels.dtype == torch.float32
    with millrace.torch.Loader(cfg, labels="int64") as loader:
        with pytest.raises(ValueError, match="not whole numbers"):
            next(iter(loader))
    with pytest.raises(ValueError, match="labels"):
        millrace.torch.Loader(config(dataset), labels="int32")


def test_pinned_memory_needs_cuda(dataset):
    if torch.cuda.is_available():
        with millrace.torch.Loader(config(dataset), pin_memory=True) as loader:
            batch = next(iter(loader))
            assert batch.images.is_pinned() and batch.labels.is_pinned()
    else:
        with pytest.raises(ValueError, match="CUDA"):
            millrace.torch.Loader(config(dataset), pin_memory=True)


# ---- epochs -----------------------------------------------------------------------------------------


def test_set_epoch_chooses_the_epoch_and_every_epoch_covers_the_data_set(dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        e0 = epoch_of(loader)
        e1 = epoch_of(loader)
        e1_again = epoch_of(loader, 1)
        e0_again = epoch_of(loader, 0)
    for e in (e0, e1):
        assert sorted(ids_of(e)) == list(range(DATASET_COUNT)) and len(e) == 7
    assert ids_of(e0) != ids_of(e1)  # a new shuffle each epoch
    assert ids_of(e1_again) == ids_of(e1) and ids_of(e0_again) == ids_of(e0)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(e1, e1_again))
    assert {b["epoch"] for b in e1} == {1}


# ---- state ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 6])
def test_state_dict_resumes_exactly_after_the_batch_it_was_taken_at(dataset, k):
    with millrace.torch.Loader(config(dataset)) as loader:
        loader.set_epoch(2)
        it = iter(loader)
        head = [take(next(it)) for _ in range(k)]
        state = loader.state_dict()
        tail = [take(b) for b in it]
    # Plain values only: it survives torch.save and JSON.
    path = os.path.join(os.path.dirname(dataset), f"state-{k}.pt")
    torch.save(state, path)
    state = torch.load(path)
    with millrace.torch.Loader(config(dataset), {"pipeline.threads": 1}, state=state) as resumed:
        rest = [take(b) for b in resumed]
        after = epoch_of(resumed)
    assert ids_of(rest) == ids_of(tail)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(rest, tail))
    assert len(head) + len(rest) == 7
    assert {b["epoch"] for b in after} == {3}


def test_a_state_from_another_stream_is_refused_naming_what_differs(dataset, tmp_path):
    with millrace.torch.Loader(config(dataset)) as loader:
        next(iter(loader))
        state = loader.state_dict()
    other_seed = config(dataset)
    other_seed["pipeline"]["seed"] = 8
    other_recipe = config(dataset)
    other_recipe["stages"][2]["size"] = [24, 24]
    smaller = tmp_path / "smaller.lst"
    smaller.write_text("".join(open(os.path.join(dataset, "labels.lst")).readlines()[:30]))
    cases = [
        (other_seed, {}, "seed"),
        (config(dataset), {"batch.size": 5}, "batch size"),
        (other_recipe, {}, "configuration"),
        (config(dataset, list=str(smaller)), {}, "data set"),
    ]
    for cfg, overrides, what in cases:
        with pytest.raises(ValueError, match=what):
            millrace.torch.Loader(cfg, overrides, state=state)
    # What does not change the batches may differ: threads, queues, prefetch.
    millrace.torch.Loader(config(dataset), {"pipeline.threads": 1, "pipeline.prefetch": 3},
                          state=state).close()


def test_a_malformed_state_is_refused(dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        next(iter(loader))
        good = loader.state_dict()

    def changed(**edits):
        bad = {**good, "position": dict(good["position"]),
               "fingerprint": dict(good["fingerprint"])}
        for key, value in edits.items():
            if "." in key:
                outer, inner = key.split(".")
                bad[outer][inner] = value
            elif value is None:
                del bad[key]
            else:
                bad[key] = value
        return bad

    for bad, match in [
        ([1, 2], "dict"),
        (changed(format="other"), "format"),
        (changed(version=99), "version"),
        (changed(epoch=None), "epoch"),
        (changed(epoch=-1), "epoch"),
        (changed(**{"position.samples": "6"}), "position.samples"),
        (changed(**{"position.samples": 7}), "global_samples"),
        (changed(global_samples=10 ** 9), "global_samples"),
        (changed(rank=3), "rank"),
        (changed(split="diagonal"), "split"),
        (changed(fingerprint=None), "fingerprint"),
        (changed(**{"position.first_batch_samples": 99}), "past"),
    ]:
        with pytest.raises(ValueError, match=match):
            millrace.torch.Loader(config(dataset), state=bad)


# ---- DataLoader, fork, pickle ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataloader_is_refused_with_a_pointer_to_the_loader(dataset, workers):
    from torch.utils.data import DataLoader, IterableDataset

    for thing in (millrace.Pipeline(config(dataset)), millrace.torch.Loader(config(dataset))):
        with pytest.raises(Exception, match="millrace.torch.Loader"):
            for _ in DataLoader(thing, batch_size=None, num_workers=workers):
                pass

    class Wrapped(IterableDataset):  # the wrapping that read everything once per worker
        def __init__(self):
            self.pipe = millrace.Pipeline(config(dataset))

        def __iter__(self):
            for b in self.pipe:
                yield torch.from_numpy(np.array(b.ids))

    if workers:
        with pytest.raises(Exception, match="millrace.torch.Loader"):
            for _ in DataLoader(Wrapped(), batch_size=None, num_workers=workers):
                pass
    else:  # in the main process it is simply the pipeline, read once
        got = [i for t in DataLoader(Wrapped(), batch_size=None) for i in t.tolist()]
        assert sorted(got) == list(range(DATASET_COUNT))


def _use_in_child(loader, queue):
    try:
        next(iter(loader))
        queue.put("no error")
    except RuntimeError as e:
        queue.put(str(e))


def test_a_fork_after_iteration_started_raises_in_the_child_and_never_hangs(dataset):
    ctx = multiprocessing.get_context("fork")
    # An earlier multi-worker DataLoader in this process leaves torch's SIGCHLD handler installed,
    # and with it the pids of workers that test's refusal ended: this child's exit would make that
    # handler raise about them here. The default action keeps the test about millrace's fork.
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        _fork_after_iteration_started(ctx, dataset)
    finally:
        signal.signal(signal.SIGCHLD, previous)


def _fork_after_iteration_started(ctx, dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        it = iter(loader)
        next(it)  # the engine's threads run
        queue = ctx.Queue()
        child = ctx.Process(target=_use_in_child, args=(loader, queue))
        child.start()
        child.join(60)
        assert child.exitcode == 0, "the child hung or crashed"
        assert "forked" in queue.get(timeout=5)
        # The parent's loader goes on.
        assert sum(1 for _ in it) == 6


def test_pickling_gives_a_loader_that_continues_from_where_it_stood(dataset):
    with millrace.torch.Loader(config(dataset)) as loader:
        it = iter(loader)
        next(it)
        next(it)
        clone = pickle.loads(pickle.dumps(loader))
        rest = [take(b) for b in it]
    with clone:
        assert ids_of([take(b) for b in clone]) == ids_of(rest)
    pipe = millrace.Pipeline(config(dataset))
    copy = pickle.loads(pickle.dumps(pipe))
    assert copy.state() == pipe.state() and len(copy) == len(pipe)


# ---- dict configs, validate, ids, skipped ---------------------------------------------------------


def test_dict_configs_take_numpy_values_and_errors_cite_the_key_path(dataset):
    cfg = config(dataset)
    cfg["pipeline"]["threads"] = np.int64(2)
    cfg["stages"][2]["size"] = np.array([32, 32])
    cfg["stages"][3]["mean"] = [np.float32(124), np.float64(117), 104]
    with millrace.Pipeline(cfg, {"batch.size": np.int32(6)}) as pipe:
        assert next(iter(pipe)).data.shape == (6, 3, 32, 32)
    bad = config(dataset)
    bad["stages"][4]["sizee"] = 3
    bad["stages"][0]["root"] = "/no/such/folder"
    with pytest.raises(millrace.ConfigError) as raised:
        millrace.Pipeline(bad)
    text = str(raised.value)
    assert 'config["stages"][4]["sizee"]: error:' in text
    assert 'config["stages"][0]["root"]: error:' in text
    assert "<dict>" not in text
    assert {d.file for d in raised.value.diagnostics} == {'config["stages"][4]["sizee"]',
                                                          'config["stages"][0]["root"]'}
    with pytest.raises(TypeError, match=r'config\["stages"\]\[1\]\["x"\]'):
        millrace.Pipeline({"stages": [{"type": "files"}, {"type": "decode", "x": object()}]})


def test_validate_takes_a_dict(dataset):
    assert millrace.validate(config(dataset)) == []
    bad = config(dataset)
    bad["pipeline"]["threads"] = 0
    problems = millrace.validate(bad)
    assert [d.file for d in problems] == ['config["pipeline"]["threads"]']
    assert "threads" in problems[0].message


def test_ids_are_int64_for_numpy_and_torch(dataset):
    with millrace.Pipeline(config(dataset)) as pipe:
        batch = next(iter(pipe))
        assert batch.ids.dtype == np.int64
        assert torch.from_numpy(batch.ids).dtype == torch.int64


def test_a_skipped_file_is_listed_once_however_many_epochs_are_read_ahead(bad_dataset):
    cfg = config(bad_dataset)
    cfg["stages"][0].pop("list")
    with millrace.Pipeline(cfg, {"pipeline.prefetch": 8}) as pipe:
        for _ in range(3):
            for _ in pipe:
                pass
        skipped = pipe.stats()["skipped"]
    names = sorted(os.path.basename(s["path"]) for s in skipped)
    assert names == ["zz_empty.jpg", "zz_random.jpg"]
