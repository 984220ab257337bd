"""Convergence: optimizer steps each method needs to reach vanilla LoRA's final training loss on the testbed's
benign task, mean over seeds. Every method trains with its own learning rate from params.yaml
(`train.learning_rates`) for `train.max_steps` steps; the loss comes from `sclora.runs.train`'s loss callback.

A run's loss at step t is the mean of the last `--window` logged losses (one per step), so one lucky batch does
not count as reaching the target. The target of seed s is LoRA's smoothed loss at its last step with seed s;
a method reaches it at the first step whose smoothed loss is at or below it (None: not within max_steps).

    python -m benchmarks.convergence [--seeds 0 1 2] [--methods lora pissa ...] [--window 10] [--beta 0.8]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import sclora
from benchmarks import workloads
from benchmarks.record import arguments, parse, write_result
from sclora.method.table import PAPER_BASELINES
from sclora.runs.inputs import Given

NAME = "convergence"
METHODS = [*PAPER_BASELINES, "sclora"]


def smoothed(losses: Sequence[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """(step, mean of the last `window` losses up to that step), from the window-th logged step on."""
    return [
        (losses[i][0], statistics.fmean(loss for _, loss in losses[i - window + 1 : i + 1]))
        for i in range(window - 1, len(losses))
    ]


def steps_to_reach(losses: Sequence[tuple[int, float]], target: float, window: int) -> int | None:
    """The first step whose smoothed loss is <= target, None when no step gets there."""
    return next((step for step, loss in smoothed(losses, window) if loss <= target), None)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(f"benchmarks.{NAME}", __doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--window", type=int, default=10, help="logged losses averaged into one")
    parser.add_argument("--beta", type=float, default=0.8)
    args = parse(parser, argv)
    methods = ["lora"] + [m for m in args.methods if m != "lora"]  # LoRA sets the targets
    bed = workloads.testbed()
    base = bed.model()
    targets = bed.lora.target_modules
    # With covariances, as the pipeline's capture stage: corda_ipm reads D+'s, corda_kpm D-'s.
    pos = sclora.capture(base, bed.batches(bed.pos), targets, covariance=True, progress=False)
    neg = sclora.capture(base, bed.batches(bed.neg), targets, covariance=True, progress=False)
    spaces = sclora.sclora_subspaces(base, bed.lora, pos, neg, args.beta, normalize=bed.params.solve.normalize)

    losses: dict[str, dict[int, list[tuple[int, float]]]] = {m: {} for m in methods}
    final: dict[str, dict[int, float]] = {m: {} for m in methods}
    for seed in args.seeds:
        for method in methods:
            history: list[tuple[int, float]] = []

            def record_loss(step: int, logs: dict, history=history) -> None:
                history.append((step, logs["loss"]))

            inputs = Given(pos=pos, neg=neg, subspaces=spaces)
            bed.run(method, bed.settings(method, seed), inputs, callbacks=[record_loss])
            losses[method][seed] = history
            final[method][seed] = smoothed(history, args.window)[-1][1]

    figures = {}
    for method in methods:
        reached = [steps_to_reach(losses[method][s], final["lora"][s], args.window) for s in args.seeds]
        hits = [r for r in reached if r is not None]
        figures[f"{method}.steps_to_lora_final_loss"] = statistics.fmean(reached) if len(hits) == len(reached) else None
        figures.update({f"{method}.seed{s}.steps": r for s, r in zip(args.seeds, reached, strict=True)})
        figures[f"{method}.seeds_reached"] = len(hits)
        figures[f"{method}.final_loss_mean"] = statistics.fmean(final[method].values())
    figures.update({f"lora.seed{s}.target_loss": final["lora"][s] for s in args.seeds})
    train = bed.params.train
    settings = {
        "model": "testbed", "task": "benign", "seeds": args.seeds, "methods": methods, "window": args.window,
        "max_steps": train.max_steps, "batch_size": train.batch_size, "warmup_ratio": train.warmup_ratio,
        "learning_rates": {m: bed.settings(m, 0).lr for m in methods}, "beta": args.beta,
        "normalize": bed.params.solve.normalize, "capture": "params.yaml capture.samples_pos/samples_neg, covariance",
        "steps_to_lora_final_loss": "mean over seeds; null unless every seed reached the target",
        "summary": [f"{m}.steps_to_lora_final_loss" for m in methods],
    }  # fmt: skip
    write_result(NAME, args.device, settings, figures, {}, args.out, args.command)


if __name__ == "__main__":
    main()
