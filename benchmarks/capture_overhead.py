"""Capture overhead: `sclora.capture` vs a plain forward pass over the same batches (goal: ratio <= 1.10).

On the testbed model (its D+ and D- batches) and on a random-weight Llama-2-7B-width model at reduced depth.
The three passes (forward, capture of token sums, capture with covariances as the pipeline's capture stage
does for CorDA) are interleaved `repeats` times after one warm-up each, and the medians compared.

    python -m benchmarks.capture_overhead [--device cuda] [--samples 64] [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from benchmarks import workloads
from benchmarks.record import arguments, goal, parse, timed, write_result
from sclora.method.gather import capture, model_fingerprint, resolve_targets

NAME = "capture_overhead"
GOAL = "<= 1.10"


def measure(model: torch.nn.Module, batches: Sequence[dict], targets: Sequence[str], device: str,
            repeats: int) -> dict[str, float]:  # fmt: skip
    """Median seconds of each pass over `batches` and the capture / forward ratios."""

    @torch.no_grad()
    def forward():
        for batch in batches:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))

    passes = {
        "forward": forward,
        "capture": lambda: capture(model, batches, targets, progress=False),
        "capture_covariance": lambda: capture(model, batches, targets, covariance=True, progress=False),
        # Part of every capture call, whatever the data: the sha256 of the target layers' weights.
        "fingerprint": lambda: model_fingerprint(resolve_targets(model, targets)),
    }
    times: dict[str, list[float]] = {name: [] for name in passes}
    for fn in passes.values():  # warm-up: allocator, kernels, lazy imports
        timed(fn, device)
    for _ in range(repeats):
        for name, fn in passes.items():
            times[name].append(timed(fn, device)[0])
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "forward_s": median["forward"], "capture_s": median["capture"],
        "capture_covariance_s": median["capture_covariance"], "fingerprint_s": median["fingerprint"],
        "ratio": median["capture"] / median["forward"],
        "ratio_covariance": median["capture_covariance"] / median["forward"],
    }  # fmt: skip


def run(models: dict[str, tuple[torch.nn.Module, Sequence[dict], Sequence[str]]], device: str, repeats: int,
        settings: dict, out=None, command: str | None = None):  # fmt: skip
    """Measure every named (model, batches, targets) and write the result."""
    figures, goals = {}, {}
    for label, (model, batches, targets) in models.items():
        found = measure(model, batches, targets, device, repeats)
        figures.update({f"{label}.{key}": value for key, value in found.items()})
        goals[f"{label}.ratio"] = goal(found["ratio"], GOAL)
    return write_result(NAME, device, settings, figures, goals, out, command)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(f"benchmarks.{NAME}", __doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="sequences through the random Llama model")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence on the random Llama model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the random Llama model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="the real model (make real) instead of the testbed and "
                        "the random Llama-2-7B-width model")  # fmt: skip
    args = parse(parser, argv)
    label, bed = ("real", workloads.real()) if args.real else ("testbed", workloads.testbed())
    models = {label: (bed.model(args.device), bed.batches(bed.pos + bed.neg), bed.lora.target_modules)}
    settings = {label: {"samples": len(bed.pos) + len(bed.neg), "batch_size": bed.batch_size,
                        "targets": sorted(bed.lora.target_modules)}}  # fmt: skip
    if not args.real:
        vocab = 1024
        models["llama2_7b_width"] = (
            workloads.llama(args.layers, vocab=vocab, device=args.device),
            workloads.random_batches(args.samples, args.tokens, args.batch_size, vocab, seed=1),
            workloads.TARGETS,
        )
        settings["llama2_7b_width"] = {**workloads.LLAMA2_7B, "layers": args.layers, "vocab": vocab,
                                       "samples": args.samples, "tokens": args.tokens, "batch_size": args.batch_size,
                                       "targets": workloads.TARGETS}  # fmt: skip
    settings |= {
        "repeats": args.repeats, "statistic": "median of interleaved repeats after one warm-up each",
        "goal_applies_to": "capture of token sums (what SC-LoRA needs); capture_covariance is reported only",
    }  # fmt: skip
    run(models, args.device, args.repeats, settings, args.out, args.command)


if __name__ == "__main__":
    main()
