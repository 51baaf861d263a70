"""millrace for PyTorch training loops: a Loader that yields torch tensors, splits each epoch among
the ranks of a distributed run with one global shuffle, and saves and resumes its position on any
number of ranks.

    import millrace.torch, torch.distributed as dist

    loader = millrace.torch.Loader("configs/train.yaml", {"batch.size": 64})
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:             # torch tensors; images view the engine's buffer
            loss = loss_fn(model(images), labels)
            ...
        torch.save({"model": ..., "loader": loader.state_dict()}, "checkpoint.pt")

Ranks: the rank and world size are taken from torch.distributed when it is initialised, else from
the RANK / WORLD_SIZE variables of the environment (torchrun), else from MPI (mpirun), unless the
config's source sets `num_parts` / `part_index` or the Loader is given `rank` / `world_size`. The
`files` source and an indexed `recordio` source deal each epoch's order over the whole data set to
the ranks in turn (`split: global`, as DistributedSampler): every rank gets a mix of the whole
data set and the same number of batches; a rank short of one sample repeats one from the epoch's
start, counted in the batch's `pad` as padding. `split: contiguous` (and a `.rec` without index)
keeps MXNet's contiguous slices.

State: `state_dict()` after any batch is a small dict of plain values (safe for `torch.save`
and JSON); `load_state_dict()` (or `Loader(..., state=...)`) continues exactly after it. Taken on
any rank of a run in which every rank has delivered the same number of batches of the epoch (as
DDP's lockstep ensures), a state resumed with any number of ranks and threads delivers exactly
the samples of the epoch not yet delivered, each once across the ranks, with the same
augmentation (it is keyed on the sample id), without reading or decoding the ones before. A
state from another configuration, data set, seed or batch size is refused with an error that
names what differs; a malformed one is refused too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
# NumPy 2 imports numpy.random on first use, and a DataLoader worker's first act is to seed it: on
# CPython 3.11 that import in a freshly forked worker can die in importlib's module-lock table
# (a KeyError there), so the worker exits before it can even report millrace's
# refusal. Importing it here, in the parent, leaves the workers nothing to import.
import numpy.random  # noqa: F401  pylint: disable=unused-import
import torch

from . import Pipeline, _in_dataloader_worker

__all__ = ["Loader", "LoaderBatch"]

STATE_FORMAT = "millrace.torch.Loader"
STATE_VERSION = 1
# What a state's fingerprint holds, in the order a difference is reported.
_FINGERPRINT = ("dataset", "dataset_samples", "seed", "batch_size", "config")
_FINGERPRINT_WHAT = {
    "dataset": "data set (its files, ids or labels differ)",
    "dataset_samples": "data set size",
    "seed": "seed",
    "batch_size": "batch size",
    "config": "configuration (a stage or a parameter that changes the batches differs)",
}
_LABELS = ("auto", "int64", "float32")


class LoaderBatch:
    """One batch as torch tensors. Unpacks as `images, labels`; `ids` (int64) are the samples'
    data set ids; `pad` counts the batch's last rows that repeat samples delivered elsewhere
    (padding of the epoch's last batch, or the repeat that evens out the ranks' counts)."""

    __slots__ = ("images", "labels", "ids", "pad", "epoch", "index", "batch")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, pad: int,
                 epoch: int, index: int, batch: Any = None) -> None:
        self.batch = batch  # the millrace.Batch underneath (paths, position, quantization)
        self.images = images
        self.labels = labels
        self.ids = ids
        self.pad = pad
        self.epoch = epoch
        self.index = index

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.images
        yield self.labels

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.images, self.labels)[i]

    def __repr__(self) -> str:
        return (f"<millrace.torch.LoaderBatch epoch {self.epoch} #{self.index} "
                f"{tuple(self.images.shape)} {self.images.dtype}, pad {self.pad}>")


def _torch_group() -> Optional[tuple]:
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


class Loader:
    """A millrace pipeline as a PyTorch data loader.

    `config`, `overrides`, `state`: as millrace.Pipeline (the state is a `state_dict()`).
    `rank`, `world_size`: this process's place, when not torch.distributed's or the environment's.
    `pin_memory`: hand out copies in page-locked memory (CUDA needed), for `.to(device,
    non_blocking=True)`; otherwise the images are a view of the engine's buffer (no copy).
    `labels`: "auto" (int64 for one label per sample, float32 for several), "int64" or "float32".
    """

    def __init__(
        self,
        config: Union[str, os.PathLike, Mapping[str, Any]],
        overrides: Union[None, Mapping[str, Any], Sequence[str]] = None,
        *,
        state: Optional[Mapping[str, Any]] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        pin_memory: bool = False,
        labels: str = "auto",
    ) -> None:
        if labels not in _LABELS:
            raise ValueError(f"labels: one of {', '.join(_LABELS)}, not {labels!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("rank and world_size: give both or neither")
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory: page-locked memory needs CUDA, which this torch "
                             f"({torch.__version__}) does not have")
        self._labels = labels
        self._pin = pin_memory
        group = (int(rank), int(world_size)) if rank is not None else _torch_group()
        self._config = config
        self._overrides = overrides
        self._explicit_group = rank is not None
        self._pipe = Pipeline.__new__(Pipeline)
        self._pipe._setup(config, overrides, None, group, None)
        self._identity = self._pipe._run.identity()
        self._epoch: Optional[int] = None  # set_epoch's, for the next iteration
        if state is not None:
            self.load_state_dict(state)

    # ---- iteration -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration reads (as DistributedSampler.set_epoch): its order and
        augmentation are those of that epoch in any run; the rest of it when a resumed state
        stands inside it."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"set_epoch: a non-negative integer, got {epoch!r}")
        self._epoch = epoch

    def __iter__(self) -> Iterator[LoaderBatch]:
        if _in_dataloader_worker():
            raise RuntimeError("millrace.torch.Loader runs its own threads and is not read inside "
                               "a torch DataLoader worker: iterate the Loader itself")
        epoch = self._epoch if self._epoch is not None else self._pipe.state()["epoch"]
        self._epoch = None
        return self._batches(self._pipe.epoch(epoch))

    def _batches(self, batches: Iterator) -> Iterator[LoaderBatch]:
        for b in batches:
            yield self._convert(b)

    def _convert(self, b: Any) -> LoaderBatch:
        images = torch.from_numpy(b.data)  # a view: the tensor keeps the engine's buffer alive
        raw = b.labels
        if self._labels == "float32" or (self._labels == "auto" and raw.ndim > 1):
            labels = torch.from_numpy(raw)
        else:
            whole = np.rint(raw)
            if not np.array_equal(whole, raw):
                raise ValueError("millrace.torch.Loader: the labels are not whole numbers; "
                                 "pass labels='float32' to take them as they are")
            labels = torch.from_numpy(whole.astype(np.int64))
        ids = torch.from_numpy(b.ids)
        if self._pin:
            images, labels, ids = images.pin_memory(), labels.pin_memory(), ids.pin_memory()
        return LoaderBatch(images, labels, ids, b.pad, b.epoch, b.index, b)

    def __len__(self) -> int:
        """Batches in one whole epoch on this rank (the same on every rank)."""
        return len(self._pipe)

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("millrace.torch.Loader hands out whole batches from its own threads and "
                        "is not indexed by sample: iterate it (`for images, labels in loader`) "
                        "rather than pass it to torch.utils.data.DataLoader")

    # ---- where the run stands ------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return int(self._identity["part_index"])

    @property
    def world_size(self) -> int:
        return int(self._identity["num_parts"])

    @property
    def pipeline(self) -> Pipeline:
        """The millrace.Pipeline underneath (statistics, summary, graph)."""
        return self._pipe

    def stats(self) -> dict:
        return self._pipe.stats()

    def _fingerprint(self) -> dict:
        i = self._identity
        return {
            "dataset": f"{i['dataset']:016x}",
            "dataset_samples": int(i["dataset_samples"]),
            "seed": int(i["seed"]),
            "batch_size": int(i["batch_size"]),
            "config": f"{i['config']:016x}",
        }

    def state_dict(self) -> dict:
        """Where this rank stands, after the last batch handed out: plain values only."""
        position = self._pipe.state()
        glob = self._pipe._global
        start = glob[1] if glob is not None and glob[0] == position["epoch"] else 0
        out = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "epoch": position["epoch"],
            "position": position,
            "global_start": start,
            "rank": self.rank,
            "world_size": self.world_size,
            "split": "global" if self._identity["global"] else "contiguous",
            "fingerprint": self._fingerprint(),
        }
        if self._identity["global"]:
            # The positions of the epoch's order that every rank has taken together, the ranks
            # standing at the same batch: [0, global_samples).
            n = int(self._identity["dataset_samples"])
            taken = start + self.world_size * position["samples"]
            out["global_samples"] = min(n, taken)
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the batch a state_dict() was taken at (on this or another rank, with
        this or another number of ranks when the split is global)."""
        checked = _checked(state)
        mine = self._fingerprint()
        for key in _FINGERPRINT:
            if checked["fingerprint"][key] != mine[key]:
                raise ValueError(
                    f"state: taken with another {_FINGERPRINT_WHAT[key]}: "
                    f"{key} {checked['fingerprint'][key]!r} in the state, {mine[key]!r} here")
        split = "global" if self._identity["global"] else "contiguous"
        if checked["split"] != split:
            raise ValueError(f"state: taken with split '{checked['split']}', this loader's "
                             f"source splits '{split}'")
        pipe = self._pipe
        epoch = checked["epoch"]
        same_place = (checked["rank"], checked["world_size"]) == (self.rank, self.world_size)
        if split == "contiguous":
            if not same_place:
                raise ValueError(
                    f"state: taken on rank {checked['rank']} of {checked['world_size']}, and a "
                    "contiguous split (MXNet's slices) resumes only on the same rank of as many "
                    f"ranks (here rank {self.rank} of {self.world_size}); use split: global")
            start, glob = checked["position"], None
        elif same_place:
            # The same dealing as the run the state comes from: the same batches, byte for byte.
            start = checked["position"]
            glob = (epoch, checked["global_start"]) if checked["global_start"] else None
        else:
            taken = checked["global_samples"]
            if taken >= self._identity["dataset_samples"]:
                start, glob = {"epoch": epoch + 1, "samples": 0, "batches": 0,
                               "first_batch_samples": 0}, None
            else:
                start = {"epoch": epoch, "samples": 0, "batches": 0, "first_batch_samples": 0}
                glob = (epoch, taken) if taken else None
        pipe._drop_run()
        pipe._state = dict(start)
        pipe._global = glob
        pipe._run = pipe._new_run(pipe._state)
        self._epoch = None

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._pipe.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        # The recipe at its position: unpickled, a new Loader continues from there.
        kwargs = {"pin_memory": self._pin, "labels": self._labels}
        if self._explicit_group:
            kwargs.update(rank=self.rank, world_size=self.world_size)
        return (_unpickle_loader, (self._config, self._overrides, self.state_dict(), kwargs))

    def __repr__(self) -> str:
        return (f"<millrace.torch.Loader rank {self.rank} of {self.world_size} "
                f"at {self._pipe.state()}>")


def _unpickle_loader(config: Any, overrides: Any, state: dict, kwargs: dict) -> Loader:
    return Loader(config, overrides, state=state, **kwargs)


def _checked(state: Any) -> dict:
    """A state_dict() read back, every field checked; ValueError naming the first bad one."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: a dict from Loader.state_dict(), not {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"state: not a {STATE_FORMAT} state (format {state.get('format')!r})")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"state: version {state.get('version')!r}; this millrace reads "
                         f"version {STATE_VERSION}")

    def count(where: str, value: Any) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"state: '{where}' must be a non-negative integer, got {value!r}")
        if value < 0:
            raise ValueError(f"state: '{where}' must be a non-negative integer, got {value!r}")
        return int(value)

    out: dict = {}
    for key in ("epoch", "global_start", "rank", "world_size"):
        if key not in state:
            raise ValueError(f"state: missing '{key}'")
        out[key] = count(key, state[key])
    if out["world_size"] < 1 or out["rank"] >= out["world_size"]:
        raise ValueError(f"state: rank {out['rank']} of world size {out['world_size']}")
    if state.get("split") not in ("global", "contiguous"):
        raise ValueError(f"state: 'split' is 'global' or 'contiguous', got {state.get('split')!r}")
    out["split"] = state["split"]
    position = state.get("position")
    if not isinstance(position, Mapping):
        raise ValueError("state: missing 'position'")
    out["position"] = {}
    for key in ("epoch", "samples", "batches", "first_batch_samples"):
        if key not in position:
            raise ValueError(f"state: missing 'position.{key}'")
        out["position"][key] = count(f"position.{key}", position[key])
    if out["position"]["epoch"] != out["epoch"]:
        raise ValueError("state: 'position.epoch' is not 'epoch'")
    if out["position"]["first_batch_samples"] > out["position"]["samples"]:
        raise ValueError("state: 'position.first_batch_samples' is past 'position.samples'")
    fingerprint = state.get("fingerprint")
    if not isinstance(fingerprint, Mapping):
        raise ValueError("state: missing 'fingerprint'")
    out["fingerprint"] = {}
    for key in _FINGERPRINT:
        if key not in fingerprint:
            raise ValueError(f"state: missing 'fingerprint.{key}'")
        value = fingerprint[key]
        out["fingerprint"][key] = (value if key in ("dataset", "config")
                                   else count(f"fingerprint.{key}", value))
    if out["split"] == "global":
        if "global_samples" not in state:
            raise ValueError("state: missing 'global_samples'")
        out["global_samples"] = count("global_samples", state["global_samples"])
        n = out["fingerprint"]["dataset_samples"]
        expected = min(n, out["global_start"] + out["world_size"] * out["position"]["samples"])
        if out["global_samples"] != expected or out["global_start"] > n:
            raise ValueError(f"state: 'global_samples' {out['global_samples']} does not follow "
                             f"from its position ({expected} expected)")
    return out

