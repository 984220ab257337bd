"""export: a trained adapter, exported as a plain LoRA on the ORIGINAL base or as a merged model, computes the same."""

import copy

import pytest
import torch
from peft import PeftConfig, PeftModel
from tiny_models import batches, data_args, logits, lora_config, tiny_model
from transformers import AutoModelForCausalLM

from sclora.method.export import export_lora, export_merged, save_initial_adapter
from sclora.method.inits import RESIDUAL_METHODS, init_lora, lora_layers

LARGEST: dict[str, float] = {}

CASES = [("llama", m) for m in ("lora", "pissa", "milora", "corda_ipm", "corda_kpm", "sclora")] + [
    ("qwen2", "sclora"),
    ("qwen2", "corda_kpm"),
    ("gpt2", "sclora"),
    ("gpt2", "pissa"),
    ("gpt2", "milora"),
    *(("llama", m) for m in ("mica", "olora", "orthogonal", "eva", "lora_ga", "lora_null")),
]


@pytest.fixture(scope="module", autouse=True)
def _report_largest_errors():
    yield
    print(f"\ntest_export largest errors: {LARGEST}")


def train_a_few_steps(peft_model, steps: int = 3) -> None:
    """Plain torch.optim steps, large enough that the adapter moves visibly away from its init."""
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    peft_model.train()
    for seed in range(steps):
        b = batches(20 + seed, n_batches=1)[0]
        peft_model(**b, labels=b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()


def _initialised(arch, method, **kw):
    model = tiny_model(arch)
    original = copy.deepcopy(model)
    peft_model = init_lora(model, lora_config(arch, **kw), method, **data_args(method, model, arch))
    return original, peft_model


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_exported_lora_on_original_base_reproduces_trained_model(tmp_path, arch, method):
    original, peft_model = _initialised(arch, method)
    save_initial_adapter(peft_model, tmp_path / "initial")
    train_a_few_steps(peft_model)
    trained = logits(peft_model)
    assert (trained - logits(original)).abs().max() > 1e-2  # training really changed the model

    out = export_lora(peft_model, tmp_path / "lora", tmp_path / "initial")
    r = 4 * (2 if method in RESIDUAL_METHODS else 1)
    config = PeftConfig.from_pretrained(out)
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (r, 2 * r, True)
    loaded = PeftModel.from_pretrained(copy.deepcopy(original), out).eval()
    err = (logits(loaded) - trained).abs().max().item()
    LARGEST["plain LoRA on original base"] = max(LARGEST.get("plain LoRA on original base", 0.0), err)
    assert err < 1e-4

    merged_dir = export_merged(peft_model, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    err = (logits(merged) - trained).abs().max().item()
    LARGEST["merged model"] = max(LARGEST.get("merged model", 0.0), err)
    assert err < 1e-4
    assert not any("lora" in name for name in merged.state_dict())


def test_export_with_rank_and_alpha_patterns(tmp_path):
    original, peft_model = _initialised("llama", "sclora", rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 2})
    save_initial_adapter(peft_model, tmp_path / "initial")
    train_a_few_steps(peft_model)
    trained = logits(peft_model)
    loaded = PeftModel.from_pretrained(original, export_lora(peft_model, tmp_path / "lora", tmp_path / "initial"))
    ranks = {n.rsplit(".", 1)[-1]: layer.r["default"] for n, layer in lora_layers(loaded)}
    assert ranks["v_proj"] == 4 and ranks["q_proj"] == 8  # 2r per layer
    assert (logits(loaded.eval()) - trained).abs().max() < 1e-4


def test_freeze_basis_survives_export(tmp_path):
    model = tiny_model("llama")
    args = data_args("sclora", model, "llama")
    peft_model = init_lora(model, lora_config("llama"), "sclora", **args, freeze_basis=True)
    save_initial_adapter(peft_model, tmp_path / "initial")
    export_lora(peft_model, tmp_path / "lora", tmp_path / "initial")
    assert all(not layer.lora_B["default"].weight.requires_grad for _, layer in lora_layers(peft_model))
    assert all(layer.lora_A["default"].weight.requires_grad for _, layer in lora_layers(peft_model))
    assert list(peft_model.peft_config) == ["default"]  # the initial adapter PEFT loaded is gone again


def test_errors(tmp_path):
    _, peft_model = _initialised("llama", "pissa")
    with pytest.raises(ValueError, match="pass the directory save_initial_adapter wrote"):
        export_lora(peft_model, tmp_path / "lora")
    with pytest.raises(FileNotFoundError, match="no initial adapter in"):
        export_lora(peft_model, tmp_path / "lora", tmp_path / "missing")
    with pytest.raises(ValueError, match="named like adapter 'default'"):
        save_initial_adapter(peft_model, tmp_path / "default")
    # rslora + patterns: refused at init, before any training is spent on an unexportable adapter.
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="use_rslora with rank_pattern/alpha_pattern cannot be exported"):
        init_lora(model, lora_config("llama", use_rslora=True, alpha_pattern={"q_proj": 2}), "milora")
    # ...and at save/export time for a model made some other way.
    peft_model.peft_config["default"].use_rslora = True
    peft_model.peft_config["default"].rank_pattern = {"q_proj": 2}
    with pytest.raises(ValueError, match="use_rslora with rank_pattern/alpha_pattern"):
        save_initial_adapter(peft_model, tmp_path / "initial")
    with pytest.raises(ValueError, match="use_rslora with rank_pattern/alpha_pattern"):
        export_lora(peft_model, tmp_path / "lora", tmp_path / "initial_elsewhere")
