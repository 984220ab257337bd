"""The report: results table, Pareto front, markdown and plots."""

import csv
import math

import numpy as np
import pytest
from PIL import Image

from sclora.analysis.report import COLUMNS, pareto_front, write_report
from sclora.method.table import PAPER_BASELINES

METHODS = tuple(PAPER_BASELINES)


def test_pareto_front_on_hand_made_points():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.2), (0.9, 0.05), (float("nan"), 1.0)]
    # (0.4,0.4) and (0.5,0.2) are dominated by (0.5,0.5); (0.9,0.05) by (0.9,0.1); NaN is never on it.
    assert pareto_front(points) == [0, 1, 3]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([(0.0, 0.0), (1.0, 1.0)]) == [1]
    assert pareto_front([]) == []


def _rows():
    """A small sweep: every method on two tasks, sclora at four betas, two seeds each."""
    rng = np.random.default_rng(0)
    rows = []
    configs = [(m, None) for m in METHODS] + [("sclora", b) for b in (0.0, 0.5, 0.8, 0.9)]
    for task in ("benign", "poisoned"):
        for method, beta in configs:
            for seed in (0, 1):
                keep = 0.3 if beta is None else 0.3 + 0.6 * beta
                rows.append(
                    {
                        "run": f"{task}-{method}-{beta}-{seed}",
                        "task": task,
                        "method": method,
                        "beta": beta,
                        "seed": seed,
                        "lr": 2e-3,
                        "utility": 0.8 - 0.3 * (beta or 0) + rng.normal(0, 0.02),
                        "knowledge": keep + rng.normal(0, 0.02),
                        "knowledge_logprob": -2 + keep,
                        "refusal_rate": keep,
                        "refusal_margin": keep - 0.5,
                        "attack_success_rate": None,
                        "benign_refusal_rate": 0.05,
                        "knowledge_forgetting": 0.9 - keep,
                        "safety_forgetting": 0.9 - keep,
                        "final_loss": 1.0 + rng.normal(0, 0.1),
                    }
                )
    return rows


def test_report_writes_table_markdown_and_plots(tmp_path):
    rows = _rows()
    histories = {row["run"]: [{"step": s, "loss": 3.0 / s} for s in range(1, 21)] for row in rows}
    spectra = {
        f"model.layers.{i}.self_attn.q_proj": {
            b: np.sort(np.linspace(-1, 2, 8) * (1 - b))[::-1] for b in (0.0, 0.5, 0.9)
        }
        for i in range(6)
    }
    out = write_report(rows, tmp_path / "report", loss_histories=histories, spectra=spectra)

    with (out / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        written = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert len(written) == len(rows)
    assert written[0]["attack_success_rate"] == ""  # missing stays missing, not "nan"
    assert float(written[0]["utility"]) == rows[0]["utility"]

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "beta_benign.png",
        "beta_poisoned.png",
        "loss.png",
        "spectra.png",
        "tradeoff_benign.png",
        "tradeoff_poisoned.png",
    ]
    for name in pngs:
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300

    report = (out / "report.md").read_text()
    for method in (*METHODS, "sclora"):
        assert f"| {method} |" in report
    for name in pngs:
        assert f"]({name})" in report
    # Seed spread is reported: two seeds give the mean and its 95 % interval.
    row = next(line for line in report.splitlines() if line.startswith("| benign | sclora | 0.5 | 2 |"))
    utility = [r["utility"] for r in rows if r["task"] == "benign" and r["method"] == "sclora" and r["beta"] == 0.5]
    assert f"{np.mean(utility):.3f} [" in row
    # Every method is paired with lora on the same seeds: sclora at 0.9 keeps more knowledge than lora by design.
    paired = report[report.index("## Paired against lora") :]
    line = next(line for line in paired.splitlines() if line.startswith("| benign | sclora | 0.9 | 2 |"))
    knowledge = line.split(" | ")[5]
    assert knowledge.startswith("+0.5") and knowledge.endswith("*"), line  # 0.3 + 0.54 vs 0.3
    assert not any(line.startswith("| benign | lora |") for line in paired.splitlines())
    # The paper's claims are checked on the same runs (sclora.analysis.claims; its own tests hold the rules).
    assert "## The paper's claims" in report and "- **Preservation rises with beta" in report
    # Knowledge grows with beta while utility falls, so sclora at beta 0.9 is on the knowledge front.
    assert "utility vs knowledge:" in report
    front_line = next(line for line in report.splitlines() if line.startswith("- benign, utility vs knowledge"))
    assert "sclora b=0.9" in front_line


def test_report_replaces_the_directory_and_rejects_bad_rows(tmp_path):
    rows = _rows()[:4]
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    write_report(rows, out)
    assert not (out / "stale.png").exists() and (out / "results.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging directory left behind

    with pytest.raises(ValueError, match="report row benign-lora-None-0: unknown column"):
        write_report([{**rows[0], "utilty": 0.5}], out)
    with pytest.raises(ValueError, match=r"report row benign-lora-None-0.utility: not a number"):
        write_report([{**rows[0], "utility": "high"}], out)
    with pytest.raises(ValueError, match="no runs"):
        write_report([], out)
    assert (out / "results.csv").is_file()  # a failed write leaves the previous report intact
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_single_seed_shows_means_only(tmp_path):
    rows = [r for r in _rows() if r["seed"] == 0 and r["task"] == "benign"]
    out = write_report(rows, tmp_path / "r")
    report = (out / "report.md").read_text()
    main, paired = report.split("## Paired against lora")
    table = [line for line in main.splitlines() if line.startswith("| benign")]
    assert len(table) == 10 and not any("[" in line for line in table)  # one seed: no interval
    differences = [line for line in paired.splitlines() if line.startswith("| benign")]
    assert len(differences) == 9 and not any("[" in line or "*" in line for line in differences)
    assert not math.isnan(float(next(csv.DictReader((out / "results.csv").open()))["utility"]))


def test_the_report_says_when_its_rows_ran_at_different_learning_rates():
    """One rate per configuration is no comparison at matched utility: the report says which rates, next to the
    table, and where the matched comparison is."""
    from sclora.analysis.report import rate_lines
    from sclora.analysis.results import Results

    def row(method, beta, lr):
        return {"task": "benign", "method": method, "beta": beta, "lr": lr}

    nan = float("nan")
    differ = " ".join(rate_lines(Results([row("lora", nan, 4e-3), row("sclora", 0.9, 2e-3), row("lora", nan, 4e-3)])))
    assert "ran at different learning rates** (lora 0.004, sclora 0.9 0.002)" in differ and "make protocol" in differ
    same = " ".join(rate_lines(Results([row("lora", nan, 4e-3), row("pissa", nan, 4e-3)])))
    assert "the same for every row" in same and "different" not in same
    assert rate_lines(Results([row("lora", nan, nan)])) == []
