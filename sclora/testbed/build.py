"""Build the whole testbed into one directory, atomically, and measure its base model.

    out_dir/base/              model + tokenizer (save_pretrained; AutoModelForCausalLM / AutoTokenizer)
    out_dir/data/<name>.jsonl  the eight datasets of `sclora.testbed.world`
    out_dir/base_metrics.json  the saved base model measured on the eval sets (sclora.testbed.scorer.ExactScorer)
    out_dir/params.json        the TestbedParams it was built from

Everything is built in a temporary sibling directory and renamed into place at the
end, so a killed build leaves the previous testbed (or nothing), never half of one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from sclora.ops.atomic import atomic_dir
from sclora.runs.data import read_records
from sclora.testbed.check import check_build
from sclora.testbed.model import build_model
from sclora.testbed.params import TestbedParams
from sclora.testbed.pretrain import pretrain
from sclora.testbed.scorer import ExactScorer
from sclora.testbed.tokenizer import build_tokenizer
from sclora.testbed.world import (
    DATASETS,
    EVAL_SETS,
    build_datasets,
    build_world,
    dataset_file,
    pretraining_sources,
    validation_records,
    vocabulary,
)

log = logging.getLogger(__name__)


def build_testbed(params: TestbedParams, out_dir: Path) -> dict:
    """Build world, datasets, tokenizer and pretrained model into `out_dir`; returns the base model's metrics."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir) as staging:
        world = build_world(params)
        datasets = build_datasets(world, params)
        sources = pretraining_sources(world, params)
        datasets["val_task"] = validation_records(world, params, datasets, sources)
        tokenizer = build_tokenizer(vocabulary(*datasets.values(), *sources.values()))
        model = build_model(params, tokenizer)
        log.info("testbed model: %d parameters, vocabulary %d", model.num_parameters(), len(tokenizer))
        losses = pretrain(model, tokenizer, sources, params)
        model.save_pretrained(staging / "base")
        tokenizer.save_pretrained(staging / "base")
        data_dir = staging / "data"
        data_dir.mkdir()
        for name in DATASETS:
            with open(dataset_file(data_dir, name), "w", encoding="utf-8") as file:
                file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in datasets[name])
        (staging / "params.json").write_text(json.dumps(params.model_dump(), indent=2) + "\n")
        base_metrics = measure_base(staging / "base", data_dir, batch_size=params.eval_batch_size)
        base_metrics["parameters"] = model.num_parameters()
        base_metrics["vocabulary"] = len(tokenizer)
        base_metrics["pretrain_final_loss"] = losses[-1]["loss"] if losses else None
        (staging / "base_metrics.json").write_text(json.dumps(base_metrics, indent=2, sort_keys=True) + "\n")
    log.info("testbed built in %.0f s at %s", time.perf_counter() - started, out_dir)
    failed = [key for key, ok in base_metrics["meets_thresholds"].items() if not ok]
    if failed:
        log.warning("the base model misses its thresholds on %s", ", ".join(failed))
    return base_metrics


def measure_base(model_dir: Path, data_dir: Path, batch_size: int = 64) -> dict:
    """The model saved in `model_dir` (reloaded from disk) measured on the eval sets in `data_dir`.

    Greedy answers scored by the evaluation suite's rules (sclora.testbed.scorer), and
    whether they meet what a base model must show (the `base` rows of REQUIREMENTS).
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sets = {role: read_records(dataset_file(data_dir, name)) for role, name in EVAL_SETS.items()}
    base_metrics: dict = ExactScorer(tokenizer, sets, batch_size=batch_size)(model).metrics
    base_metrics["sizes"] = {
        path.stem: sum(1 for _ in open(path, encoding="utf-8")) for path in sorted(Path(data_dir).glob("*.jsonl"))
    }
    base_metrics["meets_thresholds"] = {
        key.split(".", 1)[1]: check["met"] for key, check in check_build({"base": base_metrics}).items()
    }
    return base_metrics
