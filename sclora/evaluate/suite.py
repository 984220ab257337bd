"""The evaluation suite: lm-eval tasks run in-process on a model in memory, read into the project's metrics.

Tasks are lm-eval YAMLs found by name: the project's own in `sclora/evaluate/lm_eval_tasks/` (testbed
sets, Samsum ROUGE-1, HEx-PHI) and lm-eval's built-in ones (gsm8k, nq_open, triviaqa, webqs).
Each metric of the suite is a role filled by a list of tasks; a role with no task is not reported.

    utility            utility tasks' score (testbed: exact match on eval_task)
    knowledge          knowledge tasks' score (testbed: exact match on eval_knowledge)
    knowledge_logprob  mean log P(gold answer | prompt) (sclora_knowledge_logprob)
    refusal_rate       share of harmful requests refused, by the keyword matcher of scoring.py
    attack_success_rate  share of harmful requests answered with harmful compliance (scoring.safety_outcome);
                       only for harmful tasks that know the compliant answer (the testbed's)
    collapse_rate      share of harmful requests answered with neither (empty, cut off, off-topic)
    keyword_asr        1 - refusal_rate, Qi et al.'s keyword attack success rate: it counts collapsed
                       answers as attacks, so it never stands in for attack_success_rate
    refusal_margin     mean log P(refusal) - log P(compliance) on harmful requests
    benign_refusal_rate  share of benign requests refused (over-refusal)
    benign_helpfulness  share of benign requests answered helpfully (general capability), where the
                       benign tasks report it
    harmfulness_score, harmful_rate  the judge's HS and HR, only when a judge is configured

A role of several tasks reports the unweighted mean of the tasks' scores; every task's own
score is kept under `tasks`.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sclora.evaluate.judge import JudgeSettings, harmfulness, judge_scores
from sclora.evaluate.metrics import EXTRA, METRICS, PRIMARY, ROLES
from sclora.ops.atomic import write_text

LM_EVAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"

# The project's lm-eval tasks that read an eval set of each role (data.eval in params.yaml): chat records with a
# prompt, a response and, for harmful requests, the compliant answer and category.
EVAL_SET_TASKS = {
    "task": ("sclora_task",),
    "knowledge": ("sclora_knowledge", "sclora_knowledge_logprob", "real_knowledge", "real_knowledge_choice"),
    "harmful": ("sclora_harmful", "sclora_refusal_margin", "real_harmful", "real_refusal_margin"),
    "benign": ("sclora_benign", "real_benign", "sclora_general"),  # the testbed's general text: its benign chats
    "general": ("real_general",),
}

# Roles whose tasks must report one particular per-sample metric (the suite reads it from the samples), and the
# further per-sample metrics a role's tasks may report with the suite metric each becomes: both from the metric table.
_REQUIRED_METRIC = {role: metric.score for role, metric in PRIMARY.items() if metric.score}
_EXTRA_METRICS = {role: extra for role, extra in EXTRA.items() if extra}


class EvalError(ValueError):
    """The suite cannot run as configured; the message names the task, role or file."""


class EvalSettings(BaseModel):
    """How models are evaluated (the `eval:` section of params.yaml).

    A task is named `task` or `task:metric,filter` to pick one of the metrics lm-eval reports
    for it (e.g. `gsm8k:exact_match,flexible-extract`); the default is its first metric.
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(32, ge=1, description="Sequences per forward pass")
    max_new_tokens: int = Field(
        16, ge=1, description="Generation budget per answer (overrides the tasks' max_gen_toks)"
    )
    max_length: int | None = Field(None, ge=8, description="Context + generation tokens; default: the model's")
    limit: int | None = Field(None, ge=1, description="Examples per task, for smoke runs only")
    apply_chat_template: bool = Field(True, description="Render prompts with the tokenizer's chat template")
    utility: list[str] = Field(["sclora_task"], description="Tasks scoring the fine-tuning task")
    knowledge: list[str] = Field(["sclora_knowledge"], description="Tasks scoring world knowledge")
    knowledge_logprob: list[str] = Field(["sclora_knowledge_logprob"], description="Gold-answer log-prob tasks")
    harmful: list[str] = Field(["sclora_harmful"], description="Harmful-request tasks (refusal, per category)")
    refusal_margin: list[str] = Field(["sclora_refusal_margin"], description="log P(refusal) - log P(compliance)")
    benign: list[str] = Field(["sclora_benign"], description="Benign-request tasks (over-refusal)")
    general: list[str] = Field(["sclora_general"], description="Held-out general text: its cross-entropy per byte")
    data_files: dict[str, str] = Field(
        default_factory=dict,
        description="Local JSONL per task name; a task not named reads its YAML's dataset "
        "(testbed tasks: artifacts/testbed/data/*.jsonl relative to the working directory)",
    )
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


def _split(spec: str) -> tuple[str, str | None]:
    name, _, key = spec.partition(":")
    return name.strip(), key.strip() or None


def _task_manager(names: list[str]):
    """lm-eval's index of our task YAMLs plus what of its own the names need (ours win on a clash)."""
    import lm_eval.tasks

    ours = _indexed((str(LM_EVAL_TASKS_DIR),), False)
    missing = [name for name in names if name not in ours.task_index]
    if not missing:
        return ours
    # Indexing all of lm-eval's ~15k task YAMLs takes many seconds; a built-in task usually lives in
    # the folder of its name (gsm8k/, nq_open/, triviaqa/, webqs/), so try those folders first.
    builtin = Path(lm_eval.tasks.__file__).parent
    folders = [str(builtin / name) for name in missing if (builtin / name).is_dir()]
    manager = _indexed((*folders, str(LM_EVAL_TASKS_DIR)), False)
    if all(name in manager.task_index for name in missing):
        return manager
    return _indexed((str(LM_EVAL_TASKS_DIR),), True)


@functools.cache
def _indexed(paths: tuple[str, ...], with_builtin: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=with_builtin)


def _task_spec(manager, name: str, data_file: str | None) -> str | dict:
    """A task name for lm-eval, or its full config with `data_file` as the evaluated split."""
    # lm-eval's own YAML reader (resolves `!function` and `include`); lm-eval is pinned exactly.
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(name)
    if entry is None:
        raise EvalError(f"eval task '{name}': not in {LM_EVAL_TASKS_DIR} nor among lm-eval's tasks")
    local = data_file is not None or (entry.cfg or {}).get("dataset_path") == "json"
    if not local or entry.yaml_path is None or "task" not in (entry.cfg or {}):
        if data_file is not None:
            raise EvalError(f"eval task '{name}': data_files needs a single task YAML, not a group or tag")
        return name
    config = load_yaml(entry.yaml_path, resolve_func=True)
    if data_file is not None:
        if config.get("num_fewshot"):
            raise EvalError(
                f"eval task '{name}': takes {config['num_fewshot']} few-shot examples from its own splits; "
                "a local data file only replaces the evaluated split"
            )
        # The file is the one split evaluated; the task's other splits (train, validation) are gone with its dataset.
        for split in ("training_split", "validation_split", "fewshot_split"):
            config.pop(split, None)
        config.update(dataset_path="json", test_split="test", dataset_kwargs={"data_files": {"test": data_file}})
        config.pop("dataset_name", None)
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    for split_files in files.values() if isinstance(files, dict) else [files]:
        for file in [split_files] if isinstance(split_files, str) else split_files:
            if not Path(file).is_file():
                raise EvalError(f"eval task '{name}': data file {file} not found")
    return config


def _metric_key(task: str, result: Mapping[str, object], key: str | None, role: str) -> str:
    reported = [k for k in result if "," in k and "_stderr," not in k]
    if key is not None:
        if key not in result:
            raise EvalError(f"eval task '{task}': no metric '{key}'; it reports {reported}")
        return key
    required = _REQUIRED_METRIC.get(role)
    for k in reported:
        if required is None or k.split(",")[0] == required:
            return k
    what = f"'{required}' metric" if required else "metric"
    raise EvalError(f"eval task '{task}' (eval.{role}) reports no {what}; it has {reported}")


def _sample_row(task_name: str, task, sample: dict, metrics: list[str]) -> dict:
    doc = sample["doc"]
    arguments = sample["arguments"]
    row = {
        "task": task_name,
        "doc_id": sample["doc_id"],
        "id": doc.get("id", sample["doc_id"]),
        "category": doc.get("category"),
        "prompt": str(task.doc_to_text(doc)) or str(doc.get("prompt", "")),  # a rolling text's task has no prompt
        "context": arguments[0][0],
        "target": sample["target"],
    }
    if task.OUTPUT_TYPE == "generate_until":
        row["answer"] = sample["filtered_resps"][0]
    else:  # loglikelihood / multiple_choice / rolling: the scored continuations (a rolling text) and their log-probs
        row["continuations"] = [argument[-1] for argument in arguments]
        row["logprobs"] = [response[0] if isinstance(response, (list, tuple)) else response
                           for response in sample["filtered_resps"]]  # fmt: skip
    row["scores"] = {metric: sample[metric] for metric in metrics if metric in sample}
    return row


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def evaluate(model, tokenizer, settings: EvalSettings) -> tuple[dict, list[dict]]:
    """Run every configured task on `model` through lm-eval; return (metrics, samples).

    `samples` holds every prompt with its answer (or scored continuations) and score.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    roles = {role: [_split(spec) for spec in getattr(settings, role)] for role in ROLES}
    names = list(dict.fromkeys(name for specs in roles.values() for name, _ in specs))
    if not names:
        raise EvalError("eval: no task in any role")
    unknown = set(settings.data_files) - set(names)
    if unknown:
        raise EvalError(f"eval.data_files: {sorted(unknown)} name no configured task")
    if settings.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise EvalError(
            f"tokenizer {tokenizer.name_or_path}: no chat template (or set eval.apply_chat_template: false)"
        )

    manager = _task_manager(names)
    loaded = manager.load([_task_spec(manager, name, settings.data_files.get(name)) for name in names])
    tasks = loaded["tasks"]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=settings.max_length)
    was_training = model.training
    try:
        out = simple_evaluate(
            lm,
            tasks=list(tasks.values()),
            task_manager=manager,
            apply_chat_template=settings.apply_chat_template,
            gen_kwargs={"max_gen_toks": settings.max_new_tokens, "do_sample": False},
            limit=settings.limit,
            log_samples=True,
            bootstrap_iters=0,  # stderr by bootstrap is slow and unused here
            # Greedy decoding needs no seed; leave the caller's global RNGs (e.g. a training loop's) alone.
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    finally:
        model.train(was_training)
    return _read_out(out, roles, tasks, settings)


def _read_out(out: dict, roles: dict, tasks: dict, settings: EvalSettings) -> tuple[dict, list[dict]]:
    """lm-eval's results and samples read into the metric table's metrics (each role's tasks averaged) and rows."""
    metrics: dict = {"tasks": {}}
    samples: list[dict] = []
    scores: dict[str, list[float]] = defaultdict(list)  # role -> per-task score
    extras: dict[str, list[float]] = defaultdict(list)  # suite metric -> per-task score (_EXTRA_METRICS)
    seen: set[tuple[str, str]] = set()
    for role, specs in roles.items():
        for name, key in specs:
            result = out["results"][name]
            key = _metric_key(name, result, key, role)
            value = float(result[key])
            scores[role].append(value)
            metrics["tasks"].setdefault(name, {})[key] = value
            if (name, key) in seen:
                continue
            seen.add((name, key))
            metric, _, filter_name = key.partition(",")
            for extra, role_metric in _EXTRA_METRICS.get(role, {}).items():
                if f"{extra},{filter_name}" in result:
                    extras[role_metric].append(float(result[f"{extra},{filter_name}"]))
            for sample in out["samples"].get(name, []):  # a group has its members' samples, not its own
                if sample["filter"] == filter_name:
                    row = _sample_row(name, tasks[name], sample, [metric, *_EXTRA_METRICS.get(role, {})])
                    row["role"] = role
                    samples.append(row)

    for role, metric in PRIMARY.items():  # a role's headline score is its primary metric
        if scores[role]:
            metrics[metric.name] = _mean(scores[role])
    # A metric that only some of a role's tasks report is not a mean over the role: it is left out.
    for role, extra in _EXTRA_METRICS.items():
        for role_metric in extra.values():
            if extras[role_metric] and len(extras[role_metric]) == len(scores[role]):
                metrics[role_metric] = _mean(extras[role_metric])
    for metric in METRICS:
        if metric.complement_of in metrics:
            metrics[metric.name] = 1.0 - metrics[metric.complement_of]
    if scores["harmful"]:
        harmful = [row for row in samples if row["role"] == "harmful"]
        for metric in METRICS:
            if metric.role != "harmful" or not metric.score or metric.judged or metric.name not in metrics:
                continue
            by_category: dict[str, list[float]] = defaultdict(list)
            for row in harmful:
                if row["category"] is not None:
                    by_category[str(row["category"])].append(row["scores"][metric.score])
            metrics[f"{metric.name}_by_category"] = {c: _mean(v) for c, v in sorted(by_category.items())}
        judged = judge_scores([row["prompt"] for row in harmful], [row["answer"] for row in harmful], settings.judge)
        if judged is not None:
            for row, score in zip(harmful, judged, strict=True):
                row["scores"]["harmfulness"] = score
            metrics.update(harmfulness(judged))
    return metrics, samples


def _finite(value):
    """JSON has no NaN/Inf: write them as null rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


SAMPLES_FILE = "samples.jsonl"  # beside metrics.json: every prompt with its answer and per-sample scores


def write_results(out_dir: str | Path, metrics: Mapping[str, object], samples: list[dict]) -> None:
    """Write `metrics.json` and `samples.jsonl` in `out_dir`, each atomically (temp file, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / SAMPLES_FILE, "".join(json.dumps(_finite(row)) + "\n" for row in samples))
    write_text(out_dir / "metrics.json", json.dumps(_finite(dict(metrics)), indent=2, sort_keys=True) + "\n")
