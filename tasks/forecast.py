"""Stage `forecast`: SC-LoRA's trade-off forecast per task from the capture alone -> artifacts/forecast/.

On the grid 0, solve.forecast_step, ..., 1: the share of D+'s and of D-'s output energy that each beta's rank-r
subspace holds (sclora.method.forecast), per layer and averaged over layers. No training. Writes forecast.json (every
number) and forecast.csv (the averaged table); the report draws it, and `select_beta` starts from it.
"""

from __future__ import annotations

import csv

from sclora.method.forecast import energy_forecast, forecast_grid
from sclora.method.gather import CaptureStats
from sclora.ops.config import Params
from sclora.runs.models import lora_config
from tasks.artifacts import CAPTURE, FORECAST, FORECAST_JSON, NEG, load_base, pos_capture_dir, staged_dir, write_json


def run(params: Params) -> dict:
    model = load_base(params)
    adapter = params.adapter
    config = lora_config(adapter.rank, adapter.alpha, adapter.dropout, adapter.target_modules)
    neg = CaptureStats.load(CAPTURE / NEG)
    betas = forecast_grid(params.solve.forecast_step)
    tasks = {task: energy_forecast(model, config, CaptureStats.load(pos_capture_dir(task)), neg, betas,
                                   rank=adapter.rank, normalize=params.solve.normalize)
             for task in params.data.finetune}  # fmt: skip
    with staged_dir(FORECAST) as staging:
        write_json(staging / FORECAST_JSON, {"rank": adapter.rank, "normalize": params.solve.normalize, "tasks": tasks})
        with (staging / "forecast.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["task", "beta", "pos_share", "neg_share", "degenerate_layers"])
            for task, forecast in tasks.items():
                for i, beta in enumerate(forecast["betas"]):
                    writer.writerow([task, beta, f"{forecast['pos_share'][i]:.6f}", f"{forecast['neg_share'][i]:.6f}",
                                     forecast["degenerate_layers"][i]])  # fmt: skip
    return {task: {"betas": len(f["betas"]), "layers": len(f["layers"])} for task, f in tasks.items()}
