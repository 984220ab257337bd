"""Bad input through the stage command (`python -m tasks <stage>`): one line naming the problem and where,
exit code 1, no traceback unless --debug, and nothing written under artifacts/.

Most cases run the command's `main(argv)` in this process (a stage subprocess pays ~5 s of imports);
`test_exit_code_and_one_line_from_a_real_process` runs one through a real `python -m tasks`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file
from stage_project import files, run_stage, stage

DATA = Path("artifacts/testbed/data")
BASE = Path("artifacts/testbed/base")
GOOD = '{"id": "a", "prompt": "hi", "response": "ok"}\n'


def _data(name: str, content: str | bytes) -> str:
    """A data file in the project, and the override pointing the benign task's source at it."""
    path = Path("bad") / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return f"data.sources.finetune_benign.path={path}"


def _model_copy(change) -> str:
    """A copy of the base model changed by `change(directory)`, and the override selecting it."""
    target = Path("models") / "changed"
    shutil.copytree(BASE, target)
    change(target)
    return f"model.path={target}"


def _no_chat_template(directory: Path) -> None:
    (directory / "chat_template.jinja").unlink()
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def _nan_weights(directory: Path) -> None:
    tensors = load_file(directory / "model.safetensors")
    name = next(key for key in tensors if key.endswith("embed_tokens.weight"))
    tensors[name][:] = float("inf")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


# (case, stages run first, the failing command, setup returning extra -S overrides, expected text in the error)
CASES = [
    # params
    ("unknown key", [], ["prepare"], lambda: ["adapter.rnak=8"], "unknown key 'adapter.rnak'"),
    ("wrong type", [], ["prepare"], lambda: ["train.batch_size=many"], "train.batch_size: Input should be a valid"),
    ("beta outside [0, 1]", [], ["prepare"], lambda: ["solve.betas=[1.5]"], "solve.betas.0"),
    ("rank 0", [], ["prepare"], lambda: ["adapter.rank=0"], "adapter.rank: Input should be greater than"),
    ("no sclora variant", [], ["prepare"], lambda: ["train.sclora_variants=[]"], "train.sclora_variants: List should"),
    ("unknown method", [], ["prepare"], lambda: ["train.methods=[dora]"], "train.methods.0: Input should be"),
    ("learning rate 0", [], ["prepare"], lambda: ["train.lr=0"], "train.lr: Input should be greater than 0"),
    (
        "negative method lr",
        [],
        ["prepare"],
        lambda: ["train.learning_rates={pissa: -0.1}"],
        "train.learning_rates.pissa",
    ),
    (
        "rank larger than a layer",
        ["prepare", "capture"],
        ["solve", "0.8"],
        lambda: ["adapter.rank=40"],
        "rank 40 exceeds min(d_out, d_in) = 32",
    ),
    (
        "rank larger than a layer (baseline)",
        ["prepare"],
        ["train", "benign-pissa-0"],
        lambda: ["adapter.rank=40"],
        "rank 40 exceeds min(d_out, d_in) = 32",
    ),
    (
        "too few samples for the rank",
        ["prepare", "capture"],
        ["solve", "0.8"],
        lambda: ["capture.samples_pos=2", "capture.samples_neg=1", "adapter.rank=4"],
        "rank 4 exceeds the 3 samples that enter M(beta=0.8)",
    ),
    # data
    (
        "missing file",
        [],
        ["prepare"],
        lambda: ["data.sources.finetune_benign.path=bad/none.jsonl"],
        "bad/none.jsonl: file not found",
    ),
    ("empty file", [], ["prepare"], lambda: [_data("empty.jsonl", "")], "bad/empty.jsonl: empty file"),
    (
        "malformed JSONL line",
        [],
        ["prepare"],
        lambda: [_data("broken.jsonl", GOOD + '{"id": "b", "prompt": \n')],
        "bad/broken.jsonl: line 2: malformed JSON",
    ),
    (
        "missing field",
        [],
        ["prepare"],
        lambda: [_data("fields.jsonl", GOOD + '{"id": "b", "prompt": "x"}\n')],
        "bad/fields.jsonl: line 2: missing field 'response'",
    ),
    (
        "field not text",
        [],
        ["prepare"],
        lambda: [_data("types.jsonl", '{"id": 1, "prompt": 5, "response": "x"}\n')],
        "bad/types.jsonl: line 1: field 'prompt' is int, not text",
    ),
    (
        "non-UTF-8",
        [],
        ["prepare"],
        lambda: [_data("latin1.jsonl", (GOOD + '{"prompt": "café"}\n').encode("latin-1"))],
        "bad/latin1.jsonl: line 2: not valid UTF-8",
    ),
    (
        "duplicate ids",
        [],
        ["prepare"],
        lambda: [_data("dup.jsonl", GOOD + GOOD)],
        "bad/dup.jsonl: line 2: duplicate id 'a' (first at line 1)",
    ),
    ("unknown format", [], ["prepare"], lambda: [_data("data.txt", GOOD)], "bad/data.txt: unknown format '.txt'"),
    (
        "unknown source of a task",
        [],
        ["prepare"],
        lambda: ["data.finetune={benign: nowhere}"],
        "data: finetune.benign: unknown source 'nowhere'",
    ),
    # model
    ("missing model path", [], ["prepare"], lambda: ["model.path=models/none"], "models/none: no model directory"),
    ("no chat template", [], ["prepare"], lambda: [_model_copy(_no_chat_template)], "no chat template"),
    (
        "target module that does not exist",
        ["prepare"],
        ["capture"],
        lambda: ["adapter.target_modules=[qkv_proj]"],
        "target module 'qkv_proj' matches no module in the model",
    ),
    (
        "target module that is not linear",
        ["prepare"],
        ["capture"],
        lambda: ["adapter.target_modules=[input_layernorm]"],
        "is a LlamaRMSNorm, not nn.Linear or Conv1D",
    ),
    # capture
    (
        "NaN/Inf activations",
        ["prepare"],
        ["capture"],
        lambda: [_model_copy(_nan_weights)],
        "input has NaN or Inf on real tokens",
    ),
    (
        "capture before prepare",
        [],
        ["capture"],
        lambda: [],
        "prepared source 'preserve_safety' not found; run the prepare",
    ),
    # stage items and upstream outputs
    ("unknown run", [], ["train", "benign-dora-0"], lambda: [], "unknown run 'benign-dora-0'"),
    ("beta not in the params", [], ["solve", "0.3"], lambda: [], "beta 0.3 is not in solve.betas [0.8]"),
    ("register before training", [], ["register"], lambda: [], "run.json: run benign-lora-0 not found"),
]


@pytest.mark.parametrize(("before", "command", "setup", "expected"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(project, capsys, before, command, setup, expected):
    overrides = [arg for override in setup() for arg in ("-S", override)]
    for name in before:
        assert stage(name, *overrides) == 0
    capsys.readouterr()
    written = files(project)
    assert stage(*command, *overrides) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {command[0]}: ") and expected in lines[0], lines[0]
    assert files(project) == written  # nothing new, nothing changed, nothing half-written
    assert not [path for path in Path("artifacts").rglob(".*") if path.name.endswith((".partial", ".old"))]


def test_debug_shows_the_traceback(project):
    with pytest.raises(ValueError, match="unknown run 'benign-dora-0'"):
        stage("train", "benign-dora-0", "--debug")


def test_long_samples_are_truncated_with_a_count(project, caplog):
    path = Path("bad/long.jsonl")
    path.parent.mkdir()
    words = " ".join(["bokav"] * 40)
    path.write_text(GOOD + json.dumps({"id": "b", "prompt": words, "response": words}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert stage("prepare", "-S", f"data.sources.finetune_benign.path={path}", "-S", "train.max_length=16") == 0
    assert "data.sources.finetune_benign: 1 of 2 samples longer than max_length=16 were truncated" in caplog.text
    import pyarrow.parquet as pq

    lengths = [len(ids) for ids in pq.read_table("artifacts/prepared/finetune_benign.parquet")["input_ids"].to_pylist()]
    assert max(lengths) == 16 and min(lengths) < 16


def test_exit_code_and_one_line_from_a_real_process(project):
    Path("bad").mkdir()
    Path("bad/broken.jsonl").write_text(GOOD + "{not json\n")
    result = run_stage(project, "prepare", "-S", "data.sources.finetune_benign.path=bad/broken.jsonl")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: prepare: bad/broken.jsonl: line 2: malformed JSON")
    assert "Traceback" not in result.stderr
    assert not Path("artifacts/prepared").exists()


def test_corrupt_upstream_output_is_named(project, capsys):
    assert stage("prepare") == 0
    Path("artifacts/prepared/fingerprints.json").write_text('{"benign')
    assert stage("train", "benign-lora-0") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: train: artifacts/prepared/fingerprints.json: prepared data fingerprints is not valid")
    assert not Path("artifacts/runs").exists()


def test_promoting_an_unknown_version_is_one_line(project, capsys):
    import mlflow

    from flows.cli import main
    from sclora.ops import tracking

    params = yaml.safe_load(Path("params.yaml").read_text())
    name = params["tracking"]["registered_model"]
    tracking.use_store(params["tracking"]["uri"])
    mlflow.MlflowClient().create_registered_model(name)
    assert main(["promote", name, "7", "--params", "params.yaml"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: promote: registered model '{name}' has no version 7"]
