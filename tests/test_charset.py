"""A JSON body is UTF-8: any other charset is refused with 415 before the body is read.

Python decodes through whatever ``codecs.lookup()`` resolves, bytes-to-bytes
codecs included: ``bz2_codec`` turned 304 bytes into 300 MB, and ``rot_13``
or ``base64_codec`` turned an unreadable body into an account.
"""

import bz2
import codecs
import encodings
import json
import pkgutil
import tracemalloc

import pytest

from accounts.models import User
from conversations.models import Conversation

REGISTER = "/api/v1/auth/register"
SESSIONS = "/api/v1/chatkit/sessions"


def _codec_charsets() -> list[str]:
    """Every codec this interpreter has that is not a text encoding."""
    names = {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    names |= set(encodings.aliases.aliases)
    found = set()
    for name in names:
        try:
            info = codecs.lookup(name)
        except LookupError:
            continue
        if not info._is_text_encoding:
            found.add(name)
    return sorted(found)


CODEC_CHARSETS = _codec_charsets()
TEXT_CHARSETS = ["latin-1", "utf-16", "utf-32", "cp1252", "ascii", "utf-7", "no-such-charset"]


def test_the_codec_list_is_not_empty():
    # The list above is computed; it must hold the codecs the attack used.
    assert {"bz2_codec", "rot_13", "base64_codec", "hex_codec", "zlib_codec"} <= set(CODEC_CHARSETS)


def _register_body(encoding: str) -> bytes:
    body = json.dumps({"username": f"made-by-{encoding}", "password": "a long passphrase 1927"})
    if encoding not in CODEC_CHARSETS:
        return body.encode()
    try:
        encoded = codecs.encode(body.encode(), encoding)  # bytes-to-bytes (bz2, base64, ...)
    except TypeError:
        encoded = codecs.encode(body, encoding)  # str-to-str (rot_13)
    return encoded if isinstance(encoded, bytes) else encoded.encode()


def _assert_415(response) -> None:
    assert response.status_code == 415, response.content
    error = response.json()["error"]
    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "UTF-8" in error["message"]


@pytest.mark.parametrize("charset", CODEC_CHARSETS)
def test_codec_charset_on_register_is_415_and_creates_nothing(anon, db, charset):
    raw = _register_body(charset)

    response = anon.generic(
        "POST", REGISTER, raw, content_type=f"application/json; charset={charset}"
    )

    _assert_415(response)
    assert not User.objects.exists()


@pytest.mark.parametrize("charset", CODEC_CHARSETS + TEXT_CHARSETS)
def test_other_charset_on_session_create_is_415_and_stores_nothing(api, charset):
    response = api.generic(
        "POST", SESSIONS, b'{"title": "x"}', content_type=f"application/json; charset={charset}"
    )

    _assert_415(response)
    assert not Conversation.objects.exists()


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "utf8", '"utf-8"'])
def test_utf8_in_any_spelling_is_read(api, charset):
    response = api.generic(
        "POST",
        SESSIONS,
        '{"title": "Grüße"}'.encode(),
        content_type=f"application/json; charset={charset}",
    )

    assert response.status_code == 201, response.content
    assert response.json()["data"]["title"] == "Grüße"


def test_compression_bomb_is_not_expanded(anon, db):
    expanded = 64 * 1024 * 1024
    bomb = bz2.compress(b'{"username": "' + b"a" * expanded + b'"}')
    assert len(bomb) < 10_000

    tracemalloc.start()
    try:
        response = anon.generic(
            "POST", REGISTER, bomb, content_type="application/json; charset=bz2_codec"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    _assert_415(response)
    # Decompressing would have held the 64 MiB at least once.
    assert peak < expanded // 8
    assert not User.objects.exists()
