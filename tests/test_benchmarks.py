"""Benchmarks: the smallest one runs on a tiny model and writes a result of the shared schema; goals, the
convergence measure and peak memory behave as documented; gpu.sh parses; docs/benchmarks.md's table is the summary
of the result files. No timing is asserted."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import capture_overhead, summary, workloads
from benchmarks.convergence import steps_to_reach
from benchmarks.record import KEYS, RESULTS, goal, peak_memory

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4)


def test_capture_overhead_writes_the_result_schema(tmp_path):
    model = workloads.llama(1, vocab=64, **TINY)
    batches = workloads.random_batches(8, 6, 4, 64, seed=0)
    path = capture_overhead.run({"tiny": (model, batches, workloads.TARGETS)}, "cpu", 1, {"samples": 8}, tmp_path)

    result = json.loads(path.read_text())
    assert path == tmp_path / "capture_overhead.json"
    assert list(result) == list(KEYS)
    assert result["benchmark"] == "capture_overhead"
    assert result["settings"] == {"samples": 8}
    assert {"cpus", "load_average", "torch_threads", "device"} <= set(result["machine"])
    assert {"python", "torch", "transformers", "peft", "sclora"} <= set(result["versions"])
    figures = result["figures"]
    assert {"tiny.forward_s", "tiny.capture_s", "tiny.capture_covariance_s", "tiny.ratio"} <= set(figures)
    assert all(isinstance(v, float) and v > 0 for v in figures.values())
    assert figures["tiny.ratio"] == pytest.approx(figures["tiny.capture_s"] / figures["tiny.forward_s"])
    tiny_goal = result["goals"]["tiny.ratio"]
    assert tiny_goal == {"value": figures["tiny.ratio"], "goal": "<= 1.10", "met": figures["tiny.ratio"] <= 1.10}


def test_goal_specs():
    assert goal(0.05, "<= 0.10")["met"] and not goal(0.2, "<= 0.10")["met"]
    assert goal(59.9, "< 60")["met"] and not goal(60.0, "< 60")["met"]
    assert goal(1.02, "1.00 +- 0.03")["met"] and not goal(0.96, "1.00 +- 0.03")["met"]
    assert goal(None, "<= 0.10") == {"value": None, "goal": "<= 0.10", "met": False}
    with pytest.raises(ValueError, match="goal 'about 1'"):
        goal(1.0, "about 1")


def test_steps_to_reach_uses_the_smoothed_loss():
    losses = list(enumerate([5.0, 1.0, 5.0, 3.0, 2.0, 2.0], start=1))
    assert steps_to_reach(losses, 2.5, window=1) == 2  # one lucky batch counts without smoothing
    assert steps_to_reach(losses, 2.5, window=2) == 5  # (3 + 2) / 2 = 2.5 at step 5
    assert steps_to_reach(losses, 1.0, window=2) is None


def test_peak_memory_sees_an_allocation_inside_the_block():
    with peak_memory("cpu") as memory:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del big
    assert memory["peak_bytes"] >= 60 * 2**20
    assert "clear_refs" in memory["method"] or "ru_maxrss" in memory["method"]


def test_gpu_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], check=True)


def test_a_testbed_built_from_other_params_is_refused(tmp_path):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = tmp_path / "testbed" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    built = {**params["testbed"], "finetune_size": params["testbed"]["finetune_size"] + 1}
    (tmp_path / "testbed" / "params.json").write_text(json.dumps(built))
    params["model"]["path"] = str(base)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="built from other params than params.yaml's `testbed:`"):
        workloads.testbed(tmp_path / "params.yaml")


def test_summary_rewrites_only_the_table_between_the_markers(tmp_path):
    results = tmp_path / "results"  # the results' own files, no section folder
    results.mkdir()
    for path in RESULTS.glob("*.json"):
        (results / path.name).write_text(path.read_text())
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# prose\n\n{summary.START}\nold table\n{summary.END}\n\nmore prose\n")
    assert summary.write_doc(results, doc) == doc
    assert doc.read_text() == f"# prose\n\n{summary.START}\n{summary.table(results)}\n{summary.END}\n\nmore prose\n"
    doc.write_text("# prose without markers\n")
    with pytest.raises(ValueError, match="needs one"):
        summary.write_doc(results, doc)


def test_summary_writes_a_sections_table_between_its_own_markers(tmp_path):
    results = tmp_path / "results"
    (results / "real").mkdir(parents=True)
    for path in RESULTS.glob("*.json"):
        (results / path.name).write_text(path.read_text())
    (results / "real" / "train_parity.json").write_text((RESULTS / "train_parity.json").read_text())
    start, end = summary.markers("real")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"{summary.START}\nold\n{summary.END}\n\n## real\n{start}\nold\n{end}\n")
    summary.write_doc(results, doc)
    real = summary.table(results / "real")
    assert real.count("\n") == 2  # the header, its rule and one goal
    main = summary.table(results)
    assert doc.read_text() == f"{summary.START}\n{main}\n{summary.END}\n\n## real\n{start}\n{real}\n{end}\n"
    doc.write_text(f"{summary.START}\nold\n{summary.END}\n")  # results for a section the doc has no place for
    with pytest.raises(ValueError, match="benchmarks.summary real: start"):
        summary.write_doc(results, doc)


def test_the_docs_tables_are_the_summary_of_the_result_files():
    text = summary.DOC.read_text(encoding="utf-8")
    for section, rows in summary.tables(RESULTS).items():
        text = summary.with_table(text, rows, section)
    assert text == summary.DOC.read_text(encoding="utf-8"), "run `python -m benchmarks.summary`"
