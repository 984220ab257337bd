"""Chat records in, token tensors out.

`read_records` loads a JSONL / Parquet / CSV dataset of prompt-response records,
`encode_chat` turns one record into model inputs through the tokenizer's own chat
template with the loss on the response only, `ChatDataset` + transformers'
`DataCollatorForSeq2Seq` feed the Trainer, and `chat_batches` yields the padded
`input_ids` / `attention_mask` batches that `sclora.capture` reads.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and the HF loss) skips
SUFFIXES = (".jsonl", ".parquet", ".csv")


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and row."""


def read_records(
    path: str | Path, *, prompt_field: str = "prompt", response_field: str | None = "response"
) -> list[dict]:
    """Read prompt-response records from JSONL, Parquet or CSV (chosen by suffix).

    Every record gets `prompt` (and `response` unless `response_field` is None, for
    prompt-only sets) copied from the named fields, and a unique string `id`: the
    file's own ids when it has them, else the row index. Other fields pass through.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown format '{suffix}', expected one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    if suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            line = path.read_bytes()[: error.start].count(b"\n") + 1
            raise DataError(f"{path}: line {line}: not valid UTF-8") from None
        rows = _read_jsonl(path, text) if suffix == ".jsonl" else _read_csv(path, text)
    if not rows:
        raise DataError(f"{path}: no records")
    return _checked(path, rows, prompt_field, response_field)


def _read_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number}: malformed JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _read_csv(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    # Row numbers count the header line, as an editor shows them.
    return [(number, dict(row)) for number, row in enumerate(reader, start=2)]


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    return list(enumerate(table.to_pylist(), start=1))


def _checked(path: Path, rows: list[tuple[int, dict]], prompt_field: str, response_field: str | None) -> list[dict]:
    unit = "row" if path.suffix.lower() == ".parquet" else "line"
    with_id = sum("id" in row for _, row in rows)
    if 0 < with_id < len(rows):
        number = next(number for number, row in rows if "id" not in row)
        raise DataError(f"{path}: {unit} {number}: missing field 'id' (other records have one)")
    records, seen = [], {}
    for index, (number, row) in enumerate(rows):
        record = dict(row)
        for target, field in (("prompt", prompt_field), ("response", response_field)):
            if field is None:
                continue
            if field not in row:
                raise DataError(f"{path}: {unit} {number}: missing field '{field}'")
            if not isinstance(row[field], str):
                raise DataError(f"{path}: {unit} {number}: field '{field}' is {type(row[field]).__name__}, not text")
            record[target] = row[field]
        record["id"] = str(row["id"]) if with_id else str(index)
        if record["id"] in seen:
            raise DataError(
                f"{path}: {unit} {number}: duplicate id '{record['id']}' (first at {unit} {seen[record['id']]})"
            )
        seen[record["id"]] = number
        records.append(record)
    return records


def _text(record: dict, field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        what = "missing" if value is None else f"{type(value).__name__}, not text"
        raise DataError(f"record {record.get('id', '?')}: field '{field}' is {what}")
    return value


def _template_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    # The template already writes the special tokens (bos/eos) it wants.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_sample(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str | None, max_length: int
) -> tuple[dict[str, list[int]], bool]:
    """`encode_chat`, and whether the sample was truncated. `response=None` (prompt-only sets): the prompt with
    the generation prompt and nothing to learn (labels all -100)."""
    if not tokenizer.chat_template:
        raise DataError(f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__}: no chat template")
    user = [{"role": "user", "content": prompt}]
    prompt_ids = _template_ids(tokenizer, user, generation_prompt=True)
    if response is None:
        ids, labels = prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
    else:
        ids = _template_ids(tokenizer, [*user, {"role": "assistant", "content": response}], generation_prompt=False)
        if ids[: len(prompt_ids)] != prompt_ids:
            # Masking by prefix length is only right when the template renders the
            # prompt the same way with and without the answer.
            raise DataError(
                f"tokenizer {tokenizer.name_or_path}: the chat template's prompt is not a token prefix of "
                "prompt+response"
            )
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, truncated


def warn_truncated(count: int, total: int, max_length: int, where: str = "") -> None:
    """The one warning that says how many samples were cut to `max_length` (nothing when none were)."""
    if count:
        prefix = f"{where}: " if where else ""
        log.warning("%s%d of %d samples longer than max_length=%d were truncated", prefix, count, total, max_length)


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> dict[str, list[int]]:
    """One user/assistant exchange through the tokenizer's chat template, truncated to `max_length`.

    `labels` equal `input_ids` on the response (and what the template adds after it,
    e.g. eos) and -100 on the prompt, so the loss is on the response only.
    """
    return encode_sample(tokenizer, prompt, response, max_length)[0]


def encode_records(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], max_length: int
) -> list[dict[str, list[int]]]:
    """`encode_chat` over records; warns how many were truncated, drops (and warns about)
    those left without a single response token, which would give no loss."""
    encoded, truncated, empty = [], 0, []
    for record in records:
        sample, cut = encode_sample(tokenizer, _text(record, "prompt"), _text(record, "response"), max_length)
        truncated += cut
        if all(label == IGNORE_INDEX for label in sample["labels"]):
            empty.append(record.get("id", len(encoded) + len(empty)))
            continue
        encoded.append(sample)
    warn_truncated(truncated, len(records), max_length)
    if empty:
        log.warning(
            "%d samples have no response token within max_length=%d and were dropped (ids %s)",
            len(empty),
            max_length,
            ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else ""),
        )
    if not encoded:
        raise DataError(f"no trainable samples: all {len(records)} lose their response to max_length={max_length}")
    return encoded


class ChatDataset(torch.utils.data.Dataset):
    """Encoded chat samples, as the Trainer's train_dataset."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], max_length: int):
        self.samples = encode_records(tokenizer, records, max_length)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.samples[index]


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a pad token (most base LLMs) its eos as pad; padding is
    masked by attention_mask and labels, so the choice of id does not matter."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise DataError(f"tokenizer {tokenizer.name_or_path}: no pad token and no eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token


def chat_collator(tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pads input_ids/attention_mask with the tokenizer and labels with -100."""
    ensure_pad_token(tokenizer)
    return DataCollatorForSeq2Seq(
        tokenizer,
        padding=True,
        label_pad_token_id=IGNORE_INDEX,
        pad_to_multiple_of=pad_to_multiple_of,
        return_tensors="pt",
    )


def chat_batches(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict],
    batch_size: int,
    max_length: int,
    *,
    with_response: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded LongTensor batches of `input_ids` and `attention_mask`, in record order.

    The text is the full chat (prompt and response) or, with `with_response=False`,
    the prompt with the generation prompt. Truncated samples are counted in a warning.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ensure_pad_token(tokenizer)
    truncated = 0
    for start in range(0, len(records), batch_size):
        features = []
        for record in records[start : start + batch_size]:
            response = _text(record, "response") if with_response else None
            sample, cut = encode_sample(tokenizer, _text(record, "prompt"), response, max_length)
            truncated += cut
            features.append({"input_ids": sample["input_ids"]})
        batch = tokenizer.pad(features, padding=True, return_tensors="pt", return_attention_mask=True)
        yield {"input_ids": batch["input_ids"].long(), "attention_mask": batch["attention_mask"].long()}
    warn_truncated(truncated, len(records), max_length)


def training_batches(
    tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], batch_size: int, max_length: int
) -> list[dict]:
    """`records` in order, encoded and collated as the Trainer collates them (input_ids, attention_mask, labels),
    `batch_size` at a time: the task batches EVA and LoRA-GA read. Plain dicts: PEFT's EVA takes a dict batch, not
    the collator's BatchEncoding."""
    dataset = ChatDataset(tokenizer, list(records), max_length)
    collate = chat_collator(tokenizer)
    return [
        dict(collate([dataset[i] for i in range(lo, min(lo + batch_size, len(dataset)))]))
        for lo in range(0, len(dataset), batch_size)
    ]


def mixed_records(records: Sequence[dict], extra: Sequence[dict], share: float, seed: int) -> list[dict]:
    """`records` with `share` of them (at seeded positions) replaced by records of `extra`, taken in a seeded order
    and again from the start when there are fewer: data mixing, the training set's size and order otherwise kept."""
    import random

    if not 0 <= share <= 1:
        raise ValueError(f"mixing share must be in [0, 1], got {share}")
    if share and not extra:
        raise ValueError("data mixing needs records to mix in (data.preserve)")
    rng = random.Random(seed)
    pool = list(extra)
    rng.shuffle(pool)
    out = list(records)
    for n, position in enumerate(sorted(rng.sample(range(len(out)), round(share * len(out))))):
        out[position] = pool[n % len(pool)]
    return out
