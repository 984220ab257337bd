"""Stage `prepare`: every source in params.data.sources -> artifacts/prepared/<source>.parquet + fingerprints.json.

Each row keeps the record's fields (id, prompt, response, category, ...) and adds
input_ids, attention_mask and labels through the model's chat template (loss on the
response only; train.max_length). A source is a local JSONL / Parquet / CSV file or a
`datasets` name (sclora.runs.sources).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from sclora.ops.config import Params
from sclora.ops.digest import file_sha256
from sclora.runs.data import encode_sample, warn_truncated
from sclora.runs.models import load_tokenizer
from sclora.runs.sources import load_source
from tasks.artifacts import FINGERPRINTS, PREPARED, staged_dir, write_json


def run(params: Params) -> dict:
    tokenizer = load_tokenizer(params.model.path, trust_remote_code=params.model.trust_remote_code)
    fingerprints = {}
    with staged_dir(PREPARED) as staging:
        for name, source in params.data.sources.items():
            records, truncated = [], 0
            for record in load_source(name, source):
                encoded, cut = encode_sample(tokenizer, record["prompt"], record["response"], params.train.max_length)
                records.append({**record, **encoded})
                truncated += cut
            warn_truncated(truncated, len(records), params.train.max_length, f"data.sources.{name}")
            path = staging / f"{name}.parquet"
            pq.write_table(pa.Table.from_pylist(records), path)
            fingerprints[name] = file_sha256(path)
        write_json(staging / FINGERPRINTS.name, fingerprints)
    return {"prepared": {name: str(PREPARED / f"{name}.parquet") for name in fingerprints}}
