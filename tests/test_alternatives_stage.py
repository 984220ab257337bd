"""The new methods through the real train stage: each initialises from what its row reads, trains, exports as its
row says and is evaluated; a post-hoc row (lora_intruder, wise) holds one point per knob value; OSF's export
registers."""

import json
from pathlib import Path

import pytest
from peft import PeftConfig
from stage_project import project_params, stage, write_params

from sclora.method.table import BY_NAME
from sclora.ops import tracking
from sclora.ops.registry import register_adapter

pytestmark = pytest.mark.slow  # twelve train items: ~45 s

NEW = ["mica", "olora", "orthogonal", "eva", "lora_ga", "lora_null", "osf", "lora_intruder", "nora", "astra", "wise",
       "mix"]  # fmt: skip


def test_every_new_method_trains_exports_and_evaluates_in_the_stage(project):
    params = project_params(project)
    params["train"]["methods"] = NEW
    write_params(project, params)
    for argv in (("prepare",), ("capture",), ("evaluate_base",), ("plan",)):
        assert stage(*argv) == 0, argv
    for method in NEW:
        assert stage("train", f"benign-{method}-0") == 0, method
        run = Path("artifacts/runs") / f"benign-{method}-0"
        summary = json.loads((run / "run.json").read_text())
        row = BY_NAME[method]
        assert summary["export"] == row.export and summary["global_step"] == params["train"]["max_steps"]
        assert "utility" in json.loads((run / "eval" / "metrics.json").read_text())
        config = PeftConfig.from_pretrained(run / "export")
        if row.export == "osf":
            assert config.peft_type == "OSF"
        else:  # a plain LoRA: rank 2r for a residual init, r otherwise
            assert config.peft_type == "LORA" and config.init_lora_weights is True
            assert config.r == params["adapter"]["rank"] * (2 if row.residual else 1)
    trainable = {m: json.loads(Path(f"artifacts/runs/benign-{m}-0/run.json").read_text())["trainable_parameters"]
                 for m in NEW}  # fmt: skip
    layers = 7 * params["testbed"]["layers"]
    assert trainable["osf"] == trainable["lora_intruder"] + params["adapter"]["rank"] * layers  # LoRA's + r a layer
    assert trainable["mica"] * 2 < trainable["lora_intruder"]  # MiCA trains A only
    plan = json.loads(Path("artifacts/plan/benign-lora_null-0.json").read_text())
    assert plan["capture"]  # LoRA-Null reads the D- capture: a new capture reruns it
    assert "task_batches" in json.loads(Path("artifacts/plan/benign-eva-0.json").read_text())

    for method in ("lora_intruder", "wise"):  # post-hoc rows: a point per knob value, the default's is the run's
        curve = json.loads(Path(f"artifacts/runs/benign-{method}-0/run.json").read_text())["curve"]
        row = BY_NAME[method]
        assert [point[row.knob] for point in curve] == list(row.knob_values)
        default = next(p for p in curve if p[row.knob] == row.knob_default)
        metrics = json.loads(Path(f"artifacts/runs/benign-{method}-0/eval/metrics.json").read_text())
        assert default["utility"] == metrics["utility"]

    # OSF's export is no LoRA, but it is what gets registered for it.
    osf = json.loads(Path("artifacts/runs/benign-osf-0/run.json").read_text())
    tracking.use_store(params["tracking"]["uri"])
    version = register_adapter(
        Path("artifacts/runs/benign-osf-0/export"), "alternatives", {"utility": 0.0}, {"method": "osf"},
        run_id=osf["mlflow_run_id"],
    )  # fmt: skip
    assert version
