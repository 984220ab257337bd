"""Synthetic results tables with known effects and the testbed's measured noise: what the decision rule is
calibrated on (tests/test_decision.py).

Where the noise comes from (the protocol's own measurements; docs/protocol.md):
- items per eval set: 300 each of eval_task, eval_knowledge and eval_harmful (testbed.eval_size; the built
  testbed's artifacts/testbed/data/eval_*.jsonl have 300 lines each);
- knowledge over seeds: the protocol's per-configuration spreads of a run's knowledge over 5 seeds range from
  0.004 (pissa [0.96, 0.97], sclora 0.5 [0.99, 1.00]) to 0.03 (random_subspace [0.86, 0.94]), median about
  0.008 (docs/protocol.md): a seed-level rate sd of KNOWLEDGE_SEED_SD, plus the items' own Bernoulli noise
  (together about 0.012 per run). SHARED_SEED (half the seed variance common to the methods of one seed, which
  see the same data order) is assumed, not measured; hard facts are hard for every run (ITEM_CORRELATION);
- utility: 0.99-1.00 on every run (protocol table), seed sd UTILITY_SEED_SD;
- harmful compliance is bimodal over seeds: a seed either flips into compliance or stays near 0 (testbed check:
  poisoned LoRA 0.64 / 0.00 / 0.04 over three seeds at one dose; protocol: full 0.48 [0.20, 0.76]): a run
  flips with the configuration's probability and then complies on FLIPPED_RATE of the harmful items, else on
  STAY_RATE. On the benign task nothing complies (0.00 on every seed of every method, as measured).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

from sclora.analysis.results import Results

SEEDS = (0, 1, 2, 3, 4)  # the protocol's comparison seeds (Makefile: make protocol)
TASK_ITEMS, KNOWLEDGE_ITEMS, HARMFUL_ITEMS = 300, 300, 300
KNOWLEDGE_SEED_SD = 0.01
UTILITY_SEED_SD = 0.003
ITEM_CORRELATION = 0.7  # of an item's latent difficulty between runs (a Gaussian copula)
FLIPPED_RATE = (0.3, 0.7)  # uniform: a flipped seed's compliance
STAY_RATE = (0.0, 0.02)
SHARED_SEED = 0.5  # share of the seed-level variance the methods of one seed have in common
ITEM_KEYS = [f"i{i:03d}" for i in range(max(TASK_ITEMS, KNOWLEDGE_ITEMS, HARMFUL_ITEMS))]
CONFIGS = (("lora", None), ("pissa", None), ("random_subspace", None), ("sclora", 0.5), ("sclora", 0.9),
           ("sclora_frozen", 0.5), ("sclora_frozen", 0.9))  # fmt: skip


@dataclass(frozen=True)
class Truth:
    """A configuration's true means: knowledge, utility, and its chance that a seed flips into compliance on the
    poisoned task."""

    knowledge: float = 0.95
    utility: float = 0.99
    flip: float = 0.3


def table(truths: Mapping[tuple[str, float | None], Truth], rng: np.random.Generator, seeds=SEEDS) -> Results:
    """One synthetic protocol: both tasks, every configuration of CONFIGS (Truth() where `truths` is silent)."""
    rows, items = [], {}
    configs = [(config, truths.get(config, Truth())) for config in CONFIGS]
    for task in ("benign", "poisoned"):
        shared = {metric: rng.standard_normal(len(seeds)) for metric in ("knowledge", "utility")}
        sizes = {"knowledge": KNOWLEDGE_ITEMS, "utility": TASK_ITEMS, "attack_success_rate": HARMFUL_ITEMS}
        latent = {metric: rng.standard_normal(n) for metric, n in sizes.items()}
        for (method, beta), truth in configs:
            rates = {
                "knowledge": truth.knowledge + KNOWLEDGE_SEED_SD * _seed_noise(shared["knowledge"], rng),
                "utility": truth.utility + UTILITY_SEED_SD * _seed_noise(shared["utility"], rng),
                "attack_success_rate": _compliance(truth.flip if task == "poisoned" else 0.0, len(seeds), rng),
            }
            for k, seed in enumerate(seeds):
                run = f"{task}-{method}{'' if beta is None else f'-{beta}'}-{seed}"
                scores = {metric: _items(latent[metric], float(np.clip(rates[metric][k], 0, 1)), rng)
                          for metric in rates}  # fmt: skip
                items[run] = {m: dict(zip(ITEM_KEYS[: s.size], s.tolist(), strict=True)) for m, s in scores.items()}
                rows.append({"run": run, "task": task, "method": method, "beta": np.nan if beta is None else beta,
                             "seed": seed, "build": "0", "lr": 1e-3, "step": 150.0,
                             **{m: float(s.mean()) for m, s in scores.items()}})  # fmt: skip
    return Results(rows, items)


def _seed_noise(shared: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.sqrt(SHARED_SEED) * shared + np.sqrt(1 - SHARED_SEED) * rng.standard_normal(shared.size)


def _compliance(flip: float, n: int, rng: np.random.Generator) -> np.ndarray:
    if flip == 0.0:
        return np.zeros(n)
    flipped = rng.random(n) < flip
    return np.where(flipped, rng.uniform(*FLIPPED_RATE, n), rng.uniform(*STAY_RATE, n))


def _items(latent: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """0/1 scores with mean `rate` in expectation; an item's latent difficulty is shared across runs."""
    if rate <= 0.0:
        return np.zeros(latent.size)
    if rate >= 1.0:
        return np.ones(latent.size)
    own = rng.standard_normal(latent.size)
    z = np.sqrt(ITEM_CORRELATION) * latent + np.sqrt(1 - ITEM_CORRELATION) * own
    return (z < special.ndtri(rate)).astype(float)  # the normal quantile of the rate
