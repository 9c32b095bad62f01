"""How the API writes times: expiry in an HTTP date (the `Expires` header) and in ISO-8601 UTC
(listings and watch events)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

MAX_TTL = 315_360_000  # seconds: ten years


def iso_time(millis: int | None) -> str | None:
    """`2027-01-15T10:00:05.000Z`, or None for None."""
    if millis is None:
        return None
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_iso_time(text: str) -> int:
    """The milliseconds `iso_time` wrote as `text` (exactly that form); ValueError otherwise."""
    if _ISO.fullmatch(text) is None:
        raise ValueError(f"not a time of the form 2027-01-15T10:00:05.000Z: {text!r}")
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def http_date(millis: int) -> str:
    """`Fri, 15 Jan 2027 10:00:05 GMT` (whole seconds, rounded up: never before the expiry)."""
    return format_datetime(datetime.fromtimestamp(-(-millis // 1000), UTC), usegmt=True)
