"""Init cost: SC-LoRA (capture + solve + init, sclora's public API) vs PEFT's CorDA in kpm mode
(`preprocess_corda` + `get_peft_model`), and vs the project's own CorDA path (`capture(covariance=True)` +
`init_lora(..., "corda_kpm")`). Goals: wall-time ratio sclora / PEFT <= 0.10, peak-memory ratio <= 0.20.

Each side runs in a fresh process that builds the same model and data (seeded), then measures only the init:
wall time, and peak memory above what the loaded model already used (see `record.peak_memory`). sclora reads
D+ and D- (256 + 256 samples); CorDA kpm needs only D- and gets the same 256 D- samples, one sequence per
forward pass as PEFT's covariance hook expects. Workloads: the testbed model (its D+ / D-, params.yaml's LoRA
config) and a random-weight model of one Llama-2-7B-width decoder layer (32 random tokens per sample), all
seven projections targeted.

    python -m benchmarks.init_cost [--device cuda] [--workloads testbed llama2_7b_width] [--beta 0.8]
    python -m benchmarks.init_cost --workloads real --out benchmarks/results/real   # SmolLM2-135M (make real)
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from peft import get_peft_model
from peft.tuners.lora.config import CordaConfig
from peft.tuners.lora.corda import preprocess_corda

import sclora
from benchmarks import workloads
from benchmarks.record import arguments, goal, in_fresh_process, parse, peak_memory, timed, write_result
from sclora.method.inits import lora_layers

NAME = "init_cost"
SIDES = ("sclora", "peft_corda_kpm", "project_corda_kpm")
TIME_GOAL, MEMORY_GOAL = "<= 0.10", "<= 0.20"
TINY = {
    "kind": "llama",
    "layers": 1,
    "vocab": 64,
    "samples": 16,
    "tokens": 8,
    "batch_size": 8,
    "shape": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4},
}
WIDE = {
    "kind": "llama",
    "layers": 1,
    "vocab": 1024,
    "shape": workloads.LLAMA2_7B,
    "samples": 256,
    "tokens": 32,
    "batch_size": 32,
}


def _setup(workload: dict, device: str):
    """(model, LoRA config, D+ batches, D- batches, D- one sequence per batch) of a workload spec."""
    if workload["kind"] in ("testbed", "real"):
        bed = workloads.testbed() if workload["kind"] == "testbed" else workloads.real()
        return bed.model(device), bed.lora, bed.batches(bed.pos), bed.batches(bed.neg), bed.batches(bed.neg, 1)
    vocab, samples, tokens = workload["vocab"], workload["samples"], workload["tokens"]
    model = workloads.llama(workload["layers"], vocab=vocab, device=device, **workload["shape"])
    pos = workloads.random_batches(samples, tokens, workload["batch_size"], vocab, seed=1)
    neg = workloads.random_batches(samples, tokens, workload["batch_size"], vocab, seed=2)
    return model, workloads.lora_for(), pos, neg, workloads.random_batches(samples, tokens, 1, vocab, seed=2)


def measure_side(side: str, workload: dict, device: str, beta: float) -> dict:
    """One side's init on a freshly built model: seconds (total and per part) and peak memory.

    The side first runs once on a tiny model, so that one-time costs (lazy imports, BLAS/LAPACK set-up) fall
    outside the measurement on both sides alike.
    """
    _init(side, _setup(TINY, device), device, beta, lambda name, fn: fn())
    setup = _setup(workload, device)
    parts: dict[str, float] = {}

    def part(name, fn):
        seconds, result = timed(fn, device)
        parts[name] = seconds
        return result

    cpu = time.process_time()
    with peak_memory(device) as memory:
        peft_model = _init(side, setup, device, beta, part)
    cpu = time.process_time() - cpu  # every thread's CPU seconds: less sensitive than wall time to a loaded host
    return {"seconds": sum(parts.values()), **parts, "cpu_s": cpu, "layers": len(lora_layers(peft_model)), **memory}


def _init(side: str, setup: tuple, device: str, beta: float, part):
    """Initialise `setup`'s model by `side`; `part(name, fn)` runs (and times) each step."""
    model, lora, pos, neg, neg_single = setup
    targets = lora.target_modules
    if side == "sclora":
        stats = part(
            "capture_s",
            lambda: (
                sclora.capture(model, pos, targets, progress=False),
                sclora.capture(model, neg, targets, progress=False),
            ),
        )
        spaces = part("solve_s", lambda: sclora.sclora_subspaces(model, lora, *stats, beta, normalize="trace"))
        return part("init_s", lambda: sclora.init_lora(model, lora, "sclora", subspaces=spaces))
    if side == "peft_corda_kpm":
        config = replace(lora, init_lora_weights="corda", corda_config=CordaConfig(corda_method="kpm"))

        @torch.no_grad()
        def run_model():
            for batch in neg_single:
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))

        part("preprocess_s", lambda: preprocess_corda(model, config, run_model=run_model))
        return part("init_s", lambda: get_peft_model(model, config))
    if side == "project_corda_kpm":
        stats = part("capture_s", lambda: sclora.capture(model, neg, targets, covariance=True, progress=False))
        return part("init_s", lambda: sclora.init_lora(model, lora, "corda_kpm", neg=stats))
    raise ValueError(f"unknown side {side!r}; expected one of {', '.join(SIDES)}")


def compare(workload: dict, device: str, beta: float, sides=SIDES) -> dict[str, dict]:
    """Every side of one workload, each in its own fresh process, one after the other."""
    return {side: in_fresh_process(measure_side, side, workload, device, beta) for side in sides}


def figures_and_goals(label: str, measured: dict[str, dict]) -> tuple[dict, dict]:
    figures, goals = {}, {}
    for side, found in measured.items():
        figures.update({f"{label}.{side}.{k}": v for k, v in found.items() if k not in ("method", "start_bytes")})
    ours = measured["sclora"]
    for side in measured:
        if side == "sclora":
            continue
        time_ratio = ours["seconds"] / measured[side]["seconds"]
        memory_ratio = ours["peak_bytes"] / measured[side]["peak_bytes"]
        figures[f"{label}.time_ratio.sclora/{side}"] = time_ratio
        figures[f"{label}.cpu_time_ratio.sclora/{side}"] = ours["cpu_s"] / measured[side]["cpu_s"]
        figures[f"{label}.memory_ratio.sclora/{side}"] = memory_ratio
        if side == "peft_corda_kpm":
            goals[f"{label}.time_ratio"] = goal(time_ratio, TIME_GOAL)
            goals[f"{label}.memory_ratio"] = goal(memory_ratio, MEMORY_GOAL)
    return figures, goals


def main(argv: list[str] | None = None) -> None:
    parser = arguments(f"benchmarks.{NAME}", __doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["testbed", "llama2_7b_width"],
                        choices=["testbed", "llama2_7b_width", "real"])  # fmt: skip
    parser.add_argument("--beta", type=float, default=0.8)
    args = parse(parser, argv)
    specs = {"testbed": {"kind": "testbed"}, "llama2_7b_width": WIDE, "real": {"kind": "real"}}
    figures, goals, methods = {}, {}, set()
    for label in args.workloads:
        measured = compare(specs[label], args.device, args.beta)
        methods |= {found["method"] for found in measured.values()}
        more_figures, more_goals = figures_and_goals(label, measured)
        figures.update(more_figures)
        goals.update(more_goals)
    settings = {
        "workloads": {label: specs[label] for label in args.workloads}, "beta": args.beta, "normalize": "trace",
        "sides": {
            "sclora": "sclora.capture of D+ and D- (token sums) + sclora.sclora_subspaces + sclora.init_lora",
            "peft_corda_kpm": "peft preprocess_corda(kpm, run_model over D- one sequence at a time) + get_peft_model",
            "project_corda_kpm": "sclora.capture of D- with covariance=True + sclora.init_lora('corda_kpm')",
        },
        "testbed_samples": "params.yaml capture.samples_pos / samples_neg, capture.batch_size, adapter section",
        "memory": sorted(methods), "process": "one fresh spawned process per side; the model build is not timed",
    }  # fmt: skip
    write_result(NAME, args.device, settings, figures, goals, args.out, args.command)


if __name__ == "__main__":
    main()
