"""The methods table: a method's name is dispatched only by its row and its apply function.

Every other file reads a row's fields (kind, reads, residual, export, knob) instead of testing a name; the
docs table lists every method. Adding a method is its row, its branch in sclora.method.inits and a docs line.
"""

import ast
from pathlib import Path

from sclora.method.table import BY_NAME, METHODS, NAMES

ROOT = Path(__file__).resolve().parents[1]
# The table and its apply functions (apply_method, init_lora, post_hoc_step): where a name may be tested.
ALLOWED = {"sclora/method/table.py", "sclora/method/inits.py"}


def _names_in(node: ast.AST) -> set[str]:
    """Method names written as string literals in `node` (a constant, or a tuple/list/set of them)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and i.value in NAMES}


def _is_method_value(node: ast.AST) -> bool:
    """`method`, `spec.method`, `self.method`, `x_method`: a value that holds a method's name."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "method" or name.endswith("_method")


def name_dispatches(source: str) -> list[tuple[int, str]]:
    """(line, name) for every comparison of a method-holding value with method-name literals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_method_value(side) for side in sides):
                found += [(node.lineno, name) for side in sides for name in sorted(_names_in(side))]
    return found


def test_no_method_name_is_dispatched_outside_the_table_and_its_apply_function():
    offenders = []
    for folder in ("sclora", "tasks", "flows", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in ALLOWED:
                offenders += [f"{relative}:{line} tests {name!r}" for line, name in name_dispatches(path.read_text())]
    assert not offenders, "read the method's row instead: " + "; ".join(offenders)


def test_the_check_finds_what_it_forbids():
    assert name_dispatches('if spec.method == "full":\n    pass') == [(1, "full")]
    assert name_dispatches('x = method in ("corda_ipm", "corda_kpm")') == [(1, "corda_ipm"), (1, "corda_kpm")]
    assert name_dispatches('if kind == "full":\n    pass') == []


def test_rows_are_consistent():
    for row in METHODS:
        assert (row.kind == "full") == (row.init is None and row.peft_init is None and row.export == "full_model")
        assert row.kind != "tuner" or (row.init is None and row.export not in ("lora", "lora_2r"))
        if row.kind in ("lora_init", "post_hoc"):
            assert row.init in BY_NAME and (row.export == "lora_2r") == row.residual, row.name
        assert (row.knob_default is None) == (not row.knob_values), row.name
        assert row.knob_default is None or row.knob_default in row.knob_values
        assert row.lr_from is None or row.lr_from in BY_NAME


def test_docs_table_has_every_method():
    text = (ROOT / "docs" / "pipeline.md").read_text()
    table = text[text.index("## Methods") :]
    for row in METHODS:
        assert f"| `{row.name}` |" in table, row.name


def test_a_post_hoc_method_trains_and_tunes_at_its_adapters_rate():
    import yaml

    from sclora.ops.config import Params
    from tasks.artifacts import tune_item

    assert tune_item("lora_intruder", None) == "lora" and tune_item("osf", None) == "osf"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(methods=["lora", "lora_intruder"], lr_source="artifacts/tune")
    params["tune"].update(methods=["lora"], betas=params["solve"]["betas"])
    parsed = Params(**params)  # lora_intruder needs no tune stage of its own
    assert parsed.train.settings_for("lora_intruder", 0).lr == parsed.train.settings_for("lora", 0).lr
