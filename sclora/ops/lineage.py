"""Lineage from `dvc.lock`: the stages it records, and a short hash of each that the runs are tagged with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


def locked_stages(dvc_lock: str | Path) -> dict[str, dict]:
    """The `stages` of a `dvc.lock`, by name. With libyaml's C loader where PyYAML has it: the lock of the default
    pipeline is ~4500 lines, which the pure-Python loader takes about 2 s to read."""
    path = Path(dvc_lock)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dvc.lock not found")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return (yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}).get("stages", {})


def stage_hashes(dvc_lock: str | Path, stages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`dvc.<stage>` -> a hash of that stage's `dvc.lock` entry (changes with its deps, params or outs)."""
    path = Path(dvc_lock)
    locked = locked_stages(path)
    hashes = {}
    for stage in stages:
        if stage not in locked:
            raise KeyError(f"{path}: no stage '{stage}'")
        entry = json.dumps(locked[stage], sort_keys=True, default=str)
        hashes[f"dvc.{stage}"] = hashlib.sha256(entry.encode()).hexdigest()[:16]
    return hashes
