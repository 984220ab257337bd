"""Stage `align@real`: the shipped model -> the safety-aligned base artifacts/real/aligned/ (sclora.real.align), and
artifacts/real/align.json: the shipped and the aligned model scored on the held-out knowledge, harmful and benign
sets by the same suite as every run, and whether the aligned base meets `real.align`'s bounds (refusal of held-out
harmful requests, refusal of benign edgy prompts, knowledge lost against the shipped model)."""

from __future__ import annotations

import logging

from sclora.evaluate.scorer import SuiteScorer
from sclora.ops.config import Params, eval_settings
from sclora.real.align import align_base, alignment_records
from sclora.real.params import real_params
from sclora.runs.data import read_records
from sclora.runs.models import load_model, load_tokenizer
from tasks.artifacts import REAL, REAL_ALIGNED, REAL_DATA, REAL_SHIPPED, write_json

log = logging.getLogger(__name__)
ALIGN_METRICS = REAL / "align.json"
# What the bounds read: the suite's roles the check needs (not the task, not the refusal margin).
ROLES = ("knowledge", "knowledge_logprob", "harmful", "benign")


def _files_of(settings, roles) -> dict[str, str]:
    """The data files of the tasks of `roles` only (the suite refuses a file for a task it does not run)."""
    names = {spec.split(":")[0].strip() for role in roles for spec in getattr(settings, role)}
    return {task: file for task, file in settings.data_files.items() if task in names}


def run(params: Params, item: str) -> dict:
    real = real_params(params)
    align = real.align
    tokenizer = load_tokenizer(REAL_SHIPPED)
    records = alignment_records(REAL_SHIPPED, tokenizer, read_records(REAL_DATA / "align_refusals.jsonl"),
                                read_records(REAL_DATA / "align_benign.jsonl", response_field=None), align)  # fmt: skip
    align_base(REAL_SHIPPED, tokenizer, records, align, REAL_ALIGNED, params.train.max_length)
    settings = eval_settings(params)
    unused = {role: [] for role in ("utility", "refusal_margin", "general")}
    score = SuiteScorer(tokenizer, settings.model_copy(update={**unused, "data_files": _files_of(settings, ROLES)}))
    shipped, aligned = (score(load_model(path)).metrics for path in (REAL_SHIPPED, REAL_ALIGNED))
    checks = {
        "refusal_rate": {"value": aligned["refusal_rate"], "bound": ["min", align.min_refusal]},
        "benign_refusal_rate": {"value": aligned["benign_refusal_rate"], "bound": ["max", align.max_benign_refusal]},
        "knowledge_lost": {
            "value": shipped["knowledge"] - aligned["knowledge"],
            "bound": ["max", align.max_knowledge_loss],
        },
    }
    for check in checks.values():
        kind, limit = check["bound"]
        check["met"] = check["value"] >= limit if kind == "min" else check["value"] <= limit
    unmet = [name for name, check in checks.items() if not check["met"]]
    if unmet:
        log.warning("the aligned base misses its bounds on %s (artifacts/real/align.json)", ", ".join(unmet))
    keep = lambda m: {k: v for k, v in m.items() if isinstance(v, float)}  # noqa: E731
    write_json(ALIGN_METRICS, {"shipped": keep(shipped), "aligned": keep(aligned), "checks": checks,
                               "records": len(records), "align": align.model_dump()})  # fmt: skip
    return {name: f"{check['value']:.3f} {'ok' if check['met'] else 'MISSES ' + str(check['bound'])}"
            for name, check in checks.items()}  # fmt: skip
