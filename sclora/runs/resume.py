"""The one resume rule: a work folder carries the request it was made for; the same request resumes, another
starts over.

A driver claims its folder (a run's checkpoints, a capture's shards, a frontier item's finished runs) with the
request that decides what goes in it. What a killed process left there is kept only when the request matches:
anything else would resume work made from other settings or data. Inside a claimed folder, `FinishedRuns` keeps
the units already done (one JSON line each, appended as each finishes), so a killed driver picks up at the next.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Hashable
from pathlib import Path

from sclora.ops.atomic import write_json

REQUEST = "request.json"


def claim(directory: str | Path, request: dict) -> bool:
    """Make `directory` the work folder of `request`; returns True when it already was (its content is kept, to
    resume), False when it is new or was made for another request (its content is removed first)."""
    directory = Path(directory)
    path = directory / REQUEST
    kept = path.is_file() and _read(path) == _normal(request)
    if not kept and directory.exists():
        shutil.rmtree(directory)
    write_json(path, request)
    return kept


def _normal(request: dict) -> object:
    """The request as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(request))


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a request cut short by a kill: start over


class FinishedRuns:
    """The units a driver finished in a claimed folder: `key -> value`, one JSON line each in `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def done(self) -> dict[Hashable, object]:
        """Every finished unit; a line a kill cut short is not one."""
        found: dict[Hashable, object] = {}
        if not self.path.is_file():
            return found
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            found[_key(entry["key"])] = entry["value"]
        return found

    def add(self, key: Hashable, value: object) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "value": value}) + "\n")


def _key(key: object) -> Hashable:
    return tuple(key) if isinstance(key, list) else key
