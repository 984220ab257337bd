"""What practitioners do instead, each equal to its definition computed apart: WiSE-FT on the adapter (theta_0 +
alpha (theta_ft - theta_0)), Safe LoRA's projection (arXiv 2405.16833), and data mixing (a share of the task's
records replaced by preserved ones); a post-hoc row's knob values are points of its run, scored like checkpoints."""

import copy

import pytest
import torch
from peft import get_peft_model
from tiny_models import logits, lora_config, tiny_model

from sclora.evaluate.scorer import Scored
from sclora.method.inits import alignment_directions, lora_layers, post_hoc_step, safe_lora_b
from sclora.runs.data import mixed_records
from sclora.runs.run import post_hoc_points, training_records


def _trained(seed: int = 0):
    """A LoRA on the tiny model with B and A both non-zero, as after training."""
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model("llama"), lora_config("llama"))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].weight.normal_(0.0, 0.05)
    return model.eval()


def _merged(model):
    return {n: m.weight.detach().clone() for n, m in copy.deepcopy(model).merge_and_unload().named_modules()
            if hasattr(m, "weight") and m.weight is not None}  # fmt: skip


def test_wise_is_the_weight_interpolation_of_base_and_trained():
    model = _trained()
    base = {n: m.weight.detach().clone() for n, m in tiny_model("llama").named_modules()
            if hasattr(m, "weight") and m.weight is not None}  # fmt: skip
    trained = _merged(model)
    for alpha in (0.0, 0.25, 1.0):
        post_hoc_step(model, "wise", alpha)
        interpolated = _merged(model)
        for name, weight in base.items():
            expected = weight + alpha * (trained[name] - weight)  # theta_0 + alpha (theta_ft - theta_0)
            assert torch.allclose(interpolated[name], expected, atol=1e-6), (name, alpha)
        model.set_adapter("default")


def test_safe_lora_is_the_papers_projection():
    """C = V V^T / ||V||_F with V = W_aligned - W_unaligned; a layer whose update's cosine similarity with its
    projection C B A is below the threshold gets C B A, the others keep B A (computed here from the definition)."""
    aligned, unaligned = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    directions = alignment_directions(aligned, unaligned, lora_config("llama"))
    model = _trained()
    layers = dict(lora_layers(model))
    for threshold in (0.0, 0.5, 1.01):
        post_hoc_step(model, "safe_lora", threshold, alignment=directions)
        projected = 0
        for name, layer in layers.items():
            v = (dict(aligned.named_modules())[name].weight - dict(unaligned.named_modules())[name].weight).double()
            c = v @ v.T / torch.linalg.matrix_norm(v)
            a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
            delta, candidate = b @ a, c @ b @ a
            similarity = float((delta * candidate).sum() / (delta.norm() * candidate.norm()))
            expected = candidate if similarity < threshold else delta
            active = model.active_adapter
            got = layer.lora_B[active].weight.double() @ layer.lora_A[active].weight.double()
            assert torch.allclose(got, expected, atol=1e-6), (name, threshold)
            projected += similarity < threshold
        assert projected == {0.0: 0, 1.01: len(layers)}.get(threshold, projected)  # none, then every layer
        model.set_adapter("default")
    with pytest.raises(ValueError, match="unaligned twin"):
        post_hoc_step(model, "safe_lora", 0.5)


def test_safe_lora_b_leaves_an_update_in_the_alignment_direction_alone():
    v = torch.randn(6, 5, dtype=torch.float64)
    u = torch.linalg.svd(v)[0][:, :1]  # B along V's top left singular vector: C B A is B A scaled, similarity 1
    a = torch.randn(1, 5, dtype=torch.float64)
    assert torch.equal(safe_lora_b(v, a, u, threshold=0.99), u)


def test_mixing_replaces_a_share_of_the_task_and_keeps_its_size_and_order():
    task = [{"prompt": f"t{i}", "response": "x"} for i in range(200)]
    preserved = [{"prompt": f"p{i}", "response": "y"} for i in range(30)]
    mixed = mixed_records(task, preserved, 0.25, seed=0)
    assert len(mixed) == 200 and sum(r["prompt"].startswith("p") for r in mixed) == 50
    assert [r for r in mixed if r["prompt"].startswith("t")] == [r for r in task if r in mixed]  # order kept
    assert mixed == mixed_records(task, preserved, 0.25, seed=0) != mixed_records(task, preserved, 0.25, seed=1)
    assert training_records("lora", task, preserved) == task  # LoRA alone does not mix
    assert sum(r["prompt"].startswith("p") for r in training_records("mix", task, preserved)) == 50  # its 0.25
    assert sum(r["prompt"].startswith("p") for r in training_records("mix", task, preserved, share=0.1)) == 20
    with pytest.raises(ValueError, match="data.preserve"):
        mixed_records(task, [], 0.1, seed=0)


def test_a_post_hoc_rows_knob_values_are_points_of_its_run():
    model = _trained()
    seen = []

    def score(m):
        seen.append(m.active_adapter)
        return Scored({"utility": float(logits(m).abs().mean())}, [])

    points = post_hoc_points(model, "wise", score, step=7)
    assert [p["alpha"] for p in points] == [0.25, 0.5, 0.75, 1.0] and {p["step"] for p in points} == {7}
    assert seen == ["wise_0_25", "wise_0_5", "wise_0_75", "wise_1"] and model.active_adapter == "default"
    assert points[-1]["utility"] == pytest.approx(float(logits(model).abs().mean()))  # alpha 1: the trained model
