"""The package's structure: no import cycle among its modules (scripts/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_among_the_packages_modules(capsys):
    assert _import_graph().main() == 0, capsys.readouterr().out


def test_the_cycle_finder_finds_a_cycle():
    graph = _import_graph()
    found = graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()})
    assert found == [["a", "b", "c"]]
