"""Stage `capture`: token-summed layer inputs of D- and of each task's D+ -> artifacts/capture/{neg, pos-<task>}.

D- is the union of params.data.preserve (the first capture.samples_neg after a seeded
shuffle), D+ each task's source (capture.samples_pos likewise). One capture serves every
beta and method. The outputs are `persist: true` in dvc.yaml: a killed capture resumes
from its finished shards. A directory captured from other samples or settings is
replaced, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow.parquet as pq

from sclora.method.gather import capture
from sclora.ops.config import Params
from sclora.runs.data import ensure_pad_token
from sclora.runs.inputs import sample as capture_sample
from sclora.runs.models import load_tokenizer
from sclora.runs.resume import claim
from tasks.artifacts import CAPTURE, NEG, load_base, pos_capture_dir, prepared_path


def run(params: Params) -> dict:
    tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
    ensure_pad_token(tokenizer)
    model = load_base(params)
    wanted = {CAPTURE / NEG: sample(params.data.preserve, params.capture.samples_neg)}
    for task, source in params.data.finetune.items():
        wanted[pos_capture_dir(task)] = sample([source], params.capture.samples_pos)
    for stale in CAPTURE.glob("*"):
        if stale not in wanted and stale.is_dir():  # a task the params no longer name
            shutil.rmtree(stale)
    summary = {}
    for out_dir, rows in wanted.items():
        request = {
            "samples": _ids_hash(rows),
            "model": params.model.model_dump(),
            "target_modules": params.adapter.target_modules,
            "covariance": params.capture.covariance,
            "samples_per_shard": params.capture.samples_per_shard,
            "max_length": params.train.max_length,
        }
        started = not claim(out_dir, request)  # a capture of other samples or settings starts over
        try:
            stats = capture(
                model,
                _batches(tokenizer, rows, params.capture.batch_size),
                params.adapter.target_modules,
                covariance=params.capture.covariance,
                progress=False,
                out_dir=out_dir,
                samples_per_shard=params.capture.samples_per_shard,
            )
        except Exception:
            if started:  # a capture that failed (bad targets, NaN) leaves nothing; a killed one keeps its shards
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        summary[out_dir.name] = {"samples": stats.n_samples, "tokens": stats.n_tokens}
    return summary


def sample(sources: list[str], count: int) -> list[dict]:
    """The first `count` rows of the sources' union after a seeded shuffle (fewer if there are fewer)."""
    rows = []
    for source in sources:
        path = prepared_path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prepared source '{source}' not found; run the prepare stage")
        rows += [{"source": source, **row} for row in pq.read_table(path, columns=["id", "input_ids"]).to_pylist()]
    return capture_sample(rows, count)


def _batches(tokenizer, rows: list[dict], batch_size: int) -> list[dict]:
    # The prepared token ids, padded: capture sees exactly what prepare tokenised.
    return [
        tokenizer.pad(
            [{"input_ids": row["input_ids"]} for row in rows[start : start + batch_size]],
            padding=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        for start in range(0, len(rows), batch_size)
    ]


def _ids_hash(rows: list[dict]) -> str:
    text = json.dumps([[row["source"], row["id"], row["input_ids"]] for row in rows])
    return hashlib.sha256(text.encode()).hexdigest()
