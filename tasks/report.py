"""Stage `report`: every run's metrics and per-item scores -> artifacts/report/{results.csv, items.csv.gz,
verdicts.json, report.md, *.png} (sclora.analysis.report; the claims judged by sclora.analysis.claims, as
`sclora judge` does)."""

from __future__ import annotations

from sclora.analysis.decision import Rule
from sclora.analysis.report import FORGETTING_COLUMNS, write_report
from sclora.evaluate.items import read_item_scores
from sclora.evaluate.metrics import UNJUDGED
from sclora.ops.config import ModelParams, Params
from sclora.testbed.params import testbed_params
from tasks.artifacts import METRICS, REPORT, RUN_FILE, SPECTRA, all_runs, load_forecast, read_json, solve_dir


def run(params: Params) -> dict:
    rows, histories, items = [], {}, {}
    build = build_of(params)
    for spec in all_runs(params):
        summary = read_json(spec.dir / RUN_FILE, f"run {spec.name}")
        metrics = read_json(spec.dir / "eval" / METRICS, f"metrics of run {spec.name}")
        forgetting = metrics.get("forgetting", {})
        rows.append({
            "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
            "build": build, "lr": summary["lr"], "step": summary.get("global_step"),
            "final_loss": summary["final_loss"],
            **{column: metrics.get(column) for column in UNJUDGED},
            **{column: forgetting.get(metric) for column, metric in FORGETTING_COLUMNS.items()},
        })  # fmt: skip
        items[spec.name] = read_item_scores(spec.dir / "eval")
        histories[spec.name] = read_json(spec.dir / "loss_history.json", f"loss history of run {spec.name}")
    spectra: dict[str, dict[float, list[float]]] = {}
    for beta in params.solve.betas:
        for task, layers in read_json(solve_dir(beta) / SPECTRA, f"spectra of beta {beta}").items():
            for layer, values in layers.items():
                spectra.setdefault(f"{task}: {layer}", {})[beta] = values
    rule = Rule(utility_margin=params.tracking.gates.utility_tolerance)
    write_report(rows, REPORT, loss_histories=histories, spectra=spectra, forecast=load_forecast(), items=items,
                 rule=rule)  # fmt: skip
    return {"report": str(REPORT / "report.md"), "runs": len(rows)}


def build_of(params: Params) -> str:
    """The base model's build: the testbed's seed when the model is the testbed's, else none (one model)."""
    return str(testbed_params(params).seed) if params.model.path == ModelParams().path else ""
