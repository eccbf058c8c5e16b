"""Running the ChatKit conformance checker, and reading and writing its transcripts.

The checker (``conformance/check_chatkit.py``) needs the official
``openai-chatkit`` package, which cannot be imported here (our app is also
``chatkit``), so it runs in its own virtualenv, built by ``make conformance``
(``make test`` builds it first): a subprocess, isolated, from a directory
outside the project. ``CHATKIT_CHECKER_PYTHON`` names that interpreter when
it is not ``.venv-chatkit/bin/python``.
"""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.sse import PROJECT_DIR

CHECKER = PROJECT_DIR / "conformance" / "check_chatkit.py"
CHECKER_TIMEOUT = 120


def checker_python() -> Path:
    path = Path(
        os.environ.get("CHATKIT_CHECKER_PYTHON") or PROJECT_DIR / ".venv-chatkit" / "bin" / "python"
    )
    if not path.exists():
        pytest.fail(f"no ChatKit checker interpreter at {path}: run `make conformance` first")
    return path


def run_checker(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """The checker on ``args``, from ``cwd`` (outside the project), with its output."""
    return subprocess.run(
        [checker_python(), "-I", CHECKER, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT,
        check=False,
    )


def read_transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_transcript(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def stream_events(record: dict[str, Any]) -> list[Any]:
    """The ``data:`` frames of a recorded stream, decoded."""
    return [
        json.loads(line.removeprefix("data: "))
        for line in record["body"].splitlines()
        if line.startswith("data: ")
    ]


def set_stream_events(record: dict[str, Any], events: list[Any]) -> None:
    record["body"] = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
