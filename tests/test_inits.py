"""init_lora: every residual method keeps the logits at init; SC-LoRA's algebra; CorDA equals PEFT's own; errors."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda
from tiny_models import TARGETS, VOCAB, batches, data_args, logits, lora_config, stats, tiny_model
from transformers.pytorch_utils import Conv1D

from sclora.method.gather import capture
from sclora.method.inits import METHODS, RESIDUAL_METHODS, init_lora, lora_layers, random_subspaces
from sclora.method.subspace import sclora_subspaces, solve_subspace

RANK_PATTERN = {"llama": {"v_proj": 2}, "qwen2": {"v_proj": 2}, "gpt2": {"c_fc": 3}}
ALPHA_PATTERN = {"llama": {"o_proj": 2}, "qwen2": {"o_proj": 2}, "gpt2": {"c_attn": 3}}
# Largest errors seen, printed at the end (pytest -s) for the closing note.
LARGEST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_largest_errors():
    yield
    print(f"\ntest_inits largest errors: {LARGEST}")


def _record(what: str, err: float) -> float:
    LARGEST[what] = max(LARGEST.get(what, 0.0), err)
    return err


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_init_keeps_the_logits(arch, method):
    if method == "olora" and arch == "gpt2":
        with pytest.raises(ValueError, match="olora_init does not support fan_in_fan_out"):
            init_lora(tiny_model(arch), lora_config(arch), method)
        return
    model = tiny_model(arch)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = logits(model)
    peft_model = init_lora(model, lora_config(arch), method, **data_args(method, model, arch)).eval()
    err = _record(f"logits at init ({arch})", float((logits(peft_model) - before).abs().max()))
    assert err < 1e-5 * max(1.0, float(before.abs().max()))
    # Not vacuous: residual methods really moved the base weights, and their adapter is not zero; the others
    # left the base alone with B A = 0 (lora, eva: B = 0; mica: A = 0; orthogonal: B and A on orthogonal halves).
    name, layer = lora_layers(peft_model)[0]
    moved = (layer.get_base_layer().weight - original[f"{name}.weight"]).abs().max()
    product = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    if method in RESIDUAL_METHODS:
        assert moved > 1e-6 and product.abs().max() > 1e-6  # LoRA-GA's is small: B A ~ 1e-4 here
    else:
        assert moved == 0 and _record(f"B A of a non-residual init ({arch})", float(product.abs().max())) < 1e-6


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_random_subspace_is_the_sclora_construction_on_a_seeded_orthonormal_basis(arch):
    config = lora_config(arch, rank_pattern=RANK_PATTERN[arch])
    drawn = random_subspaces(tiny_model(arch), config, seed=3)
    assert drawn.keys() == random_subspaces(tiny_model(arch), config, seed=3).keys()
    for name, basis in drawn.items():
        assert torch.equal(basis, random_subspaces(tiny_model(arch), config, seed=3)[name])  # same seed, same basis
        assert (basis.T @ basis - torch.eye(basis.shape[1], dtype=basis.dtype)).abs().max() < 1e-12
    other = random_subspaces(tiny_model(arch), config, seed=4)
    assert all((drawn[n] - other[n]).abs().max() > 1e-3 for n in drawn)
    # init_lora's random_subspace is sclora_init on those bases: B is the basis, A = B^T W / scaling.
    model = tiny_model(arch)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in drawn}
    peft_model = init_lora(model, config, "random_subspace", seed=3)
    for name, layer in lora_layers(peft_model):
        b, a = layer.lora_B["default"].weight.detach().double(), layer.lora_A["default"].weight.detach().double()
        w = weights[name].double().T if arch == "gpt2" else weights[name].double()
        assert (b - drawn[name]).abs().max() < 1e-6
        assert (layer.scaling["default"] * a - drawn[name].T @ w).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_sclora_basis_is_orthonormal_and_adapter_projects(arch):
    model = tiny_model(arch)
    linear = (torch.nn.Linear, Conv1D)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, linear)}
    # Patterns: the solve must use each layer's own rank and the adapter each layer's own scaling.
    config = lora_config(arch, rank_pattern=RANK_PATTERN[arch], alpha_pattern=ALPHA_PATTERN[arch])
    pos, neg = stats(model, arch, 1), stats(model, arch, 2)
    # Solved once at a larger rank (as the solve stage does for r_max): init uses the top r columns.
    subspaces = sclora_subspaces(model, config, pos, neg, beta=0.3, rank=6, normalize="trace")
    peft_model = init_lora(model, config, "sclora", subspaces=subspaces)
    gen = torch.Generator().manual_seed(0)
    ranks, scalings = set(), set()
    for name, layer in lora_layers(peft_model):
        r, s = layer.r["default"], layer.scaling["default"]
        ranks.add(r)
        scalings.add(s)
        b = layer.lora_B["default"].weight.detach().double()
        a = layer.lora_A["default"].weight.detach().double()
        w = original[name].double()
        w = w.T if arch == "gpt2" else w  # (d_out, d_in)
        u = subspaces[name].basis[:, :r]
        assert b.shape == (w.shape[0], r)
        _record("B^T B - I", float((b.T @ b - torch.eye(r, dtype=torch.float64)).abs().max()))
        assert torch.allclose(b.T @ b, torch.eye(r, dtype=torch.float64), atol=1e-6)
        assert torch.allclose(b, u, atol=1e-6)
        x = torch.randn(w.shape[1], 5, generator=gen, dtype=torch.float64)
        err = float((s * b @ a @ x - u @ (u.T @ (w @ x))).abs().max())
        assert _record("s B A x - U U^T W x", err) < 1e-5 * float((w @ x).abs().max())
        w_res = layer.get_base_layer().weight.detach().double()
        w_res = w_res.T if arch == "gpt2" else w_res
        assert torch.allclose(w_res, w - u @ (u.T @ w), atol=1e-5)
    assert len(ranks) == 2 and len(scalings) > 1  # the patterns were applied


def test_sclora_solve_uses_bias_with_token_counts():
    model = tiny_model("qwen2")
    pos, neg = stats(model, "qwen2", 1), stats(model, "qwen2", 2)
    name = "model.layers.0.self_attn.q_proj"
    layer = model.get_submodule(name)
    got = sclora_subspaces(model, lora_config("qwen2"), pos, neg, beta=0.5)[name].basis
    args = (layer.weight.detach(), pos.inputs(name)[0], neg.inputs(name)[0], 0.5, 4)
    with_bias = solve_subspace(*args, bias=layer.bias.detach(), pos_tokens=pos.tokens, neg_tokens=neg.tokens).basis
    without = solve_subspace(*args).basis
    assert torch.allclose(got, with_bias, atol=1e-12)
    assert (got @ got.T - without @ without.T).abs().max() > 1e-3  # the bias really changes the subspace


def test_freeze_basis_keeps_b_through_an_optimizer_step():
    model = tiny_model("llama")
    pos, neg = stats(model, "llama", 1), stats(model, "llama", 2)
    peft_model = init_lora(model, lora_config("llama"), "sclora", pos, neg, 0.5, freeze_basis=True)
    layers = lora_layers(peft_model)
    b0 = {n: layer.lora_B["default"].weight.detach().clone() for n, layer in layers}
    a0 = {n: layer.lora_A["default"].weight.detach().clone() for n, layer in layers}
    assert not any(layer.lora_B["default"].weight.requires_grad for _, layer in layers)
    assert all(layer.lora_A["default"].weight.requires_grad for _, layer in layers)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    b = batches(5, n_batches=1)[0]
    peft_model(**b, labels=b["input_ids"]).loss.backward()
    opt.step()
    for name, layer in layers:
        bw, aw = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        assert torch.equal(bw, b0[name])
        assert not torch.equal(aw, a0[name])
        out = (bw @ aw).double()  # columns of B A: the adapter's output directions
        assert (out - bw.double() @ (bw.double().T @ out)).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_corda_is_peft_preprocess_corda_on_the_same_samples(arch, mode):
    """corda_ipm / corda_kpm are PEFT's CorDA: PEFT's `preprocess_corda` (one sample per forward, as its hook
    needs) then `get_peft_model` give the same covariance, B A and W_res as our batched, padded capture."""
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(7)
    samples = [torch.randint(3, VOCAB, (int(n),), generator=gen) for n in torch.randint(20, 40, (48,), generator=gen)]
    padded = []  # ours: batches of 4, right-padded (the padding must not count)
    for lo in range(0, len(samples), 4):
        group = samples[lo : lo + 4]
        width = max(len(x) for x in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for i, x in enumerate(group):
            ids[i, : len(x)], mask[i, : len(x)] = x, 1
        padded.append({"input_ids": ids, "attention_mask": mask})
    captured = capture(model, padded, TARGETS[arch], covariance=True, progress=False)
    data = {"pos": captured} if mode == "ipm" else {"neg": captured}
    ours = init_lora(copy.deepcopy(model), lora_config(arch), f"corda_{mode}", **data)

    theirs_model = copy.deepcopy(model)
    # prune_temporary_fields=False keeps PEFT's covariance on the modules, to compare with ours.
    corda = CordaConfig(corda_method=mode, prune_temporary_fields=False)
    config = lora_config(arch, init_lora_weights="corda", corda_config=corda)

    def run_model():
        for x in samples:
            theirs_model(input_ids=x[None])

    preprocess_corda(theirs_model, config, run_model=run_model)
    theirs = get_peft_model(theirs_model, config)

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:  # in the Frobenius norm
        return float((a.double() - b.double()).norm() / b.double().norm())

    for (name, lo), (_, lt) in zip(lora_layers(ours), lora_layers(theirs), strict=True):
        cov_sum, n_samples = captured.covariance(name)
        assert n_samples == len(samples)
        err = relative(cov_sum / n_samples, lt.get_base_layer().covariance_matrix)
        assert _record("corda covariance vs PEFT (relative)", err) < 1e-6, name
        s = lo.scaling["default"]
        bo, ao = lo.lora_B["default"].weight.detach(), lo.lora_A["default"].weight.detach()
        bt, at = lt.lora_B["default"].weight.detach(), lt.lora_A["default"].weight.detach()
        # PEFT inverts the damped covariance in float32 (as we do, calling its code): a float32 rounding of the
        # covariance moves B A and W_res by up to ~cond x eps. q/k/v here: cond 26, within 7e-6; o_proj: cond 569, 1e-4.
        # A and B alone are not compared: KPM's smallest singular values can be near-equal (gpt2 mlp.c_proj), and
        # a rotation inside their span changes A and B but not B A.
        cov = lt.get_base_layer().covariance_matrix.double()
        cond = float(torch.linalg.cond(cov + torch.eye(len(cov), dtype=cov.dtype) * cov.diag().mean() * 0.01))
        tolerance = max(1e-5, 10 * cond * torch.finfo(torch.float32).eps)
        err = relative(s * bo.double() @ ao.double(), s * bt.double() @ at.double())
        assert _record(f"corda_{mode} B A vs PEFT (relative / tolerance)", err / tolerance) < 1, name
        err = relative(lo.get_base_layer().weight.detach(), lt.get_base_layer().weight.detach())
        assert _record(f"corda_{mode} W_res vs PEFT (relative / tolerance)", err / tolerance) < 1, name


def test_errors():
    model = tiny_model("llama")
    config = lora_config("llama")
    pos, neg = stats(model, "llama", 1), stats(model, "llama", 2)
    with pytest.raises(ValueError, match="unknown init method 'dora'"):
        init_lora(model, config, "dora")
    with pytest.raises(ValueError, match="corda_ipm needs `pos`"):
        init_lora(model, config, "corda_ipm", neg=neg)
    with pytest.raises(ValueError, match="corda_kpm needs `neg`"):
        init_lora(model, config, "corda_kpm", pos=pos)
    with pytest.raises(ValueError, match="covariance=True"):
        init_lora(model, config, "corda_ipm", pos=pos)
    with pytest.raises(ValueError, match="sclora needs beta"):
        init_lora(model, config, "sclora", pos, neg)
    with pytest.raises(ValueError, match="sclora needs pos and neg"):
        init_lora(model, config, "sclora", pos, beta=0.5)
    partial = stats(model, "llama", 1)
    del partial.module_keys["model.layers.1.mlp.down_proj"]
    with pytest.raises(ValueError, match="model.layers.1.mlp.down_proj is missing from the neg CaptureStats"):
        init_lora(model, config, "sclora", pos, partial, 0.5)
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj: beta must be in"):
        init_lora(model, config, "sclora", pos, neg, 1.5)
    with pytest.raises(ValueError, match="use_rslora with rank_pattern"):
        init_lora(model, lora_config("llama", use_rslora=True, rank_pattern={"q_proj": 2}), "pissa")
    with pytest.raises(ValueError, match="freeze_basis applies to method 'sclora' only"):
        init_lora(model, config, "pissa", freeze_basis=True)
    with pytest.raises(ValueError, match="conflicts with method 'sclora'"):
        init_lora(model, lora_config("llama", init_lora_weights="pissa"), "sclora", pos, neg, 0.5)
    with pytest.raises(ValueError, match="match no Linear or Conv1D"):
        init_lora(model, LoraConfig(target_modules=["nothing_here"]), "lora")
    with pytest.raises(ValueError, match="model.layers.0.self_attn.k_proj: rank 20 exceeds min"):
        init_lora(model, lora_config("llama", rank_pattern={"k_proj": 20}), "pissa")  # k_proj is 16 x 32
    subspaces = sclora_subspaces(model, config, pos, neg, 0.5)
    del subspaces["model.layers.1.self_attn.o_proj"]
    with pytest.raises(ValueError, match="no subspace for target module model.layers.1.self_attn.o_proj"):
        init_lora(model, config, "sclora", subspaces=subspaces)
    with pytest.raises(ValueError, match="either precomputed subspaces or pos/neg/beta"):
        init_lora(model, config, "sclora", pos, neg, 0.5, subspaces=subspaces)
    subspaces = sclora_subspaces(model, config, pos, neg, 0.5, rank=2)
    with pytest.raises(ValueError, match=r"q_proj: subspace basis \(32, 2\) does not fit d_out=32, rank 4"):
        init_lora(model, config, "sclora", subspaces=subspaces)
    with pytest.raises(ValueError, match="model.embed_tokens is a Embedding"):
        init_lora(model, LoraConfig(target_modules=["q_proj", "embed_tokens"]), "milora")
    # None of the refusals above touched the model.
    assert not any("lora_" in n for n, _ in model.named_parameters())
