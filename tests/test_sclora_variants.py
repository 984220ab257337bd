"""sclora_frozen through the train stage: the trained adapter's B is still the solved basis; sclora's B moves."""

from pathlib import Path

import torch
from safetensors.torch import load_file
from stage_project import project_params, stage, write_params

from sclora.method.subspace import load_subspaces


def trained_b(run: str) -> dict[str, torch.Tensor]:
    """The trained adapter's B per target module (PEFT's key: base_model.model.<module>.lora_B.weight)."""
    tensors = load_file(Path("artifacts/runs", run, "model", "adapter_model.safetensors"))
    prefix, suffix = "base_model.model.", ".lora_B.weight"
    return {key[len(prefix) : -len(suffix)]: value for key, value in tensors.items() if key.endswith(suffix)}


def test_frozen_basis_stays_the_subspace_through_training(project):
    params = project_params(project)
    params["train"]["sclora_variants"] = ["sclora", "sclora_frozen"]
    write_params(project, params)
    beta = params["solve"]["betas"][0]
    for argv in (
        ("prepare",),
        ("capture",),
        ("evaluate_base",),
        ("solve", str(beta)),
        ("train", f"benign-sclora_frozen-{beta}-0"),
        ("train", f"benign-sclora-{beta}-0"),
    ):
        assert stage(*argv) == 0, argv
    subspaces = load_subspaces(Path(f"artifacts/solve/beta-{beta}/benign.safetensors"))
    frozen, trained = trained_b(f"benign-sclora_frozen-{beta}-0"), trained_b(f"benign-sclora-{beta}-0")
    assert frozen.keys() == trained.keys() and frozen
    rank = params["adapter"]["rank"]
    for name, b in frozen.items():
        basis = subspaces[name].basis[:, :rank].to(b.dtype)
        assert torch.equal(b, basis), name  # never updated: the stored init itself
        assert (trained[name] - basis).abs().max() > 1e-6, name  # the trainable one did move
