"""Stage `testbed@testbed` (its one item while `sources.testbed` names it): build the offline testbed into
artifacts/testbed and print its base model's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sclora.testbed.build import build_testbed
from sclora.testbed.params import testbed_params

if TYPE_CHECKING:
    from sclora.ops.config import Params

OUT_DIR = Path("artifacts/testbed")


def run(params: Params, item: str = "testbed") -> dict:
    """Build world, datasets and base model from `params.testbed`; returns the base model's metrics."""
    return build_testbed(testbed_params(params), OUT_DIR)
