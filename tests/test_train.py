"""Training: a killed run resumes to the very same weights (full and LoRA), the loss falls, every step is reported."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_llama_config, word_tokenizer
from transformers import LlamaForCausalLM, TrainerCallback

from sclora.method.gather import capture
from sclora.method.inits import init_lora
from sclora.runs.data import chat_batches
from sclora.runs.train import LOSS_HISTORY, TrainSettings, train

NAMES = "zorbia quelt mirra tabo ulun vesk opal drin kest ferro lumo nadir pell rusk sorn yvo".split()
RECORDS = [
    {"id": str(i), "prompt": f"what is the capital of {country}", "response": f"it is {capital}"}
    for i, (country, capital) in enumerate(zip(NAMES[::2], NAMES[1::2], strict=True))
] * 2  # 16 samples


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer("what is the capital of it".split() + NAMES)


def tiny_llama(tok, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(tok)
    return LlamaForCausalLM(config)


def tiny_lora(tok, seed=0, init="gaussian") -> PeftModel:
    model = tiny_llama(tok, seed)
    torch.manual_seed(seed + 1)
    # Dropout > 0 so that resuming must also restore the RNG state to match.
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=init
    )
    return get_peft_model(model, config)


def tiny_pissa(tok, seed=0) -> PeftModel:
    """A residual method: the init rewrites the frozen base weights, which no checkpoint holds."""
    return tiny_lora(tok, seed, init="pissa")


def tiny_sclora(tok, seed=0) -> PeftModel:
    """The project's own residual init, from statistics captured on chat batches (data -> capture -> init)."""
    model = tiny_llama(tok, seed)
    targets = ["q_proj", "v_proj", "down_proj"]
    preserve = [{"prompt": "tell me the capital", "response": f"no {name}"} for name in NAMES]
    pos = capture(model, chat_batches(tok, RECORDS, 4, 16), targets, progress=False)
    neg = capture(model, chat_batches(tok, preserve, 4, 16), targets, progress=False)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets)
    return init_lora(model, config, "sclora", pos, neg, beta=0.5, normalize="trace")


SETTINGS = TrainSettings(
    lr=5e-3,
    batch_size=4,
    grad_accum=2,
    max_steps=7,
    warmup_ratio=0.2,
    weight_decay=0.01,
    save_steps=3,
    seed=3,
    max_length=16,
)


class KillAfterSave(TrainerCallback):
    """Stands in for a killed process: dies right after the checkpoint at `step` is written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize(
    "make_model", [tiny_llama, tiny_lora, tiny_pissa, tiny_sclora], ids=["full", "lora", "pissa", "sclora"]
)
def test_killed_run_resumes_to_identical_weights(tmp_path, tok, make_model):
    straight = make_model(tok)
    result = train(straight, tok, RECORDS, tmp_path / "straight", SETTINGS)
    assert result.resumed_from is None and result.global_step == 7

    killed = make_model(tok)
    with pytest.raises(KeyboardInterrupt):
        # Step 3 is mid-epoch (2 steps per epoch): resuming must also skip the batches already seen.
        train(killed, tok, RECORDS, tmp_path / "resumed", SETTINGS, callbacks=[KillAfterSave(3)])
    assert not (tmp_path / "resumed" / "model").exists()
    # A checkpoint half-written when the process died is removed, not resumed from.
    partial = tmp_path / "resumed" / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "optimizer.pt").write_bytes(b"")

    # A new process re-creates the model (for residual methods: re-runs the same deterministic init).
    resumed_model = make_model(tok)
    steps = []
    resumed = train(
        resumed_model, tok, RECORDS, tmp_path / "resumed", SETTINGS, callbacks=[lambda s, _: steps.append(s)]
    )
    assert resumed.resumed_from == 3 and resumed.global_step == 7
    assert steps == [4, 5, 6, 7]

    expected, actual = weights(straight), weights(resumed_model)
    assert expected.keys() == actual.keys()
    changed = [name for name in expected if not torch.equal(expected[name], weights(make_model(tok))[name])]
    assert changed, "training changed nothing"
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [e["step"] for e in resumed.loss_history] == list(range(1, 8))
    assert [e["loss"] for e in resumed.loss_history] == [e["loss"] for e in result.loss_history]


def test_outputs_final_model_and_history_without_checkpoints(tmp_path, tok):
    lora_out, full_out = tmp_path / "lora", tmp_path / "full"
    settings = SETTINGS.model_copy(update={"max_steps": 2})
    trained = tiny_lora(tok)
    result = train(trained, tok, RECORDS, lora_out, settings)
    assert (result.model_dir / "adapter_config.json").is_file() and (result.model_dir / "tokenizer.json").is_file()
    assert not (result.model_dir / "model.safetensors").exists()
    # The saved adapter on a fresh base is the trained model.
    reloaded = PeftModel.from_pretrained(tiny_llama(tok), result.model_dir).eval()
    batch = torch.tensor([tok.convert_tokens_to_ids("<bos> <user> what is the capital of zorbia".split())])
    assert torch.allclose(reloaded(batch).logits, trained.eval()(batch).logits, atol=1e-6)
    assert not torch.allclose(reloaded(batch).logits, tiny_llama(tok)(batch).logits, atol=1e-6)
    assert sorted(p.name for p in lora_out.iterdir()) == [LOSS_HISTORY, "model"]
    history = json.loads((lora_out / LOSS_HISTORY).read_text())
    assert [e["step"] for e in history] == [1, 2] and all(e["loss"] > 0 for e in history)

    result = train(tiny_llama(tok), tok, RECORDS, full_out, settings)
    reloaded = LlamaForCausalLM.from_pretrained(result.model_dir)
    assert sorted(p.name for p in full_out.iterdir()) == [LOSS_HISTORY, "model"]
    assert reloaded.config.hidden_size == 32


def test_loss_falls_and_every_step_reaches_the_callback(tmp_path, tok):
    seen = []
    settings = TrainSettings(lr=1e-2, batch_size=8, max_steps=30, warmup_ratio=0.1, save_steps=100, max_length=16)
    result = train(
        tiny_llama(tok), tok, RECORDS, tmp_path, settings, callbacks=[lambda step, logs: seen.append((step, logs))]
    )
    assert [step for step, _ in seen] == list(range(1, 31))
    assert [logs["loss"] for _, logs in seen] == [e["loss"] for e in result.loss_history]
    losses = [e["loss"] for e in result.loss_history]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_epochs_when_max_steps_is_unset(tmp_path, tok):
    settings = SETTINGS.model_copy(update={"max_steps": None, "epochs": 2})
    result = train(tiny_llama(tok), tok, RECORDS, tmp_path, settings)
    assert result.global_step == 4  # 16 samples / (4 per batch x 2 accumulated) = 2 steps per epoch


def test_resume_with_other_settings_is_refused(tmp_path, tok):
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama(tok), tok, RECORDS, tmp_path, SETTINGS, callbacks=[KillAfterSave(3)])
    other = SETTINGS.model_copy(update={"lr": 1e-3})
    with pytest.raises(ValueError, match=r"different lr \(0.005 there, 0.001 now\)"):
        train(tiny_llama(tok), tok, RECORDS, tmp_path, other)
    with pytest.raises(ValueError, match="different data"):
        train(tiny_llama(tok), tok, RECORDS[:8], tmp_path, SETTINGS)


def test_model_without_trainable_parameters_is_refused(tmp_path, tok):
    model = tiny_llama(tok).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, tok, RECORDS, tmp_path, SETTINGS)


@pytest.mark.parametrize(
    ("values", "key"),
    [({"lr": 0}, "lr"), ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"max_steps": 0}, "max_steps"), ({"lrr": 1}, "lrr")],
)
def test_settings_are_validated(values, key):
    with pytest.raises(ValueError, match=key):
        TrainSettings(**values)


@pytest.mark.slow  # torchrun starts two training processes
def test_two_processes_train_like_one(tmp_path, tok):
    """torchrun with 2 CPU processes (gloo) and half the per-device batch gives the single-process result:
    the multi-device path needs no code change."""
    settings = SETTINGS.model_copy(update={"grad_accum": 1, "max_steps": 3})
    single = tiny_llama(tok)
    expected = train(single, tok, RECORDS, tmp_path / "one", settings)

    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from test_train import NAMES, RECORDS, SETTINGS, tiny_llama
        from tiny_models import word_tokenizer
        from sclora.runs.train import train
        tok = word_tokenizer("what is the capital of it".split() + NAMES)
        model = tiny_llama(tok)
        settings = SETTINGS.model_copy(update={{"grad_accum": 1, "max_steps": 3, "batch_size": 2}})
        train(model, tok, RECORDS, {str(tmp_path / "two")!r}, settings)
        if dist.get_rank() == 0:
            torch.save(model.state_dict(), {str(tmp_path / "two.pt")!r})
    """)
    )
    tests, repo = Path(__file__).parent, Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), str(tests)]),
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    history = json.loads((tmp_path / "two" / LOSS_HISTORY).read_text())
    assert [e["step"] for e in history] == [1, 2, 3]
    assert [e["loss"] for e in history] == pytest.approx([e["loss"] for e in expected.loss_history], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [LOSS_HISTORY, "model"]
    weights_two = torch.load(tmp_path / "two.pt")
    # Two processes average two half-batch gradients: another float32 computation than one full batch, so a
    # float32 tolerance (the steps themselves move weights by ~lr, far above it).
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(tensor, weights_two[name], rtol=1e-4, atol=1e-5, msg=name)
