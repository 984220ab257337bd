"""Stage `frontier_build@<build>`: the testbed at testbed.seed = <build> -> artifacts/frontier/build-<build>.

A build is another draw of the world, the initialisation and the pretraining order, as another machine's float
kernels are: the frontier compares methods within each build (a blocking factor), on every build of
`frontier.builds`. A build whose params.json matches is kept (the stage is then a no-op outside DVC too).
"""

from __future__ import annotations

import json
from pathlib import Path

from sclora.ops.config import Params
from sclora.testbed.build import build_testbed
from sclora.testbed.params import testbed_params
from tasks.artifacts import frontier_build_dir


def run(params: Params, item: str) -> dict:
    build = _build(params, item)
    testbed = testbed_params(params).model_copy(update={"seed": build})
    wanted = testbed.model_dump(mode="json")
    out = frontier_build_dir(build)
    if _built_from(out) != wanted:
        build_testbed(testbed, out)
    metrics = json.loads((out / "base_metrics.json").read_text())
    return {"build": build, "dir": str(out), "meets_thresholds": metrics["meets_thresholds"]}


def _built_from(root: Path) -> dict | None:
    path = root / "params.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _build(params: Params, item: str) -> int:
    try:
        build = int(item)
    except ValueError:
        raise ValueError(f"frontier_build item '{item}' is not a build (a testbed seed)") from None
    if build not in params.frontier.builds:
        raise ValueError(f"build {build} is not in frontier.builds {params.frontier.builds}")
    return build
