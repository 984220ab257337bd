"""Every DVC stage is its own process, so what a stage imports is paid on every run: the stages that neither load a
model nor train (register, report) and the package itself must not pull in torch, transformers or PEFT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft")


@pytest.mark.parametrize("module", ["sclora", "sclora.ops.config", "tasks.register", "tasks.report"])
def test_light_modules_do_not_import_the_model_libraries(module):
    code = f"import sys, {module}; print(','.join(name for name in {HEAVY!r} if name in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    assert loaded == "", f"import {module} loads {loaded}"


def test_the_package_still_gives_capture_the_function():
    code = (
        "import sclora, sclora.method.gather; "
        "print(callable(sclora.capture), sclora.capture is sclora.method.gather.capture)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    assert out == ["True", "True"]
