"""How the API writes times: expiry in an HTTP date (the `Expires` header) and in ISO-8601 UTC
(listings and watch events)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

MAX_TTL = 315_360_000  # seconds: ten years


def iso_time(millis: int | None) -> str | None:
    """`2027-01-15T10:00:05.000Z`, or None for None."""
    if millis is None:
        return None
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def http_date(millis: int) -> str:
    """`Fri, 15 Jan 2027 10:00:05 GMT` (whole seconds, rounded up: never before the expiry)."""
    return format_datetime(datetime.fromtimestamp(-(-millis // 1000), UTC), usegmt=True)
