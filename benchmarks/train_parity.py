"""Training parity: step time of SC-LoRA vs plain LoRA on the testbed (goal: sclora / lora = 1.00 +- 0.03), and of
SC-LoRA with `freeze_basis`. The runs are interleaved (lora, sclora, sclora_freeze_basis, lora, ...) so machine
noise hits every variant; each run trains `--steps` steps with `sclora.runs.train` and the first `--skip` are dropped.

    python -m benchmarks.train_parity [--device cuda] [--rounds 5] [--steps 30] [--skip 5] [--beta 0.8]

The Trainer picks the device itself (CUDA when present); --device only labels and synchronises the timing.
"""

from __future__ import annotations

import statistics
import time

from transformers import TrainerCallback

import sclora
from benchmarks import workloads
from benchmarks.record import arguments, goal, parse, synchronize, write_result
from sclora.runs.inputs import Given

NAME = "train_parity"
GOAL = "1.00 +- 0.03"
VARIANTS = {"lora": "lora", "sclora": "sclora", "sclora_freeze_basis": "sclora_frozen"}  # name -> method


class StepTimes(TrainerCallback):
    """Wall seconds of every optimizer step (forward, backward and update), CUDA work included."""

    def __init__(self, device: str):
        self.device, self.times, self._start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self._start)


def main(argv: list[str] | None = None) -> None:
    parser = arguments(f"benchmarks.{NAME}", __doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs of each variant")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=5, help="first steps of each run left out (warm-up)")
    parser.add_argument("--beta", type=float, default=0.8)
    parser.add_argument("--real", action="store_true", help="the real model (make real) instead of the testbed")
    args = parse(parser, argv)
    bed = workloads.real() if args.real else workloads.testbed()
    base = bed.model()
    targets = bed.lora.target_modules
    pos = sclora.capture(base, bed.batches(bed.pos), targets, progress=False)
    neg = sclora.capture(base, bed.batches(bed.neg), targets, progress=False)
    spaces = sclora.sclora_subspaces(base, bed.lora, pos, neg, args.beta, normalize=bed.params.solve.normalize)

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name, method in VARIANTS.items():
            steps = StepTimes(args.device)
            bed.run(method, bed.settings(method, round_, max_steps=args.steps), Given(subspaces=spaces), [steps])
            times[name] += steps.times[args.skip :]
    median = {name: statistics.median(t) for name, t in times.items()}
    figures = {f"{name}.median_step_s": median[name] for name in VARIANTS}
    figures["sclora/lora"] = median["sclora"] / median["lora"]
    figures["sclora_freeze_basis/lora"] = median["sclora_freeze_basis"] / median["lora"]
    settings = {
        "model": "real" if args.real else "testbed", "task": bed.task_name, "rounds": args.rounds,
        "steps_per_run": args.steps,
        "skipped_steps_per_run": args.skip, "beta": args.beta, "normalize": bed.params.solve.normalize,
        "batch_size": bed.params.train.batch_size, "max_length": bed.params.train.max_length,
        "lora": {"r": bed.lora.r, "alpha": bed.lora.lora_alpha, "target_modules": sorted(targets)},
        "statistic": "median over every kept step of every run, runs interleaved by variant",
    }  # fmt: skip
    goals = {"sclora/lora": goal(figures["sclora/lora"], GOAL)}
    write_result(NAME, args.device, settings, figures, goals, args.out, args.command)


if __name__ == "__main__":
    main()
