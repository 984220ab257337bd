"""Stage `report`: every run's metrics -> artifacts/report/{results.csv, report.md, *.png} (sclora.report)."""

from __future__ import annotations

from sclora.config import Params
from sclora.metrics import UNJUDGED
from sclora.report import FORGETTING_COLUMNS, write_report
from tasks.artifacts import METRICS, REPORT, RUN_FILE, SPECTRA, all_runs, load_forecast, read_json, solve_dir


def run(params: Params) -> dict:
    rows, histories = [], {}
    for spec in all_runs(params):
        summary = read_json(spec.dir / RUN_FILE, f"run {spec.name}")
        metrics = read_json(spec.dir / "eval" / METRICS, f"metrics of run {spec.name}")
        forgetting = metrics.get("forgetting", {})
        rows.append({
            "run": spec.name, "task": spec.task, "method": spec.method, "beta": spec.beta, "seed": spec.seed,
            "lr": summary["lr"], "final_loss": summary["final_loss"],
            **{column: metrics.get(column) for column in UNJUDGED},
            **{column: forgetting.get(metric) for column, metric in FORGETTING_COLUMNS.items()},
        })  # fmt: skip
        histories[spec.name] = read_json(spec.dir / "loss_history.json", f"loss history of run {spec.name}")
    spectra: dict[str, dict[float, list[float]]] = {}
    for beta in params.solve.betas:
        for task, layers in read_json(solve_dir(beta) / SPECTRA, f"spectra of beta {beta}").items():
            for layer, values in layers.items():
                spectra.setdefault(f"{task}: {layer}", {})[beta] = values
    write_report(rows, REPORT, loss_histories=histories, spectra=spectra, forecast=load_forecast())
    return {"report": str(REPORT / "report.md"), "runs": len(rows)}
