"""Stage `real_data@real`: the datasets read by `fetch` and the task's generated splits -> the real data's roles,
disjoint (sclora.real.roles), as artifacts/real/data/<role>.jsonl, with manifest.json: each role's rows and the
checked absence of overlaps between what is trained on and what is measured, and the refusal matcher's agreement
with people's labels (sclora.evaluate.agreement)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from sclora.evaluate.agreement import agreement
from sclora.evaluate.scoring import is_refusal
from sclora.ops.config import Params
from sclora.real.params import real_params
from sclora.real.roles import build_roles, overlaps
from sclora.real.task import task_splits
from tasks.artifacts import REAL_DATA, REAL_DATASETS, read_json, staged_dir, write_json

COUNTRIES = "countries"


def run(params: Params, item: str) -> dict:
    real = real_params(params)
    fetched = read_json(REAL_DATASETS / "manifest.json", "the fetched datasets (stage fetch)")["datasets"]
    datasets = {name: pq.read_table(REAL_DATASETS / f"{name}.parquet").to_pylist() for name in fetched}
    roles = build_roles(real, datasets, datasets.pop(COUNTRIES), task_splits(real.task))
    with staged_dir(REAL_DATA) as staging:
        for role, records in roles.items():
            with open(staging / f"{role}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        # The refusal matcher against people's labels: what refusal_rate means on real answers.
        matcher = agreement(roles["refusal_labels"], is_refusal)
        rows = {role: len(records) for role, records in roles.items()}
        manifest = {"rows": rows, "overlaps": overlaps(roles), "sources": fetched, "task": real.task.model_dump(),
                    "refusal_agreement": matcher}  # fmt: skip
        write_json(staging / "manifest.json", manifest)
    shown = {key: matcher[key] for key in ("n", "accuracy", "precision", "recall")}
    return {"rows": rows, "refusal_agreement": shown}
