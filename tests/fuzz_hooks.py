"""Schemathesis hooks for tests/test_fuzz.py (loaded by the schemathesis CLI, not pytest).

Every valid ``Idempotency-Key`` the fuzzer generates is made unique. The
generator repeats small values ("0", "A") across unrelated cases, and a
repeated key is, by the contract, a replay of the first answer: a session
"created" again after it was deleted, or a 422 for a valid request. Schemathesis
would take the replay for a new creation and report the deleted object as
missing. Keys that are invalid (the negative cases) are sent as generated;
replays themselves are tested in tests/test_idempotency.py.
"""

import itertools
import re
import uuid

import schemathesis

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
# What the schema allows: printable ASCII, no space at either end.
_VALID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_RUN = uuid.uuid4().hex[:8]
_numbers = itertools.count()


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers
    if not headers:
        return
    key = headers.get(HEADER)
    if not isinstance(key, str) or len(key) > MAX_LENGTH or not _VALID.fullmatch(key):
        return
    suffix = f"~{_RUN}.{next(_numbers)}"
    headers[HEADER] = key[: MAX_LENGTH - len(suffix)] + suffix
