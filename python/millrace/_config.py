"""A dict config as the YAML text the engine reads, and the engine's diagnostics mapped back to
the dict's keys.

A dict is written as JSON (which is YAML), one key or list item per line, and each line's key
path is recorded: a diagnostic at `<dict>:LINE:COL` is then reported at the key path
(`config["stages"][0]["root"]`), never at a line of text the user did not write.

Values may be what a Python user naturally has at hand: numbers, strings, booleans, None,
lists, tuples and dicts, and also NumPy scalars and arrays and `os.PathLike` paths, converted to
their plain equivalents. Anything else is a TypeError that names the key path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

SOURCE_NAME = "<dict>"


def key_path(path: tuple) -> str:
    """`("stages", 0, "root")` as `config["stages"][0]["root"]`."""
    return "config" + "".join(f"[{part!r}]" if isinstance(part, str) else f"[{part}]"
                              for part in path).replace("'", '"')


def plain(value: Any, path: tuple = ()) -> Any:
    """The value with NumPy numbers and arrays, tuples and paths made plain JSON values."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key_path(path)}: {value!r} is not a finite number")
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{key_path(path)}: keys are strings, got {k!r}")
            out[k] = plain(v, path + (k,))
        return out
    if isinstance(value, (list, tuple)):
        return [plain(v, path + (i,)) for i, v in enumerate(value)]
    # NumPy without importing it: its scalars have .item(), its arrays .tolist().
    kind = type(value).__module__
    if kind == "numpy":
        if hasattr(value, "shape") and getattr(value, "shape", ()) != ():
            return plain(value.tolist(), path)
        return plain(value.item(), path)
    raise TypeError(f"{key_path(path)}: {type(value).__name__} {value!r} is not a config value "
                    "(numbers, strings, booleans, lists and dicts)")


def to_text(config: Mapping[str, Any]) -> tuple[str, dict[int, tuple]]:
    """The dict as JSON text, and the key path of each line (1-based)."""
    lines: list[str] = []
    paths: dict[int, tuple] = {}

    def emit(text: str, path: tuple) -> None:
        lines.append(text)
        paths[len(lines)] = path

    def write(value: Any, path: tuple, indent: str, prefix: str, comma: str) -> None:
        if isinstance(value, dict) and value:
            emit(f"{indent}{prefix}{{", path)
            items = list(value.items())
            for i, (k, v) in enumerate(items):
                write(v, path + (k,), indent + "  ", json.dumps(k) + ": ",
                      "," if i + 1 < len(items) else "")
            lines.append(f"{indent}}}{comma}")
        elif isinstance(value, list) and value:
            emit(f"{indent}{prefix}[", path)
            for i, v in enumerate(value):
                write(v, path + (i,), indent + "  ", "", "," if i + 1 < len(value) else "")
            lines.append(f"{indent}]{comma}")
        else:
            emit(f"{indent}{prefix}{json.dumps(value)}{comma}", path)

    write(plain(config), (), "", "", "")
    return "\n".join(lines) + "\n", paths


def relocate(diagnostics: list, paths: dict[int, tuple], make) -> list:
    """Diagnostics placed at lines of the generated text, placed at the dict's key paths instead.
    `make(file, line, column, message, warning)` builds one."""
    out = []
    for d in diagnostics:
        if d.file == SOURCE_NAME:
            path = paths.get(d.line)
            where = key_path(path) if path is not None else "config"
            out.append(make(where, 0, 0, d.message, d.warning))
        else:
            out.append(d)
    return out
