"""The methods a user would pick instead: each equals its reference, computed apart in the test.

PEFT-backed methods (mica, olora, orthogonal, eva, lora_ga, astra, nora, osf, lora_intruder) give the same adapter
(B A, or OSF's factors) and base weights as PEFT called directly on the same tiny model and data; LoRA-Null gives the
paper's formula (its public code's steps: SVD of the knowledge covariance, W N N^T, top-r SVD) computed here
from activations collected by the test's own hooks. The errors are printed at the end (pytest -s).
"""

import copy
import tempfile

import pytest
import torch
from peft import (
    EvaConfig,
    LoraGAConfig,
    OSFConfig,
    PeftModel,
    get_peft_model,
    initialize_lora_eva_weights,
    preprocess_loraga,
)
from peft.tuners.lora import AstraConfig, preprocess_astra
from peft.tuners.lora.intruders import reduce_intruder_dimension
from peft.tuners.osf.layer import OSFLayer
from tiny_models import TARGETS, batches, data_args, logits, lora_config, stats, task_batches, tiny_model
from transformers.pytorch_utils import Conv1D

from sclora.method.export import export_lora
from sclora.method.inits import apply_method, init_lora, lora_layers, post_hoc_step
from sclora.method.table import BY_NAME

LARGEST: dict[str, float] = {}
# A relative eigenvalue gap below this is float32 noise (the tiny GPT-2's MLP outputs have d_in 128 > tokens).
UNRESOLVED_GAP = 1e-6
F32 = 1e-5  # relative, in the Frobenius norm: float32 rounding of the same quantities computed two ways


@pytest.fixture(scope="module", autouse=True)
def _report_largest_errors():
    yield
    print(f"\ntest_alternatives largest errors: {LARGEST}")


def _relative(what: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    err = float((ours.double() - theirs.double()).norm() / theirs.double().norm().clamp_min(1e-30))
    LARGEST[what] = max(LARGEST.get(what, 0.0), err)
    return err


def _peft_directly(method: str, model, arch: str, data: dict):
    """PEFT's own API for `method`, as its docs call it, on `model`."""
    config = lora_config(arch)
    if method == "eva":
        config = lora_config(arch, init_lora_weights="eva", eva_config=EvaConfig())
        peft_model = get_peft_model(model, config)
        initialize_lora_eva_weights(peft_model, dataloader=data["task_batches"], show_progress_bar=False)
        return peft_model
    if method == "lora_ga":
        config = lora_config(arch, init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig())

        def train_step():
            for batch in data["task_batches"]:
                model(**batch).loss.backward()

        preprocess_loraga(model, config, train_step)
        return get_peft_model(model, config)
    if method == "astra":
        with tempfile.TemporaryDirectory() as cache:
            config = lora_config(arch, init_lora_weights="astra", astra_config=AstraConfig(cache_file=f"{cache}/a.pt"))
            batches = data["task_batches"]
            with torch.no_grad():
                preprocess_astra(model, config, run_model=lambda: [model(input_ids=b["input_ids"],
                                                                         attention_mask=b["attention_mask"])
                                                                   for b in batches])  # fmt: skip
            return get_peft_model(model, config)
    return get_peft_model(model, lora_config(arch, init_lora_weights=method))


# Not olora on gpt2: PEFT's olora_init has no fan_in_fan_out (GPT-2's Conv1D), and init_lora refuses it (test_inits).
PEFT_INITS = ("mica", "olora", "orthogonal", "eva", "lora_ga", "astra", "nora")
PEFT_CASES = [(m, arch) for m in PEFT_INITS for arch in ("llama", "gpt2") if (m, arch) != ("olora", "gpt2")]


@pytest.mark.parametrize(("method", "arch"), PEFT_CASES)
def test_peft_init_equals_peft_called_directly(method, arch):
    model = tiny_model(arch)
    data = data_args(method, model, arch)
    torch.manual_seed(3)  # orthogonal draws from the global generator, as PEFT does
    ours = apply_method(copy.deepcopy(model), lora_config(arch), method, **data)
    torch.manual_seed(3)
    theirs = _peft_directly(method, copy.deepcopy(model), arch, data)
    pairs = list(zip(lora_layers(ours), lora_layers(theirs), strict=True))
    assert pairs
    for (name, lo), (other, lt) in pairs:
        assert name == other and lo.r["default"] == lt.r["default"]  # EVA's redistributed ranks too
        delta_ours = lo.scaling["default"] * lo.lora_B["default"].weight @ lo.lora_A["default"].weight
        delta_theirs = lt.scaling["default"] * lt.lora_B["default"].weight @ lt.lora_A["default"].weight
        # B and A themselves too: B A is 0 for mica, eva and orthogonal (whose B A is float rounding noise)
        for key in ("lora_B", "lora_A"):
            ours_w, theirs_w = getattr(lo, key)["default"].weight, getattr(lt, key)["default"].weight
            assert _relative(f"{method} {key[-1]}", ours_w, theirs_w) < F32, name
        if float(delta_theirs.abs().max()) > 1e-6:
            assert _relative(f"{method} B A", delta_ours, delta_theirs) < F32, name
        base_ours, base_theirs = lo.get_base_layer().weight, lt.get_base_layer().weight
        assert _relative(f"{method} base weight", base_ours, base_theirs) < F32, name
    # PEFT's MiCA freezes B: so do we, through PEFT.
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in theirs.named_parameters() if p.requires_grad}
    assert (method == "mica") == (not any("lora_B" in n for n in trainable))


def _shape(module) -> tuple[int, int]:
    d0, d1 = module.weight.shape
    return (d1, d0) if isinstance(module, Conv1D) else (d0, d1)


def test_osf_is_peft_osf_at_lora_trainable_size(tmp_path):
    """osf: PEFT's OSF tuner with effective_rank = min(d_out, d_in) - r per layer; it trains r (d_out + d_in + 1)
    numbers per layer where LoRA trains r (d_out + d_in); init keeps the logits; its export is PEFT's OSF adapter
    and, loaded on the original base, computes what the trained model does."""
    model = tiny_model("llama")
    before = logits(model)
    config = lora_config("llama")
    ours = apply_method(copy.deepcopy(model), config, "osf")
    targets = {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS["llama"]}
    pattern = {f"^{n}$": min(_shape(m)) - config.r for n, m in targets.items()}
    theirs = get_peft_model(copy.deepcopy(model), OSFConfig(target_modules=TARGETS["llama"], rank_pattern=pattern))
    layers = {n: m for n, m in ours.named_modules() if isinstance(m, OSFLayer)}
    assert len(layers) == len(targets)
    theirs_layers = {n: m for n, m in theirs.named_modules() if isinstance(m, OSFLayer)}
    for name, layer in layers.items():
        for key in ("U_low", "S_low", "V_low"):
            ours_p, theirs_p = layer.osf_svd_params["default"][key], theirs_layers[name].osf_svd_params["default"][key]
            assert _relative(f"osf {key}", ours_p, theirs_p) < F32, name
    lora_size = sum(config.r * sum(_shape(m)) for m in targets.values())
    trained_size = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert trained_size == lora_size + config.r * len(targets)
    err = float((logits(ours.eval()) - before).abs().max())
    LARGEST["osf logits at init"] = err
    assert err < 1e-5 * max(1.0, float(before.abs().max()))

    opt = torch.optim.Adam([p for p in ours.parameters() if p.requires_grad], lr=2e-2)
    ours.train()
    for seed in range(3):
        batch = task_batches(20 + seed, n_batches=1)[0]
        ours(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    trained = logits(ours.eval())
    assert float((trained - before).abs().max()) > 1e-2
    out = export_lora(ours, tmp_path / "osf")
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), out).eval()
    err = float((logits(loaded) - trained).abs().max())
    LARGEST["osf export on original base (logits)"] = err
    assert err < 1e-4


def test_lora_intruder_is_peft_reduce_intruder_dimension(tmp_path):
    """lora_intruder at each mitigation_lambda: the adapter PEFT's reduce_intruder_dimension makes from the same
    trained LoRA; its export is a plain LoRA of rank r that computes the reduced model on the original base."""
    row = BY_NAME["lora_intruder"]
    model = tiny_model("llama")
    trained = apply_method(copy.deepcopy(model), lora_config("llama"), "lora_intruder")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # a "trained" adapter with large, random directions: intruders for PEFT to find
        for _, layer in lora_layers(trained):
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 2)
    reduced_somewhere = False
    for value in row.knob_values:
        ours, theirs = copy.deepcopy(trained), copy.deepcopy(trained)
        name = post_hoc_step(ours, "lora_intruder", value)
        reduce_intruder_dimension(theirs, "default", "reference", mitigation_lambda=value, logging_sink=None)
        for (layer_name, lo), (_, lt) in zip(lora_layers(ours), lora_layers(theirs), strict=True):
            delta_ours, delta_theirs = lo.get_delta_weight(name), lt.get_delta_weight("reference")
            assert _relative("lora_intruder B A vs PEFT", delta_ours, delta_theirs) < F32, layer_name
            reduced_somewhere |= float((delta_ours - lo.get_delta_weight("default")).norm()) > 1e-3
        out = export_lora(ours, tmp_path / f"lambda-{value}", adapter=name)
        loaded = PeftModel.from_pretrained(copy.deepcopy(model), out).eval()
        assert loaded.peft_config["default"].r == 4 and loaded.peft_config["default"].init_lora_weights is True
        err = float((logits(loaded) - logits(ours.eval())).abs().max())
        LARGEST["lora_intruder export (logits)"] = max(LARGEST.get("lora_intruder export (logits)", 0.0), err)
        assert err < 1e-4
    assert reduced_somewhere  # not vacuous: some lambda changed some layer's adapter
    with pytest.raises(ValueError, match="no post-hoc step"):
        post_hoc_step(trained, "lora", 0.5)


def _paper_covariances(model, arch: str, data: list[dict]) -> dict[str, torch.Tensor]:
    """LoRA-Null's calibration covariance as its code collects it (CorDA's `calib_cov_distribution`): per sample,
    the layer's input over its real tokens divided by its max entry's absolute value, X^T X, summed and divided
    by the sample count. Collected here by forward hooks, one sample per forward, apart from sclora.method.gather."""
    sums, hooks, count = {}, [], 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS[arch]:

            def hook(module, inputs, output, name=name):
                x = inputs[0][0].double()
                x = x / x.max().abs()
                sums[name] = sums.get(name, 0) + x.T @ x

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for batch in data:
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                model(input_ids=ids[mask.bool()][None])
                count += 1
    for handle in hooks:
        handle.remove()
    return {name: total / count for name, total in sums.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_null_is_the_papers_formula(arch):
    """B A and W_res of lora_null against the paper's steps computed here: U_, S_, V_ = svd(C); N = U_[:, -r:];
    temp = W N N^T; W_res = W - temp; U, S, V = svd(temp)[:r]; B A = U S V^T (its code has no LoRA scaling)."""
    model = tiny_model(arch)
    data = batches(2, n_batches=8)
    neg = stats(model, arch, 2, covariance=True, n_batches=8)
    covariances = _paper_covariances(model, arch, data)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in covariances}
    ours = init_lora(copy.deepcopy(model), lora_config(arch), "lora_null", neg=neg)
    compared = 0
    for name, layer in lora_layers(ours):
        weight = original[name].double()
        weight = weight.T if arch == "gpt2" else weight  # Conv1D: (d_in, d_out)
        cov, r = covariances[name], layer.r["default"]
        values = torch.linalg.eigvalsh(cov)
        gap = float((values[r] - values[r - 1]) / values[-1])  # relative gap at the null space's edge
        if gap < UNRESOLVED_GAP:
            continue  # below float32's resolution the r smallest directions are any basis of a larger space
        compared += 1
        # Davis-Kahan: float32 rounding of the captured covariance (relative 6e-8) moves the basis by ~ eps / gap.
        tolerance = max(F32, 1e-7 / gap)
        u_, _, _ = torch.linalg.svd(cov)
        null = u_[:, -r:]
        temp = weight @ (null @ null.T)
        u, s, v = torch.svd(temp)
        paper_delta = u[:, :r] @ torch.diag(s[:r]) @ v[:, :r].T
        paper_residual = weight - temp
        delta = (
            layer.scaling["default"] * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        )
        residual = layer.get_base_layer().weight.double()
        residual = residual.T if arch == "gpt2" else residual
        assert _relative(f"lora_null B A vs the paper ({arch})", delta, paper_delta) < tolerance, name
        assert _relative(f"lora_null W_res vs the paper ({arch})", residual, paper_residual) < tolerance, name
        assert float(paper_delta.norm()) > 1e-6 * float(weight.norm())  # not vacuous
    assert compared >= len(lora_layers(ours)) // 2  # most layers have a null space float32 can resolve
    # The adapter's input directions are the preserved data's quietest: their activations barely reach it.
    _, layer = lora_layers(ours)[0]
    a = layer.lora_A["default"].weight.double()
    name = lora_layers(ours)[0][0]
    energy = float(torch.trace(a @ covariances[name] @ a.T) / torch.trace(a @ a.T) / torch.trace(covariances[name]))
    assert energy < 1.0 / covariances[name].shape[0]  # below the average direction's share


def test_data_reading_methods_say_what_they_miss():
    model = tiny_model("llama")
    for method, missing in (("lora_null", "needs `neg`"), ("eva", "needs task_batches"), ("lora_ga", "task_batches")):
        with pytest.raises(ValueError, match=missing):
            init_lora(copy.deepcopy(model), lora_config("llama"), method)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        apply_method(model, lora_config("llama"), "nope")
    with pytest.raises(ValueError, match="leaves OSF nothing to freeze"):
        apply_method(copy.deepcopy(model), lora_config("llama", r=32), "osf")
