"""What every benchmark shares: the command line, timing, peak memory, goals, and the result JSON.

A result is {benchmark, machine, versions, settings, figures {name: value}, goals {name: {value, goal, met}}},
written to benchmarks/results/<benchmark>.json (benchmarks/results/gpu/ for CUDA runs) and printed.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import re
import resource
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "sclora")
KEYS = ("benchmark", "machine", "versions", "settings", "figures", "goals")
_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
# "<= 0.10", "< 60", or "1.00 +- 0.03" (a tolerance band, both ends included).
_GOAL = re.compile(r"^\s*(?:(<=|<|>=|>)\s*([-+0-9.eE]+)|([-+0-9.eE]+)\s*\+-\s*([0-9.eE]+))\s*$")


def arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every benchmark (`prog`, its module name) takes: --device and --out."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results, "
                        "benchmarks/results/gpu on CUDA)")  # fmt: skip
    return parser


def results_dir(device: str, out: Path | None = None) -> Path:
    """Where a run on `device` writes: GPU results are kept apart from the CPU ones."""
    if out is not None:
        return out
    return RESULTS / "gpu" if torch.device(device).type == "cuda" else RESULTS


def machine(device: str) -> dict:
    """The host, its load and the device, as the result records them."""
    info = {
        "host": platform.node(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "device": device,
    }  # fmt: skip
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def versions() -> dict:
    return {"python": platform.python_version(), **{name: version(name) for name in PACKAGES}}


def goal(value: float | None, spec: str) -> dict:
    """{"value", "goal", "met"}; `spec` is "<= 0.10", "< 60" or "1.00 +- 0.03". No value never meets a goal."""
    match = _GOAL.match(spec)
    if not match:
        raise ValueError(f"goal {spec!r}: expected '<= x', '< x', '>= x', '> x' or 'x +- tolerance'")
    op, bound, centre, tolerance = match.groups()
    if value is None:
        met = False
    elif op:
        met = _COMPARE[op](value, float(bound))
    else:
        met = abs(value - float(centre)) <= float(tolerance)
    return {"value": value, "goal": spec, "met": bool(met)}


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(torch.device(device))


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """(wall seconds, result) of fn(), with CUDA work finished on both ends."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


@contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """Peak memory of the block above what was in use when it began, in bytes, into the yielded dict.

    CUDA: torch's peak allocated bytes (reset at the start). CPU: the process's peak RSS (Linux VmHWM, reset
    by writing 5 to /proc/self/clear_refs), which counts every allocation torch, BLAS and Python make.
    """
    found: dict = {}
    if torch.device(device).type == "cuda":
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        found.update(method="torch.cuda.max_memory_allocated above the allocation at the start", start_bytes=start)
        yield found
        torch.cuda.synchronize(dev)
        found["peak_bytes"] = torch.cuda.max_memory_allocated(dev) - start
        return
    # The reset is what makes a peak of this block alone; without it the high-water mark of the whole process
    # would be read (and said so in `method`).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "peak RSS (VmHWM, reset through /proc/self/clear_refs) above RSS at the start"
    except OSError:
        method = "peak RSS of the whole process (getrusage ru_maxrss; no reset possible) above RSS at the start"
    start = _status_bytes("VmRSS")
    found.update(method=method, start_bytes=start)
    yield found
    peak = _status_bytes("VmHWM") if "VmHWM" in method else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    found["peak_bytes"] = peak - start
    found["peak_rss_bytes"] = peak


def in_fresh_process(fn: Callable, *args) -> object:
    """fn(*args) in a new Python process (spawned, so its memory starts clean), returning its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv` (default: the command line); `args.command` is the command as it would be typed."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", parser.prog, *argv])
    return args


def write_result(
    name: str,
    device: str,
    settings: dict,
    figures: dict,
    goals: dict,
    out: Path | None = None,
    command: str | None = None,
) -> Path:
    """Write and print one benchmark's result; returns the file's path. `command` goes into the settings."""
    if command is not None:
        settings = {**settings, "command": command}
    result = {
        "benchmark": name, "machine": machine(device), "versions": versions(), "settings": settings,
        "figures": figures, "goals": goals,
    }  # fmt: skip
    path = results_dir(device, out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(staging, path)
    print(summary(result))
    print(f"wrote {path}")
    return path


def summary(result: dict) -> str:
    """The result as text: figures, goals, machine and versions."""
    lines = [f"== {result['benchmark']}"]
    lines += [f"  {k}: {_number(v)}" for k, v in result["figures"].items()]
    for k, g in result["goals"].items():
        lines.append(f"  goal {k}: {_number(g['value'])} (goal {g['goal']}) {'met' if g['met'] else 'NOT met'}")
    lines.append("  machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()))
    lines.append("  versions: " + ", ".join(f"{k}={v}" for k, v in result["versions"].items()))
    return "\n".join(lines)


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
