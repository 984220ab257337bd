"""Crashes mid-stage: kill -9 during capture, training and evaluation, then the same stage again, finishes with
what an uninterrupted run makes; a full disk and a permission error surface as one line and leave nothing.

Each killed run is a real `python -m tasks <stage>` process that sends itself SIGKILL at a chosen point (after
a shard's bytes are on disk but before its rename; after a checkpoint; after the first evaluation task), so the
point is exact and the test needs no timing. The re-runs and the uninterrupted references run in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from stage_project import files, run_stage, stage

# Python run before the stage in the killed process: wrap `owner.attribute` so the process kills itself
# (SIGKILL: no cleanup, no finally blocks) right after the wrapped call returns for the `calls`-th time.
KILL_AFTER = """
import os, signal, importlib
owner = {owner}
original, calls = getattr(owner, {attribute!r}), []
def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    calls.append(1)
    if len(calls) == {calls}:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, {attribute!r}, wrapped)
"""


def kill_after(owner: str, attribute: str, calls: int) -> str:
    return KILL_AFTER.format(owner=owner, attribute=attribute, calls=calls)


def partials(root: Path) -> list[Path]:
    return [path for path in (root / "artifacts").rglob(".*") if path.name.endswith(".partial")]


def test_killed_capture_resumes_to_identical_bytes(project):
    assert stage("prepare") == 0
    assert stage("capture") == 0
    reference = files(project)
    shutil.rmtree("artifacts/capture")
    # 4 distinct layer inputs x 2 shards per capture: the 6th file is the second shard of D-, mid-way.
    prelude = kill_after("importlib.import_module('sclora.method.gather')", "save_file", 6)
    killed = run_stage(project, "capture", prelude=prelude)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list(Path("artifacts/capture/neg/shards").glob("*.safetensors"))) == 5
    left = partials(project)  # the killed shard's bytes, never renamed into place
    assert len(left) == 1 and left[0].name.endswith(".00001.safetensors.partial"), left
    assert stage("capture") == 0
    assert files(project) == reference  # every shard and manifest byte-identical
    assert not partials(project)


def test_killed_training_resumes_to_identical_weights_and_metrics(project, monkeypatch):
    for name in ("prepare", "capture", "evaluate_base"):
        assert stage(name) == 0
    run = Path("artifacts/runs/benign-pissa-0")
    assert stage("train", run.name) == 0
    reference = {name: load_file(run / name / "adapter_model.safetensors") for name in ("model", "export")}
    reference_metrics = json.loads((run / "eval" / "metrics.json").read_text())
    shutil.rmtree(run)

    killed = run_stage(project, "train", run.name, prelude=kill_after("importlib.import_module('transformers').Trainer",
                                                                      "_save_checkpoint", 2))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not run.exists()
    assert sorted(p.name for p in Path("artifacts/checkpoints", run.name, "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]  # fmt: skip

    loads = []  # every torch.load the resume makes (optimizer, scheduler, RNG state): never a full unpickle
    monkeypatch.setattr(torch, "load", lambda *args, _load=torch.load, **kw: loads.append(kw) or _load(*args, **kw))
    assert stage("train", run.name) == 0
    assert loads and all(kwargs.get("weights_only") is True for kwargs in loads), loads
    summary = json.loads((run / "run.json").read_text())
    assert summary["resumed_from"] == 2 and summary["global_step"] == 3
    for name, tensors in reference.items():
        resumed = load_file(run / name / "adapter_model.safetensors")
        assert resumed.keys() == tensors.keys()
        assert all(resumed[key].equal(tensors[key]) for key in tensors), name
    assert json.loads((run / "eval" / "metrics.json").read_text()) == reference_metrics
    assert not Path("artifacts/checkpoints", run.name).exists() and not partials(project)


def test_killed_evaluation_leaves_nothing_and_reruns_to_identical_metrics(project):
    assert stage("prepare") == 0
    assert stage("evaluate_base") == 0
    base = Path("artifacts/eval/base")
    reference = {path.name: path.read_bytes() for path in base.iterdir()}
    shutil.rmtree(base)
    killed = run_stage(project, "evaluate_base", prelude=kill_after(
        "importlib.import_module('lm_eval.models.huggingface').HFLM", "generate_until", 1))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not base.exists()  # the killed evaluation wrote into its staging directory only
    assert stage("evaluate_base") == 0
    assert {path.name: path.read_bytes() for path in base.iterdir()} == reference
    assert not partials(project)


def test_full_disk_is_one_line_and_leaves_nothing(project, capsys, monkeypatch):
    import pyarrow.parquet as pq

    def write_table(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")  # what a writer leaves when the disk fills mid-write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))

    monkeypatch.setattr(pq, "write_table", write_table)
    assert stage("prepare") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: prepare: [Errno 28] No space left on device: 'artifacts/.prepared.partial/")
    assert files(project) == {} and not partials(project)


@contextmanager
def unprivileged():
    """Drop to user nobody while root (root may write anywhere); a normal user is already unprivileged."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_permission_denied_is_one_line_and_leaves_nothing(project, built_testbed, capsys, monkeypatch):
    # A workspace that user nobody can read but not write (pytest's own tmp directories are private to root).
    root = Path(tempfile.mkdtemp())
    try:
        root.chmod(0o755)
        shutil.copytree(built_testbed, root / "artifacts" / "testbed")
        shutil.copy(project / "params.yaml", root / "params.yaml")
        (root / "artifacts").chmod(0o555)
        monkeypatch.chdir(root)
        import tasks.prepare  # noqa: F401 - imported while privileged: the stage itself is what is denied

        with unprivileged():
            code = stage("prepare")
        assert code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == "error: prepare: [Errno 13] Permission denied: 'artifacts/.prepared.partial'"
        assert sorted(path.name for path in (root / "artifacts").iterdir()) == ["testbed"]
    finally:
        (root / "artifacts").chmod(0o755)
        shutil.rmtree(root)
