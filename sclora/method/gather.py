"""Capture per-sample, token-summed inputs of target linear layers (the gather step of SC-LoRA).

One forward pass over the data serves every beta and rank: the solve only needs s_i = sum_t x_{i,t} per
sample (and its token count T_i), because y_i = W s_i + T_i b. Modules that read the very same input
tensor (q/k/v, gate/up) are captured once. Optional input covariances feed CorDA, computed as PEFT's CorDA
hook computes them (`peft/tuners/lora/corda.py`, `calib_cov_distribution`): each sample's real tokens X_i
divided by |max(X_i)|, then sum_i X_i^T X_i, later divided by the number of samples.

Storage: one safetensors shard per (layer input, sample range) under `shards/`, and `manifest.parquet`
with one row per shard. `capture(..., out_dir=...)` writes each shard as soon as its samples are done,
atomically, and a re-run skips the shards already on disk without running the model on their batches.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from sclora.ops.atomic import atomic_file
from sclora.ops.digest import file_sha256

MANIFEST = "manifest.parquet"
SHARDS = "shards"
LINEAR_TYPES = (torch.nn.Linear, Conv1D)
# One row per shard. dataset_fingerprint: hash of the shard's samples' real token ids.
SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("key", "modules")]
    + [(name, pa.int64()) for name in ("shard", "sample_start", "samples", "d_in", "tokens")]
    + [("covariance", pa.bool_())]
    + [(name, pa.string()) for name in ("dataset_fingerprint", "model_fingerprint", "file", "sha256")]
)


@dataclass
class CaptureStats:
    """Captured statistics. One entry per distinct layer input ("key"); `module_keys` maps module -> key.

    sums[key]: (N, d_in) float64 token-summed inputs; tokens: (N,) int64 real tokens per sample;
    sample_hashes: (N,) int64 hash of each sample's real token ids; covariances[key]: (d_in, d_in)
    float64 sum over samples of X_i^T X_i / max(X_i)^2, X_i the sample's real-token inputs (PEFT's CorDA
    weighting; empty unless captured with covariance=True).
    """

    sums: dict[str, torch.Tensor]
    tokens: torch.Tensor
    sample_hashes: torch.Tensor
    module_keys: dict[str, str]
    covariances: dict[str, torch.Tensor] = field(default_factory=dict)
    model_fingerprint: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def dataset_fingerprint(self) -> str:
        return _fingerprint(self.sample_hashes)

    def _key(self, module_name: str) -> str:
        if module_name not in self.module_keys:
            raise KeyError(f"module {module_name!r} was not captured (captured: {sorted(self.module_keys)})")
        return self.module_keys[module_name]

    def inputs(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (N, d_in) float64, tokens (N,) int64) for one target module."""
        return self.sums[self._key(module_name)], self.tokens

    def covariance(self, module_name: str) -> tuple[torch.Tensor, int]:
        """(sum over samples of X_i^T X_i / max(X_i)^2 (d_in, d_in) float64, number of samples): PEFT's CorDA
        covariance is the first divided by the second."""
        key = self._key(module_name)
        if key not in self.covariances:
            raise KeyError(f"no covariance for {module_name!r}: capture with covariance=True")
        return self.covariances[key], self.n_samples

    def save(self, directory: str | os.PathLike) -> None:
        """Write one shard per layer input plus the manifest (readable by `load`)."""
        rows = [
            _write_shard(
                Path(directory),
                key,
                self._modules(key),
                0,
                0,
                self.sums[key],
                self.tokens,
                self.sample_hashes,
                self.covariances.get(key),
                self.model_fingerprint,
            )
            for key in self.sums
        ]
        _write_manifest(Path(directory), rows)

    def _modules(self, key: str) -> list[str]:
        return [m for m, k in self.module_keys.items() if k == key]

    @classmethod
    def load(cls, directory: str | os.PathLike, verify: bool = True) -> CaptureStats:
        """Read a directory written by `save` or `capture(out_dir=...)`; `verify` checks each shard's sha256."""
        directory = Path(directory)
        if not (directory / MANIFEST).exists():
            raise FileNotFoundError(f"no {MANIFEST} in {directory}")
        rows = sorted(pq.read_table(directory / MANIFEST).to_pylist(), key=lambda r: (r["key"], r["shard"]))
        if not rows:
            raise ValueError(f"{directory / MANIFEST} lists no shards")
        fingerprints = {r["model_fingerprint"] for r in rows}
        if len(fingerprints) != 1:
            raise ValueError(f"{directory} mixes shards of several models: {sorted(fingerprints)}")
        sums, covs, module_keys, per_key_samples = {}, {}, {}, {}
        for row in rows:
            path = directory / row["file"]
            if verify and file_sha256(path) != row["sha256"]:
                raise ValueError(f"shard {path} does not match its sha256 in the manifest")
            t = load_file(path)
            key = row["key"]
            sums.setdefault(key, []).append(t["sums"])
            per_key_samples.setdefault(key, []).append((t["tokens"], t["sample_hashes"]))
            if row["covariance"]:
                covs[key] = covs[key] + t["covariance"] if key in covs else t["covariance"]
            module_keys.update({m: key for m in row["modules"].split(",")})
        tokens, hashes = (torch.cat(parts) for parts in zip(*next(iter(per_key_samples.values())), strict=True))
        for key, parts in per_key_samples.items():
            t, h = (torch.cat(p) for p in zip(*parts, strict=True))
            if not (torch.equal(t, tokens) and torch.equal(h, hashes)):
                raise ValueError(f"{directory}: shards of {key!r} cover other samples than the rest")
        return cls({k: torch.cat(v) for k, v in sums.items()}, tokens, hashes, module_keys, covs, fingerprints.pop())

    @staticmethod
    def concat(parts: list[CaptureStats]) -> CaptureStats:
        """Join captures of disjoint, consecutive sample ranges (e.g. one per worker), in order."""
        if not parts:
            raise ValueError("concat needs at least one CaptureStats")
        first = parts[0]
        for p in parts[1:]:
            if p.module_keys != first.module_keys:
                raise ValueError("concat: parts captured different target modules")
            if p.model_fingerprint != first.model_fingerprint:
                raise ValueError("concat: parts were captured from different models (model_fingerprint differs)")
            if set(p.covariances) != set(first.covariances):
                raise ValueError("concat: some parts have covariances and others do not")
        return CaptureStats(
            {k: torch.cat([p.sums[k] for p in parts]) for k in first.sums},
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.sample_hashes for p in parts]),
            dict(first.module_keys),
            {k: sum(p.covariances[k] for p in parts) for k in first.covariances},
            first.model_fingerprint,
        )


def _fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _write_shard(directory, key, modules, shard, start, sums, tokens, hashes, cov, model_fp) -> dict:
    """Write one shard atomically (temp file + rename) and return its manifest row."""
    tensors = {"sums": sums.contiguous(), "tokens": tokens.contiguous(), "sample_hashes": hashes.contiguous()}
    if cov is not None:
        tensors["covariance"] = cov.contiguous()
    name = f"{SHARDS}/{key}.{shard:05d}.safetensors"
    path = directory / name
    with atomic_file(path) as staging:
        save_file(tensors, str(staging))
    return dict(
        key=key,
        modules=",".join(modules),
        shard=shard,
        sample_start=start,
        samples=int(sums.shape[0]),
        d_in=int(sums.shape[1]),
        tokens=int(tokens.sum()),
        covariance=cov is not None,
        dataset_fingerprint=_fingerprint(hashes),
        model_fingerprint=model_fp,
        file=name,
        sha256=file_sha256(path),
    )


def _write_manifest(directory: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["shard"], r["key"]))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_file(directory / MANIFEST) as staging:
        pq.write_table(table, staging)


def resolve_targets(model: torch.nn.Module, target_modules: str | Iterable[str]) -> dict[str, torch.nn.Module]:
    """Target modules by PEFT's rules: a string is a regex on the full name; a list matches full names or
    name suffixes ("q_proj" matches "model.layers.0.self_attn.q_proj"). Every target must match a linear layer."""
    named = dict(model.named_modules())
    if isinstance(target_modules, str):
        found = {n: m for n, m in named.items() if re.fullmatch(target_modules, n)}
        if not found:
            raise ValueError(f"target_modules regex {target_modules!r} matches no module in the model")
    else:
        found = {}
        for target in target_modules:
            hits = {n: m for n, m in named.items() if n == target or n.endswith("." + target)}
            if not hits:
                raise ValueError(f"target module {target!r} matches no module in the model")
            found.update(hits)
    for name, module in found.items():
        if not isinstance(module, LINEAR_TYPES):
            raise ValueError(f"target module {name!r} is a {type(module).__name__}, not nn.Linear or Conv1D")
    return {n: found[n] for n in named if n in found}  # model order


def model_fingerprint(modules: Mapping[str, torch.nn.Module]) -> str:
    """sha256 of the target layers' names, shapes, dtypes and weight/bias bytes."""
    h = hashlib.sha256()
    for name in sorted(modules):
        for pname, p in sorted(modules[name].named_parameters(recurse=False)):
            t = p.detach().cpu().contiguous()
            h.update(f"{name}.{pname}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.view(torch.uint8).numpy())  # the buffer itself: no copy of a large weight
    return h.hexdigest()[:16]


def _sample_hashes(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First 8 bytes of sha256 of each sample's real token ids (padding and padding side do not matter)."""
    out = [
        hashlib.sha256(row[m.bool()].to(torch.int64).numpy().tobytes()).digest()[:8]
        for row, m in zip(ids, mask, strict=True)
    ]
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in out], dtype=torch.int64)


class _StopForward(Exception):
    """Raised after the last distinct input is captured: the rest of the model (e.g. lm_head) is not needed."""


def _batch_tensors(batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    for name in ("input_ids", "attention_mask"):
        if name not in batch:
            raise ValueError(f"batch has no {name!r}")
    ids, mask = torch.as_tensor(batch["input_ids"]).cpu(), torch.as_tensor(batch["attention_mask"]).cpu()
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(f"input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must both be [B, T]")
    return ids, mask.to(torch.int64)


def _completed_shards(out: Path, targets: set[str], model_fp: str, size: int, covariance: bool) -> dict:
    """Shards of an earlier run in `out` that this run can keep: same targets, model and layout, sha intact."""
    if not (out / MANIFEST).exists():
        return {}
    by_shard: dict[int, list[dict]] = {}
    for row in pq.read_table(out / MANIFEST).to_pylist():
        by_shard.setdefault(row["shard"], []).append(row)
    done = {}
    for j, rows in by_shard.items():
        modules = {m for r in rows for m in r["modules"].split(",")}
        if modules == targets and all(
            r["model_fingerprint"] == model_fp
            and r["sample_start"] == j * size
            and r["samples"] <= size
            and r["samples"] == rows[0]["samples"]
            and r["covariance"] == covariance
            and (out / r["file"]).exists()
            and file_sha256(out / r["file"]) == r["sha256"]
            for r in rows
        ):
            done[j] = rows
    return done


class LayerInputHooks:
    """The forward pre-hooks of one capture and the state they share (as PEFT's EVA keeps its SVDHook's).

    Per batch, each target layer's input summed over real tokens (float64) and, with `covariance`, PEFT's CorDA
    covariance per shard. On the first forward pass it also finds layers that share one input tensor (q/k/v,
    gate/up) and records them in `module_keys` (module -> the module whose input it shares), so that later
    passes capture each input once and stop at the last one (`_StopForward`).
    """

    def __init__(self, module_keys: dict[str, str], covariance: bool) -> None:
        self.module_keys = module_keys
        self.covariance = covariance
        self.first = True
        self.seen: list[tuple[torch.Tensor, str]] = []  # first pass: (input tensor, module) by identity
        self.called: set[str] = set()
        self.stop: str | None = None  # the last input of a forward pass, once known
        self.mask: torch.Tensor | None = None  # this batch's real tokens [B, T]
        self.segments: list[tuple[int, int, int]] = []  # this batch's (shard, first row, end row) to capture
        self.sums: dict[str, torch.Tensor] = {}  # this batch: key -> [B, d_in]
        self.covs: dict[int, dict[str, torch.Tensor]] = {}  # shard -> key -> summed covariance

    def start_batch(self, mask: torch.Tensor, segments: list[tuple[int, int, int]]) -> None:
        self.mask, self.segments, self.sums = mask, segments, {}

    def end_first_pass(self) -> None:
        self.first, self.stop, self.seen = False, self.seen[-1][1], []

    def hook(self, name: str):
        def pre_hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            if self.first:
                if name in self.called:
                    raise ValueError(f"layer {name!r} runs more than once per forward pass: cannot capture it")
                self.called.add(name)
                # Shared inputs are found by tensor identity (q/k/v, gate/up), not by name.
                shared = [key for t, key in self.seen if t is x]
                if shared:
                    self.module_keys[name] = shared[0]
                    return
                self.module_keys[name] = name
                self.seen.append((x, name))
            self.accumulate(name, x)
            if name == self.stop:
                raise _StopForward

        return pre_hook

    def accumulate(self, key: str, x: torch.Tensor) -> None:
        mask = self.mask
        if x.ndim != 3 or x.shape[:2] != mask.shape:
            raise ValueError(f"layer {key!r} input has shape {tuple(x.shape)}, expected [B, T, d_in] as the batch")
        # where(), not a product: padded positions may hold NaN (fully masked attention rows). The sum is float64,
        # element by element, without a float64 copy of x (the same bits as summing such a copy).
        masked = torch.where(mask[..., None], x.detach(), 0.0)
        sums = masked.sum(1, dtype=torch.float64)
        if not torch.isfinite(sums).all():
            raise ValueError(f"layer {key!r} input has NaN or Inf on real tokens")
        self.sums[key] = sums.cpu()
        if self.covariance and self.segments:
            # PEFT's hook divides each sample (one per forward there) by its largest entry, signed, then abs.
            peak = torch.where(mask[..., None], x.detach(), -torch.inf).amax(dim=(1, 2)).abs().to(torch.float64)
            if not (peak > 0).all():
                raise ValueError(f"layer {key!r}: a sample's inputs have max 0: PEFT's CorDA scaling divides by it")
            scaled = masked.to(torch.float64) / peak[:, None, None]
        for j, lo, hi in self.segments if self.covariance else ():
            part = torch.einsum("btd,bte->de", scaled[lo:hi], scaled[lo:hi])
            shard = self.covs.setdefault(j, {})  # stays on the model's device until the shard is written
            shard[key] = shard[key] + part if key in shard else part


def capture(
    model: torch.nn.Module,
    batches: Iterable[Mapping],
    target_modules: str | Iterable[str],
    *,
    covariance: bool = False,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    samples_per_shard: int = 1024,
) -> CaptureStats:
    """Run `model` over `batches` (dicts with input_ids, attention_mask [B, T]) and capture, per sample,
    the sum over real tokens of each target layer's input (plus, if asked, the input covariances CorDA reads).

    With `out_dir`, statistics go to shards of `samples_per_shard` samples as they finish; a re-run
    skips complete shards (no forward pass over their batches) and ends with identical bytes.
    """
    modules = resolve_targets(model, target_modules)
    model_fp = model_fingerprint(modules)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    size = samples_per_shard if out is not None else None
    done = _completed_shards(out, set(modules), model_fp, size, covariance) if out is not None else {}
    rows = [r for j in sorted(done) for r in done[j]]
    module_keys: dict[str, str] = {m: r["key"] for r in rows for m in r["modules"].split(",")}
    keys_on_disk = dict(module_keys)
    hooks = LayerInputHooks(module_keys, covariance)
    open_shards: dict[int, dict] = {}
    result: list[CaptureStats] = []

    def finalize(j: int) -> None:
        buf = open_shards.pop(j)
        tokens, hashes = torch.cat(buf["tokens"]), torch.cat(buf["hashes"])
        if j in done:
            if done[j][0]["samples"] != len(tokens) or done[j][0]["dataset_fingerprint"] != _fingerprint(hashes):
                raise ValueError(f"{out}: shard {j} holds other samples than this data; use a fresh out_dir")
            return
        sums = {k: torch.cat(v) for k, v in buf["sums"].items()}
        shard = hooks.covs.pop(j, {})
        shard_covs = {}
        for k, s in sums.items() if covariance else ():  # d_in x d_in each: built only when asked for
            shard_covs[k] = shard[k].cpu() if k in shard else torch.zeros(s.shape[1], s.shape[1], dtype=torch.float64)
        if out is None:
            result.append(CaptureStats(sums, tokens, hashes, dict(module_keys), shard_covs, model_fp))
            return
        for key, s in sums.items():
            members = [m for m, k in module_keys.items() if k == key]
            rows.append(_write_shard(out, key, members, j, j * size, s, tokens, hashes, shard_covs.get(key), model_fp))
        _write_manifest(out, rows)

    handles = {n: m.register_forward_pre_hook(hooks.hook(n), with_kwargs=True) for n, m in modules.items()}
    device = next(model.parameters()).device
    # Positions from the mask, as generate() does: left-padded samples then see the same positions as unpadded.
    pass_positions = "position_ids" in inspect.signature(model.forward).parameters
    was_training = model.training
    model.eval()
    offset = 0
    try:
        total = len(batches) if hasattr(batches, "__len__") else None
        for batch in tqdm(batches, total=total, desc="capture", unit="batch", disable=not progress):
            ids, mask = _batch_tensors(batch)
            n = ids.shape[0]
            shard_of = [(offset + i) // size if size else 0 for i in range(n)]
            segments = [(j, shard_of.index(j), n - shard_of[::-1].index(j)) for j in sorted(set(shard_of))]
            todo = [s for s in segments if s[0] not in done]
            if todo:
                hooks.start_batch(mask.to(device).bool(), todo)
                inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device))
                if pass_positions:
                    inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
                try:
                    with torch.no_grad():
                        model(**inputs)
                except _StopForward:
                    pass
                if hooks.first:
                    missing = [m for m in modules if m not in hooks.called]
                    if missing:
                        raise ValueError(f"target layer {missing[0]!r} was never reached by the data")
                    if keys_on_disk and keys_on_disk != module_keys:
                        raise ValueError(f"{out} holds shards with another grouping of shared inputs")
                    for name, handle in handles.items():
                        if module_keys[name] != name:
                            handle.remove()
                    hooks.end_first_pass()
                missing = set(module_keys.values()) - set(hooks.sums)
                if missing:
                    raise ValueError(f"target layer {sorted(missing)[0]!r} was never reached by batch at {offset}")
            hashes, tokens = _sample_hashes(ids, mask), mask.sum(1)
            for j, lo, hi in segments:
                buf = open_shards.setdefault(j, dict(sums={}, tokens=[], hashes=[]))
                buf["tokens"].append(tokens[lo:hi])
                buf["hashes"].append(hashes[lo:hi])
                for key, s in hooks.sums.items() if j not in done else ():
                    buf["sums"].setdefault(key, []).append(s[lo:hi])
            offset += n
            for j in [j for j in sorted(open_shards) if size and offset >= (j + 1) * size]:
                finalize(j)
        if offset == 0:
            raise ValueError("batches is empty: nothing to capture")
        for j in sorted(open_shards):
            finalize(j)
    finally:
        for handle in handles.values():
            handle.remove()
        model.train(was_training)
    beyond = [j for j in done if j * size >= offset]
    if beyond:
        raise ValueError(f"{out} holds shard {beyond[0]} beyond the end of this data; use a fresh out_dir")
    return result[0] if out is None else CaptureStats.load(out)
