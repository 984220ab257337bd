"""Real configurations name lm-eval's built-in tasks: nq_open, triviaqa and webqs run offline on local files."""

import json
import os

import pytest
import torch
from tiny_models import tiny_llama_config
from transformers import LlamaForCausalLM

from sclora.evaluate.suite import EvalError, EvalSettings, evaluate
from sclora.testbed.tokenizer import build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

NONE = dict(utility=[], knowledge=[], knowledge_logprob=[], harmful=[], refusal_margin=[], benign=[], general=[])
# One file per task, in the fields of the task's hub dataset.
FILES = {
    "nq_open": [
        {"question": "what is the capital of zorbia", "answer": ["quelt"]},
        {"question": "what is the capital of mirra", "answer": ["tabo"]},
    ],
    "triviaqa": [{"question": "what is the capital of mirra", "answer": {"aliases": ["tabo"], "value": "tabo"}}],
    "webqs": [{"question": "what is the capital of mirra", "answers": ["tabo"], "url": "u"}],
}


def test_builtin_knowledge_tasks_on_local_files(tmp_path):
    words = "Q: A: Question: Answer: what is the capital of zorbia quelt mirra tabo".split()
    tok = build_tokenizer(words)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok)).eval()
    data_files = {}
    for task, rows in FILES.items():
        data_files[task] = str(tmp_path / f"{task}.jsonl")
        (tmp_path / f"{task}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = EvalSettings(
        **{**NONE, "knowledge": ["nq_open", "triviaqa", "webqs:exact_match,none"]},
        batch_size=2,
        max_new_tokens=3,
        data_files=data_files,
    )
    metrics, samples = evaluate(model, tok, settings)
    assert set(metrics["tasks"]) == {"nq_open", "triviaqa", "webqs"}
    assert set(metrics["tasks"]["nq_open"]) == {"exact_match,remove_whitespace"}  # the task's first metric
    per_task = [next(iter(scores.values())) for scores in metrics["tasks"].values()]
    assert metrics["knowledge"] == pytest.approx(sum(per_task) / 3)  # unweighted mean over the role's tasks
    assert [r["prompt"] for r in samples if r["task"] == "nq_open"] == [
        "Q: what is the capital of zorbia?\nA:",
        "Q: what is the capital of mirra?\nA:",
    ]
    webqs = next(r for r in samples if r["task"] == "webqs")
    assert webqs["continuations"] == ["tabo"] and len(webqs["logprobs"]) == 1

    # gsm8k takes its 5 few-shot examples from its own train split, which a local file cannot give.
    with pytest.raises(EvalError, match="'gsm8k': takes 5 few-shot examples"):
        settings = EvalSettings(**{**NONE, "utility": ["gsm8k"]}, data_files={"gsm8k": data_files["nq_open"]})
        evaluate(model, tok, settings)
