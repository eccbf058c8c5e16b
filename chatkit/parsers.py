from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import JSONParser

# JSON is UTF-8 (RFC 8259, section 8.1). Any other charset is refused rather
# than decoded: Python resolves a charset through codecs.lookup(), which also
# names bytes-to-bytes codecs (bz2_codec, zlib_codec, base64_codec, rot_13):
# decoding through one of them expands a few hundred bytes into hundreds of
# megabytes before any size limit applies, or turns an unreadable body into
# one that is acted on.
_UTF8 = {"utf-8", "utf8"}


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, refusing any charset but UTF-8 before the body is read,
    and answering a 400 for nesting deep enough to exhaust the stack."""

    def parse(self, stream, media_type=None, parser_context=None):
        _, params = parse_header_parameters(media_type or "")
        charset = params.get("charset")
        if charset is not None and charset.strip().lower() not in _UTF8:
            raise UnsupportedMediaType(
                media_type, detail="A JSON request body must be UTF-8 (charset=utf-8 or none)."
            )
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON nested too deeply.") from None
