"""The ChatKit conformance checker can fail: the reference server's own session passes it,
and each kind of deviation from it is reported by name.

The reference session is recorded by the checker itself (``--record-reference``)
on the official package's ``ChatKitServer``; every mutation below breaks one
rule in a copy of it. One checker run covers all the copies (each transcript
is reported in its own section), so the whole module costs three runs of the
checker's interpreter.
"""

import copy
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import (
    CHECKER,
    CHECKER_TIMEOUT,
    checker_python,
    read_transcript,
    run_checker,
    set_stream_events,
    stream_events,
    write_transcript,
)
from tests.sse import PROJECT_DIR

Records = list[dict[str, Any]]

ENVELOPE_404 = {
    "success": False,
    "error": {"code": "NOT_FOUND", "message": "Not found.", "details": None, "request_id": "r1"},
}


def exchange(records: Records, request_type: str, nth: int = 0) -> dict[str, Any]:
    return [record for record in records if record["request"]["type"] == request_type][nth]


def edit_events(record: dict[str, Any], edit: Callable[[list[Any]], None]) -> None:
    events = stream_events(record)
    edit(events)
    set_stream_events(record, events)


def edit_json(record: dict[str, Any], edit: Callable[[Any], None]) -> None:
    body = json.loads(record["body"])
    edit(body)
    record["body"] = json.dumps(body)


def kind_index(events: list[Any], event_type: str, item_type: str | None = None) -> int:
    return next(
        index
        for index, event in enumerate(events)
        if event["type"] == event_type
        and (item_type is None or event.get("item", {}).get("type") == item_type)
    )


def missing_field(records: Records) -> None:
    def edit(events):
        del events[kind_index(events, "thread.item.done", "user_message")]["item"]["created_at"]

    edit_events(exchange(records, "threads.create"), edit)


def wrong_type(records: Records) -> None:
    edit_json(exchange(records, "items.list"), lambda body: body.update(has_more="yes"))


def reordered_event(records: Records) -> None:
    def edit(events):
        events[1], events[2] = events[2], events[1]

    edit_events(exchange(records, "threads.create"), edit)


def extra_event(records: Records) -> None:
    def edit(events):
        events.insert(2, {"type": "progress_update", "text": "Thinking"})

    edit_events(exchange(records, "threads.add_user_message"), edit)


def missing_event(records: Records) -> None:
    def edit(events):
        assert events[-1]["type"] == "thread.updated"
        events.pop()

    edit_events(exchange(records, "threads.create"), edit)


def unknown_field(records: Records) -> None:
    edit_json(exchange(records, "threads.get_by_id"), lambda body: body.update(owner="someone"))


def deltas_do_not_add_up(records: Records) -> None:
    def edit(events):
        done = events[kind_index(events, "thread.item.done", "assistant_message")]
        done["item"]["content"][0]["text"] += " (and a word never streamed)"

    edit_events(exchange(records, "threads.add_user_message"), edit)


def stop_not_a_prefix(records: Records) -> None:
    stopped = exchange(records, "threads.add_user_message", nth=1)
    assert stopped["dropped"]
    edit_events(stopped, lambda events: events.pop(kind_index(events, "stream_options")))


def update_of_unknown_item(records: Records) -> None:
    def edit(events):
        index = kind_index(events, "thread.item.updated")
        events[index]["item_id"] = "msg_nobody"

    edit_events(exchange(records, "threads.retry_after_item"), edit)


def page_shape(records: Records) -> None:
    edit_json(exchange(records, "items.list"), lambda body: body["data"].pop())


def bad_envelope(records: Records) -> None:
    records.append(
        {
            "request": {"type": "nope", "params": {}},
            "status": 400,
            "content_type": "application/json",
            "body": json.dumps({"detail": "bad request"}),
        }
    )


def server_error(records: Records) -> None:
    records.append(
        {
            "request": {"type": "threads.get_by_id", "params": {"thread_id": "x"}},
            "status": 500,
            "content_type": "application/json",
            "body": json.dumps(ENVELOPE_404),
        }
    )


def invalid_request_accepted(records: Records) -> None:
    exchange(records, "threads.list")["request"]["params"]["limit"] = "ten"


def wrong_content_type(records: Records) -> None:
    exchange(records, "threads.get_by_id")["content_type"] = "text/html"


def named_events(records: Records) -> None:
    record = exchange(records, "threads.create")
    record["body"] = record["body"].replace("data: ", "event: chatkit\ndata: ")


def truncated_stream(records: Records) -> None:
    record = exchange(records, "threads.retry_after_item")
    record["body"] = record["body"].removesuffix("\n\n")


def feedback_not_empty(records: Records) -> None:
    exchange(records, "items.feedback")["body"] = json.dumps({"ok": True})


def listed_thread_with_items(records: Records) -> None:
    items = json.loads(exchange(records, "threads.get_by_id")["body"])["items"]
    edit_json(exchange(records, "threads.list"), lambda body: body["data"][0].update(items=items))


def created_status(records: Records) -> None:
    exchange(records, "threads.update")["status"] = 201


def failed_turn(records: Records, *, close_reply: bool) -> None:
    """A turn whose provider fails after the deltas, added before the thread is deleted."""
    turn = copy.deepcopy(exchange(records, "threads.add_user_message"))
    events = stream_events(turn)
    for event in events:
        if "item_id" in event:
            event["item_id"] += "-again"
        if "item" in event:
            event["item"]["id"] += "-again"
    if not close_reply:
        assert events.pop()["type"] == "thread.item.done"
    events.append({"type": "error", "code": "stream.error", "allow_retry": True})
    set_stream_events(turn, events)
    records.insert(records.index(exchange(records, "threads.delete")), turn)


def failed_turn_half_closed(records: Records) -> None:
    failed_turn(records, close_reply=False)


def failed_turn_closing_its_reply(records: Records) -> None:
    """Not a deviation: the accepted difference of a failed turn (ACCEPTED in the checker)."""
    failed_turn(records, close_reply=True)


def with_error_exchanges(records: Records) -> None:
    """Not a deviation: errors in the envelope, between the session's exchanges."""
    for index, status in ((3, 404), (6, 400)):
        records.insert(
            index,
            {
                "request": {"type": "threads.get_by_id", "params": {"thread_id": "thr_unknown"}},
                "status": status,
                "content_type": "application/json",
                "body": json.dumps(ENVELOPE_404),
            },
        )


# (mutation, the rule the checker must name, a fragment of its report)
MUTATIONS = [
    (missing_field, "schema", "created_at: Field required"),
    (wrong_type, "schema", "has_more: Input should be a valid boolean"),
    (reordered_event, "sequence", "not the reference server's"),
    (extra_event, "sequence", "progress_update"),
    (missing_event, "sequence", "thread.updated"),
    (unknown_field, "schema", "owner: unknown field"),
    (deltas_do_not_add_up, "invariant", "the deltas make"),
    (stop_not_a_prefix, "sequence", "not a prefix of the reference server's"),
    (update_of_unknown_item, "invariant", "not in flight"),
    (page_shape, "shape", "the reference server's"),
    (bad_envelope, "envelope", "not the error envelope"),
    (server_error, "status", "500"),
    (invalid_request_accepted, "request", "limit: Input should be a valid integer"),
    (wrong_content_type, "content-type", "text/html"),
    (named_events, "stream-format", "named event"),
    (truncated_stream, "stream-format", "the stream ends"),
    (feedback_not_empty, "schema", "the answer is {}"),
    (listed_thread_with_items, "schema", "items are sent empty here"),
    (created_status, "status", "201, ChatKit answers 200"),
    (failed_turn_half_closed, "sequence", "error"),
]
# Transcripts that differ from the reference session but conform: (change, a report line).
CONFORMING = [
    (with_error_exchanges, "0 violations: conforms"),
    (failed_turn_closing_its_reply, "accepted difference: a turn that fails mid-reply"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chatkit-checker")


@pytest.fixture(scope="module")
def recorded(workdir) -> tuple[subprocess.CompletedProcess, Records]:
    """A whole session recorded on the package's reference server, and the checker's verdict."""
    path = workdir / "reference.jsonl"
    result = run_checker("--record-reference", path, path, cwd=workdir)
    return result, read_transcript(path)


@pytest.fixture(scope="module")
def reference(recorded) -> Records:
    return recorded[1]


def sections(output: str) -> dict[str, str]:
    """The report of each transcript, by file name."""
    parts = re.split(r"^== (.+)$", output, flags=re.MULTILINE)
    return {Path(name).name: text for name, text in zip(parts[1::2], parts[2::2], strict=True)}


def violations(report: str) -> list[str]:
    """Each violation of a report, with its indented continuation lines."""
    blocks: list[str] = []
    for line in report.splitlines():
        if line.startswith("    ") and blocks:
            blocks[-1] += "\n" + line
        elif line.strip():
            blocks.append(line)
    return blocks


@pytest.fixture(scope="module")
def mutated_reports(workdir, reference) -> tuple[int, dict[str, str]]:
    """One checker run on every changed copy of the reference session, deviant or not."""
    paths = []
    for mutate in [mutate for mutate, _, _ in MUTATIONS] + [change for change, _ in CONFORMING]:
        records = copy.deepcopy(reference)
        mutate(records)
        path = workdir / f"{mutate.__name__}.jsonl"
        write_transcript(path, records)
        paths.append(path)
    result = run_checker(*paths, cwd=workdir)
    return result.returncode, sections(result.stdout)


def test_reference_session_conforms(recorded):
    result, records = recorded

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(records)} exchanges, 0 violations: conforms" in result.stdout


@pytest.mark.parametrize(("change", "line"), CONFORMING, ids=[c.__name__ for c, _ in CONFORMING])
def test_accepted_change_conforms(mutated_reports, change, line):
    _, reports = mutated_reports
    report = reports[f"{change.__name__}.jsonl"]

    assert "0 violations: conforms" in report, report
    assert line in report, report


def test_reference_session_covers_every_kind_of_request(reference):
    kinds = {record["request"]["type"] for record in reference}
    assert kinds == {
        "threads.create",
        "threads.add_user_message",
        "threads.retry_after_item",
        "threads.list",
        "threads.get_by_id",
        "items.list",
        "items.feedback",
        "threads.update",
        "threads.delete",
    }
    assert any(record["dropped"] for record in reference)


@pytest.mark.parametrize(
    ("mutate", "rule", "fragment"), MUTATIONS, ids=[m.__name__ for m, _, _ in MUTATIONS]
)
def test_deviation_is_reported_by_name(mutated_reports, mutate, rule, fragment):
    returncode, reports = mutated_reports
    report = reports[f"{mutate.__name__}.jsonl"]

    assert returncode == 1
    assert "DOES NOT CONFORM" in report, report
    assert any(f"[{rule}]" in block and fragment in block for block in violations(report)), report


def test_checker_refuses_to_run_inside_the_project():
    result = run_checker("--help", cwd=PROJECT_DIR)

    assert result.returncode == 2
    assert "outside the project" in result.stderr


def test_checker_refuses_to_run_without_isolation(workdir):
    # Not isolated, PYTHONPATH would put our app first for `import chatkit`.
    result = subprocess.run(
        [checker_python(), CHECKER, "--help"],
        cwd=workdir,
        env={"PYTHONPATH": str(PROJECT_DIR), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=CHECKER_TIMEOUT,
        check=False,
    )

    assert result.returncode == 2
    assert "run it isolated" in result.stderr


def decoded(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the endpoint's own tests write it (CHATKIT_TRANSCRIPTS): answers decoded."""
    if record["content_type"].startswith("text/event-stream"):
        answer = {"events": stream_events(record)}
    else:
        answer = {"json": json.loads(record["body"])}
    return {"request": record["request"], "status": record["status"], **answer}


def test_decoded_exchanges_in_any_order_are_checked_without_replay(workdir, reference):
    # Out of order, so that only a checker that does not replay can pass them.
    fine = [decoded(record) for record in reversed(reference) if not record["dropped"]]
    broken = copy.deepcopy(fine)
    del next(r for r in broken if r["request"]["type"] == "threads.get_by_id")["json"]["created_at"]
    write_transcript(workdir / "decoded.jsonl", fine)
    write_transcript(workdir / "decoded-broken.jsonl", broken)

    result = run_checker("--no-replay", "decoded.jsonl", "decoded-broken.jsonl", cwd=workdir)

    reports = sections(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{len(fine)} exchanges, 0 violations: conforms" in reports["decoded.jsonl"]
    broken_report = reports["decoded-broken.jsonl"]
    assert "1 violations: DOES NOT CONFORM" in broken_report, broken_report
    assert "[schema] Thread: created_at: Field required" in broken_report, broken_report
