"""`sclora judge RESULTS.csv`: any results table judged by the rule the report uses; bad tables fail in one line."""

import csv
import gzip
import json

import numpy as np
import pytest
from synthetic_results import Truth, table
from test_cli import one_error_line

from flows.cli import main
from sclora.analysis.claims import judgement
from sclora.analysis.decision import Rule
from sclora.analysis.report import write_report
from sclora.analysis.results import COLUMNS, ITEMS_FILE, read_results, write_items, write_table

WIN = {
    **dict.fromkeys([("sclora", 0.5), ("sclora", 0.9)], Truth(knowledge=0.97, flip=0.0)),
    **dict.fromkeys([("lora", None), ("pissa", None)], Truth(knowledge=0.92, flip=0.6)),
}


@pytest.fixture(scope="module")
def synthetic():
    results = table(WIN, np.random.default_rng(7))
    for row in results.rows:
        row["items"] = ITEMS_FILE
    return results


def write(results, folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_table(results.rows, folder / "results.csv")
    write_items(results.items, folder / ITEMS_FILE)
    return folder / "results.csv"


def test_judge_prints_every_verdict_with_evidence_and_writes_json(synthetic, tmp_path, capsys):
    path = write(synthetic, tmp_path / "t")
    assert main(["judge", str(path), "--params", str(tmp_path / "none.yaml")]) == 0
    out = capsys.readouterr().out
    assert "- **SC-LoRA (beta >= 0.5) preserves more than LoRA and PiSSA at equal or better utility: holds**" in out
    assert "  - poisoned: sclora beta 0.9 vs lora: knowledge +0.0" in out and "(5 seeds x 300 items)" in out
    written = json.loads((tmp_path / "t" / "verdicts.json").read_text())
    assert written["table"] == str(path) and written["rule"]["utility_margin"] == 0.02
    expected = json.loads(json.dumps(judgement(read_results(path))))
    assert {k: v for k, v in written.items() if k != "table"} == expected
    # The read-back table is the table: per-item scores and means round-trip.
    back = read_results(path)
    assert back.items == synthetic.items and [r["knowledge"] for r in back.rows] == [
        r["knowledge"] for r in synthetic.rows
    ]


def test_the_report_and_judge_give_the_same_verdicts(synthetic, tmp_path, capsys):
    rows = [{key: row.get(key) for key in COLUMNS if key != "items"} for row in synthetic.rows]
    out = write_report(rows, tmp_path / "report", items=synthetic.items, rule=Rule(utility_margin=0.03))
    reported = json.loads((out / "verdicts.json").read_text())
    assert (
        main(["judge", str(out / "results.csv"), "--utility-margin", "0.03", "--json", str(tmp_path / "v.json")]) == 0
    )
    judged = json.loads((tmp_path / "v.json").read_text())
    assert reported == {k: v for k, v in judged.items() if k != "table"}
    assert "## The paper's claims" in (out / "report.md").read_text()
    with (out / "results.csv").open(newline="") as handle:
        assert {row["items"] for row in csv.DictReader(handle)} == {ITEMS_FILE}


def test_a_table_made_elsewhere_with_only_its_required_columns(tmp_path, capsys):
    lines = ["task,method,beta,seed,utility,knowledge"]
    for seed in range(4):
        lines += [
            f"benign,lora,,{seed},{0.99 - 0.001 * seed},{0.90 + 0.003 * seed}",
            f"benign,sclora,0.5,{seed},{0.99 - 0.002 * seed},{0.97 + 0.002 * seed}",
        ]
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    assert main(["judge", str(tmp_path / "mine.csv"), "--params", str(tmp_path / "none.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  - benign: sclora beta 0.5 vs lora: attack_success_rate: not in the table" in out
    line = next(line for line in out.splitlines() if line.startswith("  - benign: sclora beta 0.5 vs lora: know"))
    assert "knowledge +0.068 [" in line and "(4 seeds, runs only)" in line and line.endswith("-> holds"), line


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), "results table not found"),
        (lambda p: p.write_text("method,seed\nlora,0\n"), "no column task"),
        (lambda p: p.write_text(p.read_text().replace(",150.0,", ",lots,", 1)), "line 2, step: not a number: 'lots'"),
        (lambda p: p.write_text(p.read_text().replace(",0,0,", ",x,0,", 1)), "seed: not an integer"),
        (lambda p: (p.parent / ITEMS_FILE).unlink(), "per-item scores named by the results table's items column"),
        (lambda p: (p.parent / ITEMS_FILE).write_bytes(b"not gzip"), "not a readable per-item CSV"),
        (lambda p: p.write_text(p.read_text() + p.read_text().splitlines()[1] + "\n"), "are the same task, method"),
        (lambda p: _shift_items(p.parent / ITEMS_FILE), "item scores of knowledge average"),
        (lambda p: p.write_text("task,method,seed,utility\nx,lora,0,0.5\n"), "no claim has its configurations"),
    ],
)
def test_a_bad_table_fails_in_one_line_and_writes_nothing(synthetic, tmp_path, capsys, damage, message):
    path = write(synthetic, tmp_path / "t")
    damage(path)
    assert main(["judge", str(path)]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "t" / "verdicts.json").exists()


def _shift_items(path):
    with gzip.open(path, "rt") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        if row[1] == "knowledge" and row[3] == "1.0":
            row[3] = "0.0"
            break
    with gzip.open(path, "wt", newline="") as handle:
        csv.writer(handle).writerows(rows)
