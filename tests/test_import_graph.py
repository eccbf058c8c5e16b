"""Imports point one way: chatkit and accounts use conversations; conversations uses neither,
accounts does not use chatkit, the chat page (web) uses none of them, and no app imports the
project package (which imports them).
The benchmark's bare views are not part of the product."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "conversations": {"chatkit", "accounts", "chatbot_project", "api_common", "bench"},
    "accounts": {"chatkit", "chatbot_project", "bench"},
    "chatkit": {"chatbot_project", "bench"},
    "chatbot_project": {"bench"},
    # The chat page is a client of the HTTP API, like any other front end.
    "web": {"conversations", "chatkit", "accounts", "api_common", "chatbot_project", "bench"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in wrong.items() if names} == {}


def test_the_benchmark_view_is_not_served(anon, db):
    assert anon.post("/bench/sessions", {}, format="json").status_code == 404
    assert anon.get("/bench/sessions").status_code == 404
