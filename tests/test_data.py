"""Chat data: records from every format with one-line errors, response-only labels, padding."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import word_tokenizer

from sclora.runs.data import (
    IGNORE_INDEX,
    ChatDataset,
    DataError,
    chat_batches,
    chat_collator,
    encode_chat,
    encode_records,
    read_records,
)


@pytest.fixture
def tok():
    return word_tokenizer("what is the capital of zorbia it is quelt tell me a joke no".split())


def ids(tok, text):
    return tok.convert_tokens_to_ids(text.split())


# --- encode_chat ---------------------------------------------------------------------------------


def test_labels_mask_exactly_the_prompt(tok):
    sample = encode_chat(tok, "what is the capital of zorbia", "it is quelt", max_length=64)
    prompt = ids(tok, "<bos> <user> what is the capital of zorbia <assistant>")
    response = ids(tok, "it is quelt <eos>")
    assert sample["input_ids"] == prompt + response
    assert sample["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert sample["attention_mask"] == [1] * (len(prompt) + len(response))


def test_truncation_cuts_the_end_and_is_counted(tok, caplog):
    sample = encode_chat(tok, "what is the capital of zorbia", "it is quelt", max_length=11)
    assert len(sample["input_ids"]) == len(sample["labels"]) == 11
    assert sample["labels"][-2:] == ids(tok, "it is")
    records = [
        {"id": "a", "prompt": "what is the capital of zorbia", "response": "it is quelt"},
        {"id": "b", "prompt": "tell me a joke", "response": "no"},
    ]
    with caplog.at_level("WARNING"):
        encoded = encode_records(tok, records, max_length=11)
    assert len(encoded) == 2
    assert "1 of 2 samples longer than max_length=11 were truncated" in caplog.text


def test_samples_without_response_tokens_are_dropped(tok, caplog):
    records = [
        {"id": "long", "prompt": "what is the capital of zorbia", "response": "it is quelt"},
        {"id": "short", "prompt": "tell", "response": "no"},
    ]
    with caplog.at_level("WARNING"):
        encoded = encode_records(tok, records, max_length=6)
    assert [sample["input_ids"] for sample in encoded] == [ids(tok, "<bos> <user> tell <assistant> no <eos>")]
    assert "1 samples have no response token" in caplog.text and "long" in caplog.text
    with pytest.raises(DataError, match="no trainable samples"):
        encode_records(tok, records[:1], max_length=6)


def test_record_without_response_is_named(tok):
    with pytest.raises(DataError, match="record q7: field 'response' is missing"):
        encode_records(tok, [{"id": "q7", "prompt": "tell me"}], max_length=16)
    with pytest.raises(DataError, match="record q8: field 'prompt' is int, not text"):
        next(chat_batches(tok, [{"id": "q8", "prompt": 3}], 1, 16, with_response=False))


def test_tokenizer_without_chat_template_is_refused(tok):
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        encode_chat(tok, "tell me a joke", "no", max_length=16)


def test_template_whose_prompt_is_not_a_prefix_is_refused(tok):
    # A template that renders the prompt differently once an answer follows it.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %} <assistant>{% else %} <user> {{ messages[-1]['content'] }}{% endif %}"
    )
    with pytest.raises(DataError, match="not a token prefix"):
        encode_chat(tok, "tell me a joke", "no", max_length=16)


# --- batching ------------------------------------------------------------------------------------


def test_collator_pads_labels_with_ignore_index(tok):
    dataset = ChatDataset(
        tok,
        [{"prompt": "what is the capital of zorbia", "response": "it is quelt"}, {"prompt": "tell", "response": "no"}],
        max_length=64,
    )
    batch = chat_collator(tok)([dataset[0], dataset[1]])
    long, short = dataset[0], dataset[1]
    width = len(long["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    pad = width - len(short["input_ids"])
    assert batch["labels"][1].tolist() == short["labels"] + [IGNORE_INDEX] * pad
    assert batch["attention_mask"][1].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    assert batch["input_ids"][1, -pad:].tolist() == [tok.pad_token_id] * pad
    # Every supervised position is a real response token.
    supervised = batch["labels"] != IGNORE_INDEX
    assert torch.equal(batch["labels"][supervised], batch["input_ids"][supervised])


def test_chat_batches_for_capture(tok):
    records = [
        {"prompt": "tell me a joke", "response": "no"},
        {"prompt": "what is the capital of zorbia", "response": "it is quelt"},
        {"prompt": "tell", "response": "no"},
    ]
    batches = list(chat_batches(tok, records, batch_size=2, max_length=64))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    for batch in batches:
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    first = batches[0]
    assert first["attention_mask"].sum(1).tolist() == [
        len(encode_chat(tok, r["prompt"], r["response"], 64)["input_ids"]) for r in records[:2]
    ]
    prompt_only = next(chat_batches(tok, records[2:], batch_size=2, max_length=64, with_response=False))
    assert prompt_only["input_ids"][0].tolist() == ids(tok, "<bos> <user> tell <assistant>")


def test_missing_pad_token_falls_back_to_eos(tok):
    tok.pad_token = None
    records = [{"prompt": "tell", "response": "no"}, {"prompt": "tell me", "response": "no"}]
    batch = next(chat_batches(tok, records, 2, 64))
    assert tok.pad_token == "<eos>"
    assert batch["attention_mask"][0].tolist()[-1] == 0


# --- read_records --------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "prompt": "tell me a joke", "response": "no", "category": "x"},
    {"id": "b", "prompt": "what is it", "response": "quelt", "category": "y"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_every_format_reads_the_same_records(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path.write_text("id,prompt,response,category\na,tell me a joke,no,x\nb,what is it,quelt,y\n", encoding="utf-8")
    assert read_records(path) == ROWS


def test_field_mapping_and_generated_ids(tmp_path):
    rows = [{"instruction": "tell me", "category": "c"}, {"instruction": "no", "category": "d"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    records = read_records(path, prompt_field="instruction", response_field=None)
    assert [(r["id"], r["prompt"]) for r in records] == [("0", "tell me"), ("1", "no")]
    assert "response" not in records[0]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_records(tmp_path / "nope.jsonl")


def test_unknown_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        read_records(path)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="empty file|no records"):
        read_records(path)


def test_csv_with_header_only(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,prompt,response\n")
    with pytest.raises(DataError, match="no records"):
        read_records(path)


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"id": "b", "prompt": \n')
    with pytest.raises(DataError, match=r"d.jsonl: line 2: malformed JSON") as caught:
        read_records(path)
    assert "\n" not in str(caught.value)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="line 2: expected a JSON object, got list"):
        read_records(path)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"id,prompt,response\na,caf\xe9,no\n")
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        read_records(path)


def test_not_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_records(path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([ROWS[0], {"id": "b", "prompt": "x"}], "line 2: missing field 'response'"),
        ([{"id": "a", "response": "x"}], "line 1: missing field 'prompt'"),
        ([ROWS[0], {"id": "b", "prompt": None, "response": "x"}], "line 2: field 'prompt' is NoneType, not text"),
        ([ROWS[0], ROWS[1], {**ROWS[0], "prompt": "again"}], "line 3: duplicate id 'a' \\(first at line 1\\)"),
        ([ROWS[0], {"prompt": "x", "response": "y"}], "line 2: missing field 'id'"),
    ],
)
def test_bad_records_give_one_line_naming_the_row(tmp_path, rows, expected):
    with pytest.raises(DataError, match=expected) as caught:
        read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert "\n" not in str(caught.value)


def test_duplicate_ids_in_parquet_name_the_row(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([ROWS[0], ROWS[0]]), path)
    with pytest.raises(DataError, match="row 2: duplicate id 'a'"):
        read_records(path)
