"""A params data source (`data.sources.<name>`) read as records with `id`, `prompt` and `response`.

A source is a local JSONL / Parquet / CSV file or a `datasets` name; its fields map to prompt/response, or come
from a `messages` list with one user and one assistant turn. Every other field is kept.
"""

from __future__ import annotations

from pathlib import Path

from sclora.ops.config import Source
from sclora.runs.data import DataError, read_records

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_source(name: str, source: Source) -> list[dict]:
    """The source's records with `id`, `prompt` and `response` (None for prompt-only sets) and its other fields."""
    if source.path is not None and source.messages is None:
        records = read_records(source.path, prompt_field=source.prompt, response_field=source.response)
        if source.response is None:
            records = [{**record, "response": None} for record in records]
    else:
        rows = _dataset_rows(name, source)
        records = [_mapped(name, source, index, row) for index, row in enumerate(rows)]
    if source.limit is not None:
        records = records[: source.limit]
    if not records:
        raise DataError(f"data.sources.{name}: no records")
    return records


def _dataset_rows(name: str, source: Source) -> list[dict]:
    import datasets

    if source.hf_name is not None:
        # Real datasets only: tests never reach the hub.
        loaded = datasets.load_dataset(source.hf_name, source.hf_config, split=source.split)
    else:
        path = Path(source.path)
        if path.suffix.lower() not in FORMATS:
            raise DataError(
                f"data.sources.{name}: unknown format '{path.suffix}', expected one of {', '.join(FORMATS)}"
            )
        if not path.is_file():
            raise DataError(f"data.sources.{name}: {path}: file not found")
        loaded = datasets.load_dataset(FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    return list(loaded)


def _mapped(name: str, source: Source, index: int, row: dict) -> dict:
    record_id = str(row.get("id", index))
    where = f"data.sources.{name}: record {record_id}"
    if source.messages is not None:
        if source.messages not in row:
            raise DataError(f"{where}: missing field '{source.messages}'")
        prompt, response = _pair(where, row[source.messages])
        rest = {key: value for key, value in row.items() if key != source.messages}
    else:
        if source.prompt not in row:
            raise DataError(f"{where}: missing field '{source.prompt}'")
        if source.response is not None and source.response not in row:
            raise DataError(f"{where}: missing field '{source.response}'")
        prompt, response = row[source.prompt], row[source.response] if source.response is not None else None
        rest = dict(row)
    return {**rest, "id": record_id, "prompt": prompt, "response": response}


def _pair(where: str, messages: object) -> tuple[str, str]:
    """(prompt, response) from a chat with exactly one user turn followed by one assistant turn."""
    if not isinstance(messages, list):
        raise DataError(f"{where}: messages is {type(messages).__name__}, not a list")
    roles = [message.get("role") if isinstance(message, dict) else None for message in messages]
    if roles != ["user", "assistant"]:
        raise DataError(f"{where}: messages must be one user then one assistant turn, got roles {roles}")
    prompt, response = (message.get("content") for message in messages)
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(f"{where}: message content must be text")
    return prompt, response
