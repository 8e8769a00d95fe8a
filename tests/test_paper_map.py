"""docs/paper_map.md stays true: every mapped function imports, every mapped test exists, and
every numbered equation of the paper (1-16) has a row.

The table is parsed as Markdown: one table, columns ``paper | what it is | function | test |
deviation from the paper``; the function and test cells hold backticked items separated by
commas (the test cell may instead say ``none``).
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

from conftest import ROOT

MAP = ROOT / "docs" / "paper_map.md"
COLUMNS = ["paper", "what it is", "function", "test", "deviation from the paper"]
N_EQUATIONS = 16

_ITEM = re.compile(r"`([^`]+)`")
_EQ = re.compile(r"\beqs?\.\s*(\d+)(?:\s*[-\u2013]\s*(\d+))?")


# --------------------------------------------------------------------------- parsing


def _cells(line: str) -> list[str]:
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), f"not a table row: {line!r}"
    return [c.strip() for c in re.split(r"(?<!\\)\|", body[1:-1])]


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of ``text`` as a list of rows ``{column: cell}`` (header row removed)."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    out = []
    for lines in tables:
        header = _cells(lines[0])
        assert len(lines) >= 2 and all(re.fullmatch(r":?-{3,}:?", c) for c in _cells(lines[1])), (
            f"table starting {lines[0]!r} has no separator row"
        )
        rows = []
        for line in lines[2:]:
            cells = _cells(line)
            assert len(cells) == len(header), f"row has {len(cells)} cells, header {len(header)}: {line!r}"
            rows.append(dict(zip(header, cells)))
        out.append([{"__header__": "|".join(header)}, *rows])
    return out


def items(cell: str) -> list[str]:
    """The backticked items of a function/test cell; anything else but commas is an error."""
    found = _ITEM.findall(cell)
    rest = _ITEM.sub("", cell)
    assert re.fullmatch(r"[\s,]*", rest), f"cell {cell!r} holds text besides backticked items: {rest!r}"
    return found


def equations(paper_cell: str) -> set[int]:
    """Equation numbers named in a paper cell: ``eq. 7``, ``eq. 14-16``."""
    out: set[int] = set()
    for a, b in _EQ.findall(paper_cell):
        out.update(range(int(a), int(b or a) + 1))
    return out


# --------------------------------------------------------------------------- resolving


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name is not None and not ".".join(parts[:i]).startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)  # AttributeError names the missing piece
        return obj
    raise ModuleNotFoundError(f"no importable prefix in {dotted!r}")


@cache
def _defined_tests(path: Path) -> frozenset[str]:
    """``name`` and ``Class::name`` of every function defined at the top level / in a class of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{n.name}" for n in node.body if isinstance(n, funcs))
    return frozenset(names)


def check_test_id(node_id: str, root: Path = ROOT) -> None:
    """Raise AssertionError unless ``node_id`` (``tests/x.py::test_y[param]``) names a defined test."""
    path, sep, name = node_id.partition("::")
    assert sep and name, f"{node_id!r} is not a pytest node id (file::test)"
    name = re.sub(r"\[.*\]$", "", name)  # a parametrised id may carry its [..] part
    file = root / path
    assert file.is_file(), f"{node_id}: no file {path}"
    assert Path(path).name.startswith("test_") and path.endswith(".py"), f"{node_id}: not a test module"
    assert name.rsplit("::", 1)[-1].startswith("test_"), f"{node_id}: not a test function name"
    assert name in _defined_tests(file), f"{node_id}: no `def {name.rsplit('::', 1)[-1]}` in {path}"


# --------------------------------------------------------------------------- the map


@cache
def _rows() -> tuple[dict[str, str], ...]:
    tables = parse_tables(MAP.read_text(encoding="utf-8"))
    assert len(tables) == 1, f"{MAP.name} must hold exactly one table, found {len(tables)}"
    header, *rows = tables[0]
    assert header["__header__"].split("|") == COLUMNS
    assert rows, "the table is empty"
    return tuple(rows)


def _all(column: str) -> list[str]:
    """Every backticked item of ``column`` (cells reading ``none`` hold none)."""
    return sorted({i for r in _rows() if r[column].lower() != "none" for i in items(r[column])})


def test_map_is_one_table_with_the_expected_columns() -> None:
    rows = _rows()
    for r in rows:
        assert r["paper"] and r["what it is"], r
        assert items(r["function"]), f"row {r['paper']!r} maps to no function"
        assert r["test"].lower() == "none" or items(r["test"]), f"row {r['paper']!r}: test cell {r['test']!r}"


@pytest.mark.parametrize("dotted", _all("function"))
def test_every_mapped_function_imports(dotted: str) -> None:
    assert resolve(dotted) is not None


@pytest.mark.parametrize("node_id", _all("test"))
def test_every_mapped_test_exists(node_id: str) -> None:
    check_test_id(node_id)


def test_every_equation_of_the_paper_has_a_row() -> None:
    covered = set().union(*(equations(r["paper"]) for r in _rows()))
    assert set(range(1, N_EQUATIONS + 1)) <= covered, f"missing: {sorted(set(range(1, N_EQUATIONS + 1)) - covered)}"
    assert covered <= set(range(1, N_EQUATIONS + 1)), f"the paper has no eq. {sorted(covered - set(range(1, 17)))}"


@pytest.mark.parametrize(
    "dotted",
    [
        "vce.models.pgmgvce.PGMGVCEGenerator",
        "vce.models.discriminator.PatchDiscriminator",
        "vce.models.mmgsn.MMgSNGenerator",
        "vce.losses.generator_objective",
        "vce.losses.discriminator_objective",
        "vce.losses.r1_penalty",
        "vce.losses.wgan_gp_penalty",
        "vce.training.step.GanStep.d_step",
        "vce.training.step.GanStep.g_step",
        "vce.reporting.ablations.ABLATIONS",
        "vce.reporting.ablations.derive_roles",
        "vce.reporting.tables.build_tables",
    ],
)
def test_the_key_components_are_mapped(dotted: str) -> None:
    assert dotted in _all("function")


@pytest.mark.parametrize("label", ["sec. 2.2 Fig. 1", "Table 1", "Table 2", "sec. 2.5.1 ratio ablation"])
def test_the_tables_and_the_architecture_have_rows(label: str) -> None:
    assert any(r["paper"].startswith(label) for r in _rows()), label


# --------------------------------------------------------------------------- the checks themselves


def test_a_renamed_function_is_caught() -> None:
    with pytest.raises(AttributeError, match="pixelwise_gradient_loss_v2"):
        resolve("vce.losses.pixelwise_gradient_loss_v2")
    with pytest.raises(AttributeError):
        resolve("vce.training.step.GanStep.d_step_renamed")
    with pytest.raises(ModuleNotFoundError):
        resolve("vce_no_such_package.losses.f")
    assert resolve("vce.losses.pixelwise_gradient_loss").__name__ == "pixelwise_gradient_loss"


def test_a_renamed_or_missing_test_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "def test_kept():\n    pass\n\nclass TestGroup:\n    def test_method(self):\n        pass\n"
        "\ndef helper():\n    pass\n# def test_in_a_comment():\n"
    )
    check_test_id("tests/test_x.py::test_kept", tmp_path)
    check_test_id("tests/test_x.py::test_kept[a-1]", tmp_path)
    check_test_id("tests/test_x.py::TestGroup::test_method", tmp_path)
    for bad in (
        "tests/test_x.py::test_renamed",
        "tests/test_x.py::test_in_a_comment",
        "tests/test_x.py::helper",
        "tests/test_gone.py::test_kept",
        "tests/test_x.py",
    ):
        with pytest.raises(AssertionError):
            check_test_id(bad, tmp_path)


def test_the_parser() -> None:
    text = (
        "intro\n\n| paper | function |\n|---|---|\n| eq. 4-6 | `a.b`, `c.d` |\n| eq. 9 | `e` |\n\n"
        "| x |\n|---|\n| y |\n"
    )
    tables = parse_tables(text)
    assert len(tables) == 2
    rows = tables[0][1:]
    assert [items(r["function"]) for r in rows] == [["a.b", "c.d"], ["e"]]
    assert equations(rows[0]["paper"]) == {4, 5, 6} and equations("sec. 2.2 Fig. 1") == set()
    with pytest.raises(AssertionError):
        items("`a.b` and also prose")
