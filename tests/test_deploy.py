"""Deploys with replicas: migrations are a one-off step, never part of a service's start.

Read from the files themselves: the image's CMD and ENTRYPOINT, the systemd
units of the API and the worker (every command they run, and what starting
them pulls in), and the migration unit, a oneshot that nothing starts by
itself.
"""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICES = ["chatbot-web.service", "chatbot-worker.service"]
MIGRATE_UNIT = "chatbot-migrate.service"
# Every directive with which a unit runs a command.
EXEC = re.compile(r"Exec[A-Za-z]*")
# Dependencies that start another unit along with this one.
PULLS_IN = ("Requires", "Wants", "BindsTo", "Requisite", "Upholds", "PartOf")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            current = ""
    return instructions


def command_words(arguments: str) -> list[str]:
    """The words of a CMD or ENTRYPOINT, exec form (JSON) or shell form."""
    words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    # A shell's script ("sh -c '...'") is words too.
    return [word for each in words for word in shlex.split(each)]


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: section -> directive -> its values, in order (a directive may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_image_starts_gunicorn_and_never_migrates():
    starts = [
        (keyword, arguments)
        for keyword, arguments in dockerfile_instructions()
        if keyword in ("CMD", "ENTRYPOINT")
    ]

    assert [keyword for keyword, _ in starts] == ["CMD"]
    words = command_words(starts[0][1])
    assert words[0] == "gunicorn"
    assert "migrate" not in words
    assert not [word for word in words if "migrate" in word]


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_unit_runs_no_migration(name):
    service = unit(name)["Service"]

    commands = [value for key, values in service.items() if EXEC.fullmatch(key) for value in values]

    assert commands
    assert not [command for command in commands if "migrate" in command]


@pytest.mark.parametrize("name", SERVICES)
def test_starting_a_service_does_not_start_the_migration(name):
    sections = unit(name)

    pulled = [
        value for section in sections.values() for key in PULLS_IN for value in section.get(key, [])
    ]

    assert not [value for value in pulled if MIGRATE_UNIT in value.split()]
    # Ordered after it: started together, the migration goes first.
    assert MIGRATE_UNIT in " ".join(sections["Unit"]["After"]).split()


def test_the_migration_unit_is_a_oneshot_run_by_hand():
    sections = unit(MIGRATE_UNIT)
    service = sections["Service"]

    assert service["Type"] == ["oneshot"]
    assert [shlex.split(command)[1:] for command in service["ExecStart"]] == [
        ["manage.py", "migrate", "--noinput"]
    ]
    # Every start runs it again, and nothing starts it at boot.
    assert service.get("RemainAfterExit", ["no"]) == ["no"]
    assert "Install" not in sections
    assert service["EnvironmentFile"] == unit(SERVICES[0])["Service"]["EnvironmentFile"]
