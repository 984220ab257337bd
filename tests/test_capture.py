"""capture: per-sample token-summed layer inputs, shards, resume, concat — checked against direct computation."""

import filecmp

import pytest
import torch
import transformers

from sclora.method.gather import CaptureStats, capture

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def seqs():
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(3, 64, (int(n),), generator=gen) for n in torch.randint(2, 12, (11,), generator=gen)]


def pad(seqs, side="right"):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, cols], mask[i, cols] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def batched(seqs, size, side="right"):
    return [pad(seqs[i : i + size], side) for i in range(0, len(seqs), size)]


def direct(model, seqs, names):
    """Reference: run each sample alone, unpadded, and sum each layer's inputs by hand; covariance as PEFT's CorDA
    hook builds it (each sample divided by |max entry|, X^T X summed)."""
    modules = dict(model.named_modules())
    inputs, handles = {}, []
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda m, a, o, name=name: inputs.__setitem__(name, a[0])))
    sums = {n: [] for n in names}
    covs = {n: 0 for n in names}
    with torch.no_grad():
        for s in seqs:
            model(input_ids=s[None])
            for n in names:
                x = inputs[n][0].double()
                sums[n].append(x.sum(0))
                x_scaled = x / x.max().abs()
                covs[n] = covs[n] + x_scaled.T @ x_scaled
    for h in handles:
        h.remove()
    return {n: torch.stack(v) for n, v in sums.items()}, covs


def assert_same_stats(a: CaptureStats, b: CaptureStats, exact=True):
    assert a.module_keys == b.module_keys
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.sample_hashes, b.sample_hashes)
    # Not exact: the same samples in batches of other shapes, whose float32 activations agree only to float32's
    # precision on another machine's kernels (the float64 sums do not make them agree further).
    close = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=1e-5, atol=1e-5))
    assert set(a.sums) == set(b.sums) and all(close(a.sums[k], b.sums[k]) for k in a.sums)
    assert set(a.covariances) == set(b.covariances)
    assert all(close(a.covariances[k], b.covariances[k]) for k in a.covariances)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_match_unpadded_samples(llama, seqs, side):
    stats = capture(llama, batched(seqs, 4, side), LLAMA_TARGETS, covariance=True, progress=False)
    names = [n for n, _ in llama.named_modules() if n.split(".")[-1] in LLAMA_TARGETS]
    sums, covs = direct(llama, seqs, names)
    assert stats.n_samples == len(seqs) and stats.tokens.tolist() == [len(s) for s in seqs]
    assert stats.n_tokens == sum(len(s) for s in seqs)
    for name in names:
        got, tokens = stats.inputs(name)
        assert got.dtype == torch.float64 and torch.equal(tokens, stats.tokens)
        torch.testing.assert_close(got, sums[name], rtol=1e-5, atol=1e-5)
        cov, n_samples = stats.covariance(name)
        assert n_samples == stats.n_samples
        torch.testing.assert_close(cov, covs[name], rtol=1e-5, atol=1e-4)
    # q/k/v and gate/up read one tensor: one entry each per layer, 4 distinct inputs per layer.
    assert len(stats.sums) == 4 * llama.config.num_hidden_layers
    layer0 = "model.layers.0."
    assert stats.module_keys[layer0 + "self_attn.v_proj"] == stats.module_keys[layer0 + "self_attn.q_proj"]
    assert stats.module_keys[layer0 + "mlp.up_proj"] == stats.module_keys[layer0 + "mlp.gate_proj"]
    assert stats.module_keys[layer0 + "self_attn.o_proj"] != stats.module_keys[layer0 + "self_attn.q_proj"]
    # The dataset fingerprint sees real tokens only: padding side and batching do not change it.
    alone = capture(llama, [pad([s]) for s in seqs], ["o_proj"], progress=False)
    assert alone.dataset_fingerprint == stats.dataset_fingerprint


def test_shared_input_equals_separate_capture(llama, seqs):
    shared = capture(llama, batched(seqs, 4), ["q_proj", "k_proj", "v_proj"], progress=False)
    for target in ["k_proj", "v_proj"]:
        alone = capture(llama, batched(seqs, 4), [target], progress=False)
        for layer in range(2):
            name = f"model.layers.{layer}.self_attn.{target}"
            assert alone.module_keys == {n: n for n in alone.module_keys}
            assert torch.equal(shared.inputs(name)[0], alone.inputs(name)[0])


def test_gpt2_conv1d(gpt2, seqs):
    targets = ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    stats = capture(gpt2, batched(seqs, 3, "left"), targets, covariance=True, progress=False)
    names = [n for n, m in gpt2.named_modules() if isinstance(m, transformers.pytorch_utils.Conv1D)]
    assert sorted(stats.module_keys) == sorted(names) and len(names) == 8
    sums, covs = direct(gpt2, seqs, names)
    for name in names:
        torch.testing.assert_close(stats.inputs(name)[0], sums[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.covariance(name)[0], covs[name], rtol=1e-5, atol=1e-4)
    assert stats.sums["transformer.h.0.mlp.c_proj"].shape == (len(seqs), 4 * 32)


def test_forward_stops_after_the_last_captured_layer(llama, seqs):
    calls = []
    handle = llama.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(llama, batched(seqs, 3), ["q_proj"], progress=False)
    finally:
        handle.remove()
    assert len(calls) == 1  # only the first forward (which discovers the layers) reaches lm_head


def test_halves_concatenate_to_the_full_capture(llama, seqs):
    full = capture(llama, batched(seqs, 3), LLAMA_TARGETS, covariance=True, progress=False)
    parts = [
        capture(llama, batched(part, 3), LLAMA_TARGETS, covariance=True, progress=False)
        for part in (seqs[:5], seqs[5:])
    ]
    joined = CaptureStats.concat(parts)
    assert joined.dataset_fingerprint == full.dataset_fingerprint
    # The first batch is the same computation in both (same samples, same shape): exact. The rest ran in
    # batches of other shapes, and covariances are summed in another order: float32 tolerance.
    q_proj = "model.layers.0.self_attn.q_proj"
    assert torch.equal(joined.sums[q_proj][:3], full.sums[q_proj][:3])
    assert_same_stats(joined, full, exact=False)
    with pytest.raises(ValueError, match="different target modules"):
        CaptureStats.concat([parts[0], capture(llama, batched(seqs, 3), ["o_proj"], progress=False)])


def test_save_load_roundtrip_and_tamper_check(llama, seqs, tmp_path):
    stats = capture(llama, batched(seqs, 4), ["q_proj", "down_proj"], covariance=True, progress=False)
    stats.save(tmp_path / "c")
    loaded = CaptureStats.load(tmp_path / "c")
    assert_same_stats(loaded, stats)
    assert loaded.model_fingerprint == stats.model_fingerprint
    shard = next((tmp_path / "c" / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        CaptureStats.load(tmp_path / "c")


class Killed(Exception):
    pass


def killed_after(batches, n):
    yield from batches[:n]
    raise Killed


def same_tree(a, b):
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)
    return files_a


def test_resumed_capture_is_byte_identical(llama, seqs, tmp_path):
    batches = batched(seqs, 2)  # 6 batches, shards of 3 samples: batches straddle shard boundaries
    kwargs = dict(covariance=True, progress=False, samples_per_shard=3)
    full = capture(llama, batches, LLAMA_TARGETS, out_dir=tmp_path / "full", **kwargs)
    assert len(list((tmp_path / "full" / "shards").iterdir())) == 4 * 8  # 11 samples -> 4 shards x 8 distinct inputs
    # Same statistics as in memory (covariances summed per shard, so equal up to rounding).
    assert_same_stats(full, capture(llama, batches, LLAMA_TARGETS, **kwargs), exact=False)

    forwards = []
    handle = llama.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(Killed):  # killed after 4 batches = 8 samples: shards 0 and 1 complete
            capture(llama, killed_after(batches, 4), LLAMA_TARGETS, out_dir=tmp_path / "resumed", **kwargs)
        forwards.clear()
        resumed = capture(llama, batches, LLAMA_TARGETS, out_dir=tmp_path / "resumed", **kwargs)
        assert len(forwards) == 3  # batch 3 straddles shards 1/2; batches 0-2 are skipped
        same_tree(tmp_path / "full", tmp_path / "resumed")
        assert_same_stats(resumed, full)

        # A lost last shard is recomputed alone: only the two batches holding its samples run.
        next((tmp_path / "resumed" / "shards").glob("*.00003.safetensors")).unlink()
        forwards.clear()
        capture(llama, batches, LLAMA_TARGETS, out_dir=tmp_path / "resumed", **kwargs)
        assert len(forwards) == 2
        same_tree(tmp_path / "full", tmp_path / "resumed")
    finally:
        handle.remove()
    # Other data into the same directory is refused, not mixed.
    with pytest.raises(ValueError, match="other samples"):
        capture(llama, batched(seqs[::-1], 2), LLAMA_TARGETS, out_dir=tmp_path / "resumed", **kwargs)


def test_errors_name_the_problem(llama, seqs):
    batches = batched(seqs, 4)
    with pytest.raises(ValueError, match="'nope_proj' matches no module"):
        capture(llama, batches, ["q_proj", "nope_proj"], progress=False)
    with pytest.raises(ValueError, match="'model.layers.0.input_layernorm' is a LlamaRMSNorm"):
        capture(llama, batches, ["input_layernorm"], progress=False)
    with pytest.raises(ValueError, match="empty"):
        capture(llama, [], ["q_proj"], progress=False)
    with pytest.raises(ValueError, match="'attention_mask'"):
        capture(llama, [{"input_ids": batches[0]["input_ids"]}], ["q_proj"], progress=False)
    llama.model.unused = torch.nn.Linear(32, 32)
    try:
        with pytest.raises(ValueError, match="'model.unused' was never reached"):
            capture(llama, batches, ["q_proj", "unused"], progress=False)
    finally:
        del llama.model.unused
    torch.manual_seed(3)
    broken = transformers.LlamaForCausalLM(llama.config).eval()
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="'model.layers.1.self_attn.q_proj' input has NaN or Inf"):
        capture(broken, batches, ["q_proj"], progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_on_gpu_matches_cpu(llama, seqs):
    import copy

    cpu = capture(llama, batched(seqs, 4, "left"), LLAMA_TARGETS, covariance=True, progress=False)
    gpu = capture(copy.deepcopy(llama).cuda(), batched(seqs, 4, "left"), LLAMA_TARGETS, covariance=True, progress=False)
    assert gpu.model_fingerprint == cpu.model_fingerprint and gpu.sums[next(iter(gpu.sums))].device.type == "cpu"
    for key in cpu.sums:
        torch.testing.assert_close(gpu.sums[key], cpu.sums[key], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gpu.covariances[key], cpu.covariances[key], rtol=1e-4, atol=1e-3)
