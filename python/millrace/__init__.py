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
(`{"batch.size": 32, "pipeline.threads": 2}`). A config with problems raises ConfigError with
every problem (`.diagnostics`, each with file, line and column); a failed run raises RunError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

# As the millrace command does: OpenMP's idle threads (oneDNN's, in an `infer` stage) spin about
# 25 microseconds before they sleep, not 300 milliseconds, so that they leave the cores to the data
# stages. It takes effect when OpenMP starts after this import; a policy already set is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from ._millrace import Batch, ConfigError, Diagnostic, RunError  # noqa: E402
from ._millrace import Run as _Run  # noqa: E402
from ._millrace import stage_reference as _stage_reference  # noqa: E402
from ._millrace import validate as _validate  # noqa: E402

__all__ = ["Pipeline", "Batch", "ConfigError", "RunError", "Diagnostic", "validate", "stages"]

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
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError("overrides: a dict or a list of 'key=value' strings, not one string")
    return [str(o) for o in overrides]


def validate(config: Union[str, os.PathLike],
             overrides: Union[None, Mapping[str, Any], Sequence[str]] = None) -> list:
    """Every problem in a config file, errors and warnings, as `millrace validate` finds them,
    without touching the dataset: a list of Diagnostic (empty for a clean config)."""
    return _validate(os.fspath(config), _override_strings(overrides))


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
        self._run: Optional[_Run] = None
        self._closed = False
        self._overrides = _override_strings(overrides)
        if isinstance(config, Mapping):
            self._yaml: Optional[str] = json.dumps(config, indent=2)
            self._path: Optional[str] = None
        elif isinstance(config, (str, os.PathLike)):
            self._yaml = None
            self._path = os.fspath(config)
        else:
            raise TypeError(f"config: a YAML file path or a dict, not {type(config).__name__}")
        # Where the stream stands: the position after the last batch handed out (or where the
        # next run starts), and a batch of a later epoch read while finding an epoch's end.
        self._state = _checked_state(state) if state is not None else _start_state(0)
        self._ahead: Optional[Batch] = None
        self._iteration = 0  # bumped by each new epoch iterator; older ones stop
        self._last_stats: Optional[dict] = None
        self._run = self._new_run(self._state)

    # ---- runs ----------------------------------------------------------------------------------

    def _build(self) -> _Run:
        if self._path is not None:
            return _Run.from_file(self._path, self._overrides)
        return _Run.from_string(self._yaml, "<dict>", self._overrides)

    def _new_run(self, start: dict) -> _Run:
        run = self._build()
        run.start_at(start["epoch"], start["samples"], start["batches"],
                     start["first_batch_samples"], _OPEN_ENDED)
        return run

    def _drop_run(self) -> None:
        self._ahead = None
        if self._run is not None:
            self._last_stats = json.loads(self._run.stats_json())
            self._run.cancel()
            self._run = None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the pipeline is closed")

    # ---- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """The batches of the epoch where the pipeline stands (epoch 0 first, then 1, ...)."""
        return self.epoch(self._state["epoch"])

    def epoch(self, n: int) -> Iterator[Batch]:
        """The batches of epoch `n`: all of them, or those after the position the pipeline stands
        at when that is inside epoch `n` (a resumed state)."""
        self._check_open()
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"epoch: a non-negative integer, got {n!r}")
        if self._state["epoch"] != n or self._run is None:
            start = self._state if self._state["epoch"] == n else _start_state(n)
            self._drop_run()
            self._state = dict(start)
            self._run = self._new_run(self._state)
        self._iteration += 1
        return self._epoch_batches(n, self._iteration)

    def _epoch_batches(self, n: int, iteration: int) -> Iterator[Batch]:
        while True:
            if iteration != self._iteration or self._closed:
                return  # a newer iteration (or close()) took over the stream
            batch = self._ahead
            self._ahead = None
            if batch is None:
                if self._run is None:
                    return
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
                return
            self._state = dict(batch.position)
            if batch.last_in_epoch:
                # The epoch ends with this batch; the run goes on making the next one's.
                self._state = _start_state(n + 1)
                yield batch
                return
            yield batch

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
        metrics ({"infer.top1_accuracy": ...}) and more."""
        if self._run is not None:
            return json.loads(self._run.stats_json())
        return dict(self._last_stats or {})

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
        if getattr(self, "_run", None) is not None:
            self._run.cancel()

    def __repr__(self) -> str:
        where = "closed" if self._closed else f"at {self._state}"
        return f"<millrace.Pipeline {self.name!r} {where}>"
