"""Astra (PEFT 0.22, arXiv 2602.19111) is SC-LoRA's parameterisation at beta = 0 without the preserve term. Stated
exactly on one tiny model and one set of task batches:

1. The subspace: Astra takes the top-r eigenvectors of the covariance of a layer's OUTPUTS TOKEN BY TOKEN, each
   forward pass's outputs divided by that pass's largest output (padding included); SC-LoRA at beta = 0 takes those
   of the covariance of each SAMPLE's token-summed outputs y_i = W s_i (+ T_i b). The two bases differ; Astra's
   convention put into SC-LoRA's own solver gives Astra's basis back.
2. The init: through Astra's eigenvector cache (`AstraConfig.cache_file`, `<module>.eigens.V`), SC-LoRA's basis U
   gives B = U as sclora_init does, but A = U^T W and W_res = W - s U U^T W where sclora_init has A = U^T W / s and
   W_res = (I - U U^T) W (s = alpha / r): both keep the model's outputs at init, and they are the same init only at
   s = 1 (at s = 2 Astra's residual reflects W's part in the subspace instead of removing it). So sclora keeps its
   own init (PEFT's Astra path cannot set A's scale), and its conversion to a plain LoRA goes through PEFT's general
   path as every residual init's does.
"""

import copy
import tempfile

import torch
from peft import get_peft_model
from peft.tuners.lora import AstraConfig, preprocess_astra
from tiny_models import batches, lora_config, stats, task_batches, tiny_model

from sclora.method.inits import init_lora, lora_layers
from sclora.method.subspace import sclora_subspaces


def _astra(model, config_kw, batch_list, cache: str | None = None):
    """PEFT's Astra on `model` over `batch_list` (or from the eigenvector `cache` written beforehand)."""
    with tempfile.TemporaryDirectory() as tmp:
        file = cache or f"{tmp}/astra.pt"
        config = lora_config("llama", init_lora_weights="astra", astra_config=AstraConfig(cache_file=file), **config_kw)
        with torch.no_grad():

            def run():
                return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) for b in batch_list]

            preprocess_astra(model, config, run_model=None if cache else run)
        return get_peft_model(model, config)


def _projector(basis: torch.Tensor) -> torch.Tensor:
    q = basis.double()
    return q @ q.T


def test_astra_and_sclora_at_beta_0_differ_by_the_covariance_convention_alone():
    model = tiny_model("llama")
    data = task_batches()
    astra = _astra(copy.deepcopy(model), {}, data)
    # SC-LoRA at beta 0 (normalize none): the covariance of per-sample token-summed outputs.
    pos = stats(model, "llama", 1)
    ours = sclora_subspaces(model, lora_config("llama"), pos, pos, 0.0, normalize="none")
    # Astra's convention computed here: every token's output, each forward pass divided by its largest output.
    outputs: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, []).append(o.detach()))
             for name, module in model.named_modules() if name in ours]  # fmt: skip
    with torch.no_grad():
        for batch in data:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in hooks:
        handle.remove()
    differ = 0
    for name, layer in lora_layers(astra):
        r = layer.r["default"]
        peft_basis = layer.lora_B["default"].weight
        scaled = [o.reshape(-1, o.shape[-1]).double() / o.max().abs() for o in outputs[name]]
        cov = sum(x.T @ x for x in scaled) / len(scaled)
        _, vectors = torch.linalg.eigh(cov)
        assert float((_projector(vectors[:, -r:]) - _projector(peft_basis)).norm()) < 1e-4, name  # Astra's own
        differ += float((_projector(ours[name].basis[:, :r]) - _projector(peft_basis)).norm()) > 0.1
    assert differ >= len(lora_layers(astra)) // 2  # per-sample sums and per-token outputs span other subspaces


def test_sclora_s_basis_through_astra_s_cache_is_sclora_s_init_only_at_scaling_1():
    model = tiny_model("llama")
    pos, neg = stats(model, "llama", 1), stats(model, "llama", 2)
    for alpha, same in ((4, True), (8, False)):  # r = 4: scaling 1, then 2
        config = lora_config("llama", lora_alpha=alpha)
        spaces = sclora_subspaces(model, config, pos, neg, 0.5, normalize="trace")
        ours = init_lora(copy.deepcopy(model), config, "sclora", subspaces=spaces)
        with tempfile.TemporaryDirectory() as tmp:
            cache = {}
            for name, subspace in spaces.items():
                basis = subspace.basis[:, : config.r].float().contiguous()
                cache[f"{name}.eigens.V"], cache[f"{name}.eigens.S"] = basis, torch.zeros(basis.shape[0])
            torch.save(cache, f"{tmp}/cache.pt")
            theirs = _astra(copy.deepcopy(model), {"lora_alpha": alpha}, batches(1), cache=f"{tmp}/cache.pt")
        original = dict(model.named_modules())
        for (name, lo), (_, lt) in zip(lora_layers(ours), lora_layers(theirs), strict=True):
            s_ = lo.scaling["default"]
            w, u = original[name].weight.double(), spaces[name].basis[:, : config.r].double()
            b_ours, b_theirs = lo.lora_B["default"].weight.double(), lt.lora_B["default"].weight.double()
            a_ours, a_theirs = lo.lora_A["default"].weight.double(), lt.lora_A["default"].weight.double()
            w_ours, w_theirs = lo.get_base_layer().weight.double(), lt.get_base_layer().weight.double()
            assert torch.allclose(b_ours, b_theirs, atol=1e-6), name  # B = U, both
            assert torch.allclose(a_theirs, u.T @ w, atol=1e-5), name  # Astra: A = U^T W
            assert torch.allclose(a_ours, u.T @ w / s_, atol=1e-5), name  # sclora: A = U^T W / s
            assert torch.allclose(w_theirs, w - s_ * u @ u.T @ w, atol=1e-5), name  # Astra: W - s U U^T W
            assert torch.allclose(w_ours, w - u @ u.T @ w, atol=1e-5), name  # sclora: (I - U U^T) W
            for w_res, a in ((w_ours, a_ours), (w_theirs, a_theirs)):  # both keep the outputs at init
                assert torch.allclose(w_res + s_ * b_ours @ a, w, atol=1e-5), name
            assert torch.allclose(a_ours, a_theirs, atol=1e-5) == same, (name, alpha)
            assert torch.allclose(w_ours, w_theirs, atol=1e-5) == same, (name, alpha)
