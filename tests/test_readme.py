"""The README: its first lines are the two commands, its Python API example runs as written, and every docs/ file
it links (and every file the docs link) is there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# A markdown link's target: ](target) or ](target#anchor).
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_first_lines_are_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == [
        "# sclora",
        "",
        "    make run     # set-up + the whole pipeline on the embedded default (`sclora run`): testbed, every method,"
        " report",
        "    make test    # set-up + the test suite",
    ]


def test_python_api_example_runs_and_keeps_outputs(capsys):
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    change = float(re.search(r"max logit change at init: (\S+)", capsys.readouterr().out).group(1))
    assert change < 1e-5


def test_every_docs_link_of_the_readme_is_a_file_and_every_doc_is_linked():
    linked = [target for target in LINK.findall(README.read_text(encoding="utf-8")) if target.startswith("docs/")]
    assert linked, "the README links no docs/ file"
    missing = [target for target in linked if not (ROOT / target).is_file()]
    assert not missing, f"README.md links missing files: {missing}"
    docs = sorted(path.relative_to(ROOT).as_posix() for path in DOCS.glob("*.md"))
    unlinked = [doc for doc in docs if doc not in linked]
    assert not unlinked, f"docs the README does not link: {unlinked}"


def test_every_relative_link_between_the_docs_is_a_file():
    missing = [
        f"{doc.name}: {target}"
        for doc in sorted(DOCS.glob("*.md"))
        for target in LINK.findall(doc.read_text(encoding="utf-8"))
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert not missing, f"links to missing files: {missing}"
