"""Learning-forgetting fronts (sclora.analysis.fronts), the matched-utility table (sclora.analysis.matched), builds as
a blocking factor (sclora.analysis.intervals), the rule on it calibrated by simulation, and the frontier report:
synthetic points."""

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sclora.analysis.claims import check_claims
from sclora.analysis.decision import FAILS, HOLDS
from sclora.analysis.frontier_report import write_frontier_report
from sclora.analysis.fronts import (
    area_between,
    compliance,
    forgetting_at,
    knowledge_forgetting,
    pareto_front,
)
from sclora.analysis.intervals import build_differences, difference
from sclora.analysis.matched import MATCHED_RULE, matched_results

LRS = np.geomspace(1e-4, 3e-3, 6)  # 1.5 decades, as the shared grid
STEPS = (25, 50, 100)
LEVELS = (0.5, 0.8, 0.9)


def point(u, forgetting, build=0, method="lora", seed=0, lr=1e-3, step=100, beta=None, asr=math.nan, base=1.0):
    return {"build": build, "task": "poisoned", "method": method, "beta": beta, "seed": seed, "lr": lr,
            "step": step, "max_steps": 100, "utility": u, "knowledge": base - forgetting,
            "attack_success_rate": asr}  # fmt: skip


def lost(p):
    return 1.0 - p["knowledge"]  # base knowledge 1.0 in the hand-made points


def synthetic(rng, gains, builds=2, seeds=3):
    """A protocol's points: every configuration of `gains` (config -> knowledge kept over LoRA at any utility) on
    the grid, per build and seed. Utility is a logistic in log(lr x step); knowledge forgetting rises with utility
    (0.25 u^2) plus a build effect shared by the methods (sd 0.05), a run's own seed effect (sd 0.02) and point
    noise; compliance rises with utility likewise, equal for all configurations."""
    points, base = [], {}
    for build in range(builds):
        base[build] = {"knowledge": float(rng.uniform(0.85, 0.99))}
        build_knowledge, build_compliance = rng.normal(0, 0.05, 2)
        for seed, ((method, beta), gain) in itertools.product(range(seeds), gains.items()):
            shift = rng.normal(0, 0.05)
            offset = build_knowledge + rng.normal(0, 0.02) - gain
            harmful = build_compliance + rng.normal(0, 0.03)
            for lr, step in itertools.product(LRS, STEPS):
                x = np.log10(lr * step) + 1.5 + shift
                u = float(np.clip(1 / (1 + np.exp(-x / 0.25)) + rng.normal(0, 0.01), 0, 1))
                forgetting = offset + 0.25 * u**2 + rng.normal(0, 0.005)
                asr = float(np.clip(0.5 * u + 0.1 + harmful + rng.normal(0, 0.01), 0, 1))
                points.append(point(u, forgetting, build, method, seed, float(lr), step, beta, asr,
                                    base[build]["knowledge"]))  # fmt: skip
    return points, base


def test_the_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    points = [point(float(u), float(f)) for u, f in rng.integers(0, 6, (40, 2)) / 5]  # ties on purpose
    points.append(point(math.nan, 0.0))
    front = pareto_front(points, lost)
    u = [p["utility"] for p in front]
    assert u == sorted(u)

    def dominated(p):
        return any(q["utility"] >= p["utility"] and lost(q) <= lost(p) and (q["utility"], lost(q)) != (p["utility"],
                   lost(p)) for q in points if not math.isnan(q["utility"]))  # fmt: skip

    brute = [p for p in points if not math.isnan(p["utility"]) and not dominated(p)]
    assert sorted(map(id, front)) == sorted(map(id, brute))


def test_forgetting_at_a_level_stepwise_and_interpolated():
    # Front A (0.3, 0.02), B (0.6, 0.10), C (0.9, 0.30); D (0.5, 0.20) and E (0.8, 0.35) are dominated.
    points = [point(0.3, 0.02), point(0.6, 0.10), point(0.9, 0.30), point(0.5, 0.20), point(0.8, 0.35)]
    assert forgetting_at(points, 0.45, lost) == pytest.approx(0.02 + (0.45 - 0.3) / 0.3 * 0.08)
    assert forgetting_at(points, 0.45, lost, interpolate=False) == pytest.approx(0.10)  # least among B, C, D, E
    assert forgetting_at(points, 0.75, lost) == pytest.approx(0.20)  # halfway from B to C
    assert forgetting_at(points, 0.75, lost, interpolate=False) == pytest.approx(0.30)
    assert forgetting_at(points, 0.2, lost) == pytest.approx(0.02)  # below the front: its lowest point
    assert forgetting_at(points, 0.2, lost, interpolate=False) == pytest.approx(0.02)
    assert forgetting_at(points, 0.9, lost) == pytest.approx(0.30)
    assert forgetting_at(points, 0.95, lost) is None and forgetting_at(points, 0.95, lost, False) is None


def test_area_between_linear_fronts():
    a = [point(0.2, 0.2), point(1.0, 1.0)]  # forgetting = u
    b = [point(0.2, 0.1), point(0.7, 0.35)]  # forgetting = u / 2, up to utility 0.7
    # Integral of u/2: (high^2 - low^2) / 4, over the part both reach.
    assert area_between(a, b, lost, 0.4, 0.6) == pytest.approx((0.36 - 0.16) / 4)
    assert area_between(a, b, lost, 0.4, 0.9) == pytest.approx((0.49 - 0.16) / 4)
    # Below both fronts each holds its lowest point's forgetting: 0.1 x 0.2 on [0, 0.2].
    assert area_between(a, b, lost, 0.0, 0.6) == pytest.approx(0.02 + (0.36 - 0.04) / 4)
    assert area_between(b, a, lost, 0.4, 0.6) == pytest.approx(-(0.36 - 0.16) / 4)
    assert area_between(a, b, lost, 0.75, 0.9) is None  # b never reaches 0.75


def test_convergence_reads_the_first_checkpoint_at_the_rates_where_every_configuration_held_its_format():
    from sclora.analysis.matched import convergence_results

    def at(method, lr, u, collapse, step=10):
        return {**point(u, 0, method=method, lr=lr, step=step), "collapse_rate": collapse}

    points = [at("lora", 1e-4, 0.2, 0.0), at("lora", 1e-3, 0.4, 0.0), at("lora", 1e-2, 0.9, 0.0),
              at("sclora", 1e-4, 0.3, 0.0), at("sclora", 1e-3, 0.6, 0.0), at("sclora", 1e-2, 0.95, 0.5),
              at("lora", 1e-3, 0.99, 0.0, step=50)]  # fmt: skip
    rows = {r["method"]: r for r in convergence_results(points).rows}
    # 1e-2: sclora's format broke there, so neither is read at it; step 50 is not the first checkpoint
    assert rows["lora"]["first_checkpoint_utility"] == pytest.approx(0.3) and rows["lora"]["rates"] == 2
    assert rows["sclora"]["first_checkpoint_utility"] == pytest.approx(0.45)


def test_matched_rows_read_the_fronts_at_each_level():
    base = {0: {"knowledge": 0.9}, 1: {"knowledge": 0.8}}
    points = [point(0.4, 0.1, build=0, asr=0.2, base=0.9), point(0.6, 0.3, build=0, asr=0.4, base=0.9),
              point(0.7, 0.2, build=1, method="pissa", asr=0.5, base=0.8)]  # fmt: skip
    rows = {(r["task"], r["method"]): r for r in matched_results(points, base, (0.5, 0.65)).rows}
    assert set(rows) == {("poisoned at utility 0.5", "lora"), ("poisoned at utility 0.5", "pissa"),
                         ("poisoned at utility 0.65", "pissa")}  # lora's front stops at 0.6  # fmt: skip
    lora = rows[("poisoned at utility 0.5", "lora")]
    assert lora["knowledge"] == pytest.approx(0.9 - 0.2)  # base - the forgetting halfway from 0.1 to 0.3
    assert lora["attack_success_rate"] == pytest.approx(0.3)
    assert lora["utility"] == 0.5 and math.isnan(lora["lr"]) and math.isnan(lora["step"]) and lora["build"] == "0"
    pissa = rows[("poisoned at utility 0.65", "pissa")]
    assert pissa["knowledge"] == pytest.approx(0.6) and pissa["attack_success_rate"] == pytest.approx(0.5)


def as_runs(values):
    """{(build, seed): value} as runs without per-item scores."""
    return {(str(b), s): {"": float(v)} for (b, s), v in values.items()}


def test_the_blocked_estimate_is_the_mean_of_build_means_with_the_pooled_within_variance():
    rng = np.random.default_rng(1)
    seeds = {0: 3, 1: 4, 2: 5}  # unequal on purpose
    diffs = {(b, s): rng.normal(0.05 * b, 0.02) for b, n in seeds.items() for s in range(n)}
    zero = {unit: 0.0 for unit in diffs}
    got = difference(as_runs(diffs), as_runs(zero), blocks=True)
    groups = [np.array([diffs[(b, s)] for s in range(n)]) for b, n in seeds.items()]
    n, k = sum(seeds.values()), len(seeds)
    pooled = sum((g.size - 1) * g.var(ddof=1) for g in groups) / (n - k)
    se = math.sqrt(pooled * sum(1 / g.size for g in groups)) / k
    assert got.mean == pytest.approx(np.mean([g.mean() for g in groups])) and got.df == n - k
    assert got.se == pytest.approx(se)
    half = stats.t.ppf(0.975, n - k) * se
    interval = got.interval(0.95)
    assert (interval.low, interval.high) == (pytest.approx(got.mean - half), pytest.approx(got.mean + half))
    assert interval.blocks == 3 and "3 builds, build blocked" in interval.text()
    # The interaction: MS between builds / MS within, against F(k - 1, n - k).
    grand = np.concatenate(groups).mean()
    f = sum(g.size * (g.mean() - grand) ** 2 for g in groups) / (k - 1) / pooled
    test = build_differences(as_runs(diffs), as_runs(zero))
    assert test["f"] == pytest.approx(f) and test["p"] == pytest.approx(stats.f.sf(f, k - 1, n - k))
    assert test["df"] == [k - 1, n - k] and test["builds"]["1"]["seeds"] == 4


def test_equal_seeds_per_build_give_the_sum_of_the_builds_variances():
    rng = np.random.default_rng(2)
    diffs = {(b, s): rng.normal(0, 0.03) for b in range(2) for s in range(3)}
    got = difference(as_runs(diffs), as_runs(dict.fromkeys(diffs, 0.0)), blocks=True)
    groups = [np.array([diffs[(b, s)] for s in range(3)]) for b in range(2)]
    assert got.se == pytest.approx(math.sqrt(sum(g.var(ddof=1) / 3 for g in groups) / 4))


def test_one_build_or_one_seed_a_build_falls_back_to_the_existing_estimator():
    rng = np.random.default_rng(3)
    one_build = {(0, s): rng.normal(0.1, 0.02) for s in range(5)}
    one_seed = {(b, 0): rng.normal(0.1, 0.02) for b in range(4)}
    for diffs in (one_build, one_seed):
        a, b = as_runs(diffs), as_runs(dict.fromkeys(diffs, 0.0))
        blocked, plain = difference(a, b, blocks=True).interval(), difference(a, b).interval()
        assert (blocked.mean, blocked.low, blocked.high) == pytest.approx((plain.mean, plain.low, plain.high))
    plain = stats.ttest_1samp(list(one_build.values()), 0.0).confidence_interval(0.95)
    blocked = difference(as_runs(one_build), as_runs(dict.fromkeys(one_build, 0.0)), blocks=True).interval()
    assert (blocked.low, blocked.high) == (pytest.approx(plain.low), pytest.approx(plain.high))


def test_matched_utility_needs_no_utility_condition():
    # Utility is the level on both sides: as a condition it is an exact zero with no spread, which shows nothing.
    points, base = synthetic(np.random.default_rng(4), {("lora", None): 0.0, ("sclora", 0.9): 0.08})
    results = matched_results(points, base, LEVELS)
    with_condition = {c["id"]: c["verdict"] for c in check_claims(results, MATCHED_RULE)}
    matched = {c["id"]: c for c in check_claims(results, MATCHED_RULE, matched_utility=True)}
    assert with_condition["preserves_more"] != HOLDS
    assert matched["preserves_more"]["verdict"] == HOLDS
    assert all("utility" not in c["endpoints"] for c in matched["preserves_more"]["comparisons"])
    assert all("about these builds" in line for line in matched["preserves_more"]["evidence"])


def verdict_rates(gain, replicates, seed):
    rng = np.random.default_rng(seed)
    counts = Counter()
    for _ in range(replicates):
        points, base = synthetic(rng, {("lora", None): 0.0, ("sclora", 0.9): gain})
        claims = check_claims(matched_results(points, base, LEVELS), MATCHED_RULE, matched_utility=True)
        counts[next(c for c in claims if c["id"] == "preserves_more")["verdict"]] += 1
    return {verdict: count / replicates for verdict, count in counts.items()}


def test_equal_fronts_rarely_hold_or_fail_and_a_clear_win_holds():
    # 2 builds x 3 seeds, build effects added (shared by the methods of a build); 200 experiments (the rates'
    # standard error about 1.5 points at 5 %). Measured (these seeds): equal holds 0.02, does not hold 0.005; the
    # win holds 0.99 (with builds as units instead, seeds averaged, 1 df: 0.33).
    equal = verdict_rates(0.0, 200, seed=10)
    assert equal.get(HOLDS, 0) <= 0.08 and equal.get(FAILS, 0) <= 0.08, equal
    win = verdict_rates(0.08, 100, seed=11)  # knowledge kept +0.08 at matched utility, seed sd 0.02
    assert win.get(HOLDS, 0) >= 0.8, win


def test_the_report_writes_every_file_and_names_every_plot(tmp_path):
    gains = {("lora", None): 0.0, ("pissa", None): 0.0, ("sclora", 0.9): 0.08}
    points, base = synthetic(np.random.default_rng(5), gains, seeds=2)
    summary = write_frontier_report(points, base, tmp_path / "report")
    out = tmp_path / "report"
    assert {"points.csv", "matched.csv", "verdicts.json", "report.md"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(Path(p).name for p in summary["plots"]) and len(pngs) == 3
    assert all(f"![{name}]({name})" in report for name in pngs)
    assert "| poisoned | sclora beta 0.9 | 0.8 | 4 |" in report and "0.0001" in report
    verdicts = json.loads((out / "verdicts.json").read_text())
    assert summary["verdicts"] == {c["id"]: c["verdict"] for c in verdicts["claims"]}
    assert verdicts["rule"]["builds"] == "block" and verdicts["levels"] == list(LEVELS)
    header = (out / "points.csv").read_text().splitlines()[0].split(",")
    assert "knowledge_forgetting" in header and len((out / "points.csv").read_text().splitlines()) == len(points) + 1


@pytest.mark.parametrize("broken, message", [
    (lambda points, base: [{k: v for k, v in p.items() if k != "utility"} for p in points], "missing utility"),
    (lambda points, base: [*points, {**points[0], "build": 7}], "build 7 has no base metrics"),
], ids=["no-utility", "no-base"])  # fmt: skip
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, broken, message):
    points, base = synthetic(np.random.default_rng(6), {("lora", None): 0.0}, builds=1, seeds=2)
    with pytest.raises(ValueError, match=message):
        write_frontier_report(broken(points, base), base, tmp_path / "report")
    assert not (tmp_path / "report").exists() and list(tmp_path.iterdir()) == []


def test_compliance_and_knowledge_forgetting_read_the_point():
    base = {3: {"knowledge": 0.9}}
    p = point(0.5, 0.0, build=3, asr=0.25, base=0.7)
    assert knowledge_forgetting(base)(p) == pytest.approx(0.2) and compliance(p) == 0.25


def test_convergence_is_judged_on_the_first_checkpoint_by_its_own_endpoint(tmp_path):
    """A configuration whose first checkpoint is clearly ahead (its learning shifted by half a decade) holds
    `converges_faster`; two equal ones do not; the report's verdicts carry the claim with its rule."""
    from sclora.analysis.claims import convergence_claim
    from sclora.analysis.decision import judge
    from sclora.analysis.matched import CONVERGENCE_RULE, convergence_results

    rng = np.random.default_rng(12)
    points, base = synthetic(rng, {("lora", None): 0.0, ("sclora", 0.9): 0.0})
    faster = [{**p, "utility": float(np.clip(p["utility"] + 0.15, 0, 1))} if p["method"] == "sclora" and
              p["step"] == STEPS[0] else p for p in points]  # fmt: skip
    for table, expected in ((faster, HOLDS), (points, None)):
        results = convergence_results(table)
        assert {row["task"] for row in results.rows} == {"poisoned at the first checkpoint"}
        lora = [r for r in results.rows if r["method"] == "lora"]
        unit = [p for p in table if p["method"] == "lora" and p["build"] == 0 and p["seed"] == 0]
        first = [p["utility"] for p in unit if p["step"] == STEPS[0]]  # no collapse_rate: every rate held
        assert lora[0]["first_checkpoint_utility"] == pytest.approx(np.mean(first))
        verdict = judge(convergence_claim(results), results, CONVERGENCE_RULE)["verdict"]
        assert verdict == expected if expected else verdict != HOLDS
    write_frontier_report(faster, base, tmp_path / "report")
    verdicts = json.loads((tmp_path / "report" / "verdicts.json").read_text())
    claim = next(c for c in verdicts["claims"] if c["id"] == "converges_faster")
    assert claim["verdict"] == HOLDS and claim["rule"]["builds"] == "block"


def test_the_rate_plots_read_trained_points_on_the_grids_own_ticks():
    import matplotlib.pyplot as plt

    from sclora.analysis.frontier_report import _rate_axis, _trained

    # wise's run: its trained points, then its step at each alpha (alpha 1 is the trained model itself)
    assert _trained({"method": "wise", "step": 200}) and not _trained({"method": "wise", "step": 200, "alpha": 0.5})
    assert _trained({"method": "lora", "step": 200})
    fig, ax = plt.subplots()
    _rate_axis(ax, [2.5e-4, 5e-4, 1e-3, 8e-3])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2.5e-4", "5e-4", "1e-3", "8e-3"]
    assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))  # no overlapping minor labels
    plt.close(fig)


def test_the_report_stage_reads_the_real_sources_point_files(tmp_path, monkeypatch):
    # make real-protocol's items are named `real-<config>` and write build 0 into their points (tasks.frontier)
    from sclora.ops.config import load_params
    from tasks import frontier_report
    from tasks.artifacts import frontier_points_path

    params = load_params(Path(__file__).parent.parent / "configs" / "real-smollm2.yaml", ["frontier.real=[real]"])
    configs = {"lora": ("lora", None, 0.0), "sclora-0.9": ("sclora", 0.9, 0.05)}
    params = params.model_copy(update={"frontier": params.frontier.model_copy(update={"configs": list(configs)})})
    points, base = synthetic(np.random.default_rng(3), {(m, b): g for m, b, g in configs.values()}, builds=1)
    monkeypatch.chdir(tmp_path)
    for config, (method, beta, _) in configs.items():
        path = frontier_points_path("real", config)
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = [p for p in points if (p["method"], p["beta"]) == (method, beta)]
        path.write_text(json.dumps({"build": 0, "config": config, "base": base[0], "points": mine}))
    summary = frontier_report.run(params)
    assert "primary" in json.loads(Path(summary["out_dir"], "verdicts.json").read_text())
