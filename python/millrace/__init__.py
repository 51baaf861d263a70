"""millrace: a streaming data pipeline for quantized networks, from Python.

    import millrace, torch

    with millrace.Pipeline("configs/train.yaml", overrides={"batch.size": 32}) as pipe:
        for epoch in range(3):
            for batch in pipe:                        # one epoch per loop, the next each time
                x = torch.from_numpy(batch.data)      # no copy: a view of the engine's buffer
                y = torch.from_numpy(batch.labels)

A Pipeline runs the C++ engine on its own threads (the GIL is released while it works and while
Python waits for a batch). Batches are views on the engine's pooled buffers: a buffer goes back to
the pool when the last reference to the batch and to its arrays is gone, and the engine can hand
out at most `pipeline.prefetch` batches at once, so code that keeps batches copies what it keeps
(`numpy.array(batch.data)`) or raises `pipeline.prefetch`.

Epochs and resuming: each `for batch in pipe` is one epoch, the next one each time; `pipe.epoch(n)`
is epoch n, with the same order and augmentation as in any other run of the same config and
seed. `pipe.state()` after any batch is a small dict; `Pipeline(..., state=state)` continues with
exactly the batches after it, byte for byte, without loading or decoding the samples before it.

The config is a YAML file or a dict with the same schema; `overrides` take the CLI's `--set` keys
(`{"batch.size": 32, "pipeline.threads": 2}`). A dict's values may be NumPy numbers and arrays or
paths as well as plain values. A config with problems raises ConfigError with every problem
(`.diagnostics`, each with file, line and column; for a dict, the key path such as
`config["stages"][0]["root"]` in place of the file); a failed run raises RunError. Relative paths
(a dataset root, a model, an output folder) are taken as the millrace command takes them: in a
config file, relative to the file's folder; in a dict or in `overrides`, relative to the current
directory.

PyTorch: `millrace.torch.Loader` yields torch tensors (int64 labels and ids), splits the data set
among the ranks of torch.distributed (or RANK / WORLD_SIZE) with one global shuffle, and saves and
resumes its position on any number of ranks. A Pipeline (or a Loader) does not go through
`torch.utils.data.DataLoader`: it runs its own threads, and passing it to one raises an error
that says so rather than read the data set once per worker. After `os.fork()` a pipeline that
ran belongs to the parent: using it in the child raises RuntimeError (its threads are not
there), and nothing in the child waits for them. Pickling a Pipeline pickles its recipe (the
config, the overrides and the position it stands at): unpickled, it is a new pipeline that
continues from there.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

# As the millrace command does: OpenMP's idle threads (oneDNN's, in an `infer` stage) spin about
# 25 microseconds before they sleep, not 300 milliseconds, so that they leave the cores to the data
# stages. It takes effect when OpenMP starts after this import; a policy already set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from . import _config  # noqa: E402
from . import _millrace  # noqa: E402
from ._millrace import Batch, ConfigError, Diagnostic, RunError, __version__  # noqa: E402
from ._millrace import Run as _Run  # noqa: E402
from ._millrace import stage_reference as _stage_reference  # noqa: E402
from ._millrace import validate as _validate  # noqa: E402
from ._millrace import validate_string as _validate_string  # noqa: E402

__all__ = ["Pipeline", "Batch", "ConfigError", "RunError", "Diagnostic", "validate", "stages",
           "__version__"]

# The epochs one run is asked to read: as many as a training loop can ask for. One run streams
# epoch after epoch, so the next epoch's first batches are made while the last ones are used.
_OPEN_ENDED = 1 << 30

_STATE_KEYS = ("epoch", "samples", "batches", "first_batch_samples")


def _override_strings(overrides: Union[None, Mapping[str, Any], Sequence[str]]) -> list[str]:
    """`{"batch.size": 32}` or `["batch.size=32"]` as the engine's `key=value` strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        # JSON is YAML flow text: numbers, booleans, strings and lists read back as given.
        return [f"{key}={json.dumps(_config.plain(value, (key,)))}"
                for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: a dict or a list of 'key=value' strings, not one string")
    return [str(o) for o in overrides]


def _dict_diagnostics(diagnostics: list, paths: dict) -> list:
    return _config.relocate(diagnostics, paths, Diagnostic)


def _dict_config_error(error: ConfigError, paths: dict) -> ConfigError:
    """The engine's error for a dict config, with every place given as the dict's key path."""
    diagnostics = _dict_diagnostics(list(error.diagnostics), paths)
    out = ConfigError("\n".join(str(d) for d in diagnostics))
    out.diagnostics = diagnostics
    return out


def validate(config: Union[str, os.PathLike, Mapping[str, Any]],
             overrides: Union[None, Mapping[str, Any], Sequence[str]] = None) -> list:
    """Every problem in a config (a file or a dict), errors and warnings, as `millrace validate`
    finds them, without touching the dataset: a list of Diagnostic (empty for a clean config)."""
    if isinstance(config, Mapping):
        text, paths = _config.to_text(config)
        found = _validate_string(text, _config.SOURCE_NAME, _override_strings(overrides))
        return _dict_diagnostics(found, paths)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config: a YAML file path or a dict, not {type(config).__name__}")
    return _validate(os.fspath(config), _override_strings(overrides))


# ---- processes: fork, DataLoader workers --------------------------------------------------------

# Pipelines alive in this process, and whether any of them started a run (the engine's threads).
_live: "weakref.WeakSet[Pipeline]" = weakref.WeakSet()
_ran = False
_forked_after_run = False


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: every run it inherited is left alone for
    ever (cancelling or destroying one would wait for threads that are not there), and using a
    pipeline raises instead of hanging."""
    global _forked_after_run
    if _ran:
        _forked_after_run = True
    for pipe in list(_live):
        pipe._forked = True
        for held in (pipe._run, pipe._ahead):
            if held is not None:
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(held))
        pipe._run = None
        pipe._ahead = None


os.register_at_fork(after_in_child=_after_fork_in_child)

_USE_LOADER = ("iterate it directly (`for batch in pipe`), or use millrace.torch.Loader, which "
               "splits the data set among torch.distributed's ranks; a DataLoader's worker "
               "processes would each read the whole data set")


def _in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def stages(markdown: bool = False) -> str:
    """The reference of every stage type: its keys, their types, defaults and documentation."""
    return _stage_reference(markdown)


def _start_state(epoch: int) -> dict:
    return {"epoch": epoch, "samples": 0, "batches": 0, "first_batch_samples": 0}


def _checked_state(state: Mapping[str, Any]) -> dict:
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"state: missing {', '.join(missing)} (take it from Pipeline.state())")
    out = {}
    for key in _STATE_KEYS:
        value = state[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"state: '{key}' must be a non-negative integer, got {value!r}")
        out[key] = value
    if out["first_batch_samples"] > out["samples"]:
        raise ValueError("state: 'first_batch_samples' is past 'samples'")
    return out


class Pipeline:
    """A millrace pipeline built from a YAML file or a dict; iterate it for batches.

    `config`: a path to a YAML file, or a dict with the YAML schema (`pipeline:`, `stages:`).
    `overrides`: the CLI's `--set` keys, as a dict or a list of `key=value` strings.
    `state`: a `state()` taken earlier, to continue from the batch after it.

    Building validates the whole config (ConfigError) and prepares the stages (scans the dataset,
    loads a model); the run starts with the first batch asked for.
    """

    def __init__(
        self,
        config: Union[str, os.PathLike, Mapping[str, Any]],
        overrides: Union[None, Mapping[str, Any], Sequence[str]] = None,
        *,
        state: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self._setup(config, overrides, state, None, None)

    def _setup(self, config: Any, overrides: Any, state: Optional[Mapping[str, Any]],
               group: Optional[tuple], global_start: Optional[tuple]) -> None:
        self._run: Optional[_Run] = None
        self._ahead: Optional[Batch] = None
        self._closed = False
        self._forked = False
        if _forked_after_run:
            raise RuntimeError(
                "millrace: this process was forked from one whose pipelines had started their "
                "threads, which a forked child does not have; make pipelines in the parent, or "
                "start children with the 'spawn' or 'forkserver' method")
        self._overrides = _override_strings(overrides)
        self._paths: dict = {}
        if isinstance(config, Mapping):
            self._config: Union[str, dict] = _config.plain(config)
            self._yaml: Optional[str]
            self._yaml, self._paths = _config.to_text(self._config)
            self._path: Optional[str] = None
        elif isinstance(config, (str, os.PathLike)):
            self._config = os.fspath(config)
            self._yaml = None
            self._path = os.fspath(config)
        else:
            raise TypeError(f"config: a YAML file path or a dict, not {type(config).__name__}")
        self._original_overrides = overrides
        # The process group the runs are built for ((rank, world) or None: the process's own).
        self._group: Optional[tuple] = tuple(group) if group is not None else None
        # A resumed epoch's start in its global order (epoch, positions taken), for a source
        # that deals one order to every rank: the runs that continue that epoch start there.
        self._global: Optional[tuple] = tuple(global_start) if global_start is not None else None
        # Where the stream stands: the position after the last batch handed out (or where the
        # next run starts), and a batch of a later epoch read while finding an epoch's end.
        self._state = _checked_state(state) if state is not None else _start_state(0)
        self._iteration = 0  # bumped by each new epoch iterator; older ones stop
        self._last_stats: Optional[dict] = None
        self._skipped_seen: list = []
        self._run = self._new_run(self._state)
        _live.add(self)

    # ---- runs ----------------------------------------------------------------------------------

    def _build(self) -> _Run:
        previous = None
        if self._group is not None:
            previous = _millrace.process_group()[:2]
            _millrace.set_process_group(*self._group)
        try:
            if self._path is not None:
                return _Run.from_file(self._path, self._overrides)
            try:
                return _Run.from_string(self._yaml, _config.SOURCE_NAME, self._overrides)
            except ConfigError as e:
                raise _dict_config_error(e, self._paths) from None
        finally:
            if previous is not None:
                _millrace.set_process_group(*previous)

    def _new_run(self, start: dict) -> _Run:
        run = self._build()
        global_start = 0
        if self._global is not None and self._global[0] == start["epoch"]:
            global_start = self._global[1]
        run.start_at(start["epoch"], start["samples"], start["batches"],
                     start["first_batch_samples"], _OPEN_ENDED, global_start)
        return run

    def _drop_run(self) -> None:
        self._ahead = None
        if self._run is not None:
            self._last_stats = json.loads(self._run.stats_json())
            self._run.cancel()
            self._run = None

    def _check_open(self) -> None:
        if self._forked:
            raise RuntimeError("millrace: this pipeline belongs to the process it was forked "
                               "from, where its threads run; make a new one in this process "
                               "(or pickle it: an unpickled pipeline continues from its state)")
        if self._closed:
            raise ValueError("the pipeline is closed")

    # ---- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """The batches of the epoch where the pipeline stands (epoch 0 first, then 1, ...)."""
        return self.epoch(self._state["epoch"])

    def epoch(self, n: int) -> Iterator[Batch]:
        """The batches of epoch `n`: all of them, or those after the position the pipeline stands
        at when that is inside epoch `n` (a resumed state)."""
        if _in_dataloader_worker():
            raise RuntimeError("millrace: a pipeline runs its own threads and is not read inside "
                               "a torch DataLoader worker: " + _USE_LOADER)
        self._check_open()
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"epoch: a non-negative integer, got {n!r}")
        if self._state["epoch"] != n or self._run is None:
            start = self._state if self._state["epoch"] == n else _start_state(n)
            if start is not self._state:
                self._global = None  # epoch n afresh, from its first position
            self._drop_run()
            self._state = dict(start)
            self._run = self._new_run(self._state)
        self._iteration += 1
        return self._epoch_batches(n, self._iteration)

    def _epoch_batches(self, n: int, iteration: int) -> Iterator[Batch]:
        global _ran
        while True:
            if iteration != self._iteration or self._closed:
                return  # a newer iteration (or close()) took over the stream
            batch = self._ahead
            self._ahead = None
            if batch is None:
                if self._run is None:
                    return
                _ran = True  # the first next() starts the engine's threads
                try:
                    batch = self._run.next()
                except BaseException:
                    # KeyboardInterrupt or a failed run: the run is over; the next iteration
                    # starts a new one where the last batch handed out left the stream.
                    self._drop_run()
                    raise
                if batch is None:
                    self._drop_run()
                    return
            if batch.epoch != n:
                # The first batch of a later epoch: epoch n is complete.
                self._ahead = batch
                self._state = _start_state(batch.epoch)
                self._global = None
                return
            self._state = dict(batch.position)
            if batch.last_in_epoch:
                # The epoch ends with this batch; the run goes on making the next one's.
                self._state = _start_state(n + 1)
                self._global = None
                yield batch
                return
            yield batch

    def __getitem__(self, index: Any) -> Any:
        raise TypeError(f"millrace: a {type(self).__name__} is not indexed by sample (it hands "
                        "out whole batches from its own threads), so it does not go through "
                        "torch.utils.data.DataLoader: " + _USE_LOADER)

    def __reduce__(self) -> tuple:
        self._check_open()
        return (_unpickle_pipeline, (type(self), self._config, self._original_overrides,
                                     self.state(), self._group, self._global))

    def __len__(self) -> int:
        """Batches in one epoch, when the source knows its size (no sample skipped)."""
        self._check_open()
        n = self._run.batches_per_epoch() if self._run is not None else self._build().batches_per_epoch()
        if n is None:
            raise TypeError("the number of batches per epoch is not known for this source "
                            "(a RecordIO file without index)")
        return n

    # ---- state, statistics, lifetime -----------------------------------------------------------

    def state(self) -> dict:
        """Where the stream stands: after the last batch handed out, or at the start of the epoch
        the next iteration reads. Pass it as `Pipeline(..., state=...)` to continue from there."""
        return dict(self._state)

    def stats(self) -> dict:
        """The current run's figures (the last run's once it ended), as the CLI's `--json`:
        images, batches, seconds, images_per_second, skipped ([{path, id, stage, error}]),
        stages ([{name, busy_seconds, wait_input_seconds, blocked_output_seconds, ...}]),
        metrics ({"infer.top1_accuracy": ...}) and more. `skipped` names each sample once,
        however many epochs the run read (or read ahead) it in."""
        if self._run is not None:
            stats = json.loads(self._run.stats_json())
        else:
            stats = dict(self._last_stats or {})
        if "skipped" in stats:
            seen = set()
            unique = []
            for s in stats["skipped"]:
                key = (s.get("path"), s.get("id"), s.get("stage"))
                if key not in seen:
                    seen.add(key)
                    unique.append(s)
            stats["skipped"] = unique
        return stats

    def summary(self) -> str:
        """The run summary the CLI prints, as text."""
        return self._run.summary() if self._run is not None else ""

    @property
    def name(self) -> str:
        return self._run.name if self._run is not None else ""

    @property
    def prefetch(self) -> int:
        """pipeline.prefetch: the batches Python may hold at once before the run stalls."""
        return self._run.prefetch if self._run is not None else 0

    def warnings(self) -> list[str]:
        """Configuration remarks that are not errors, as `file:line:col: warning: ...`."""
        return self._run.warnings() if self._run is not None else []

    def graph_dot(self) -> str:
        """The lowered flow graph, as Graphviz DOT."""
        self._check_open()
        return self._run.graph_dot() if self._run is not None else self._build().graph_dot()

    def close(self) -> None:
        """Stops the run and its threads; batches still held stay readable until dropped."""
        if self._closed:
            return
        self._closed = True
        self._drop_run()

    def __enter__(self) -> "Pipeline":
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropping a pipeline mid-epoch stops its threads now, not when the last batch goes.
        if getattr(self, "_run", None) is not None and not getattr(self, "_forked", False):
            self._run.cancel()

    def __repr__(self) -> str:
        where = "closed" if self._closed else f"at {self._state}"
        return f"<millrace.Pipeline {self.name!r} {where}>"


def _unpickle_pipeline(cls: type, config: Any, overrides: Any, state: dict, group: Any,
                       global_start: Any) -> "Pipeline":
    pipe = cls.__new__(cls)
    Pipeline._setup(pipe, config, overrides, state, group, global_start)
    return pipe
