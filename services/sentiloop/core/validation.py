"""Input rules shared by every service that takes texts and labels."""

from __future__ import annotations

import re

from sentiloop.core.errors import InvalidArgument
from sentiloop.core.vocabulary import LABELS


def check_text(text: str, max_length: int, field: str = "text") -> str | None:
    """Returns what is wrong with ``text``, or None when it is acceptable."""
    if not text.strip():
        return "must not be empty"
    if len(text) > max_length:
        return f"is {len(text)} characters long; the limit is {max_length}"
    return None


def quoted(value: str, limit: int = 60) -> str:
    """``value`` as an error message quotes it: a long one shortened, so the message
    still says what is wrong."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def label_problem(value: str) -> str:
    return f"{quoted(value)} is not a label; use one of {', '.join(LABELS)}"


MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    """A list request's page size: 0 means the default; otherwise 1..MAX_PAGE_SIZE."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgument({"page_size": f"must be between 1 and {MAX_PAGE_SIZE}"})
    return requested or DEFAULT_PAGE_SIZE


_DECIMAL = re.compile(r"[0-9]{1,18}")


def decimal(text: str) -> int | None:
    """``text`` as a non-negative integer that fits SQLite's, or None. ``str.isdigit``
    is not enough: it accepts digits like '²' that int() refuses."""
    return int(text) if _DECIMAL.fullmatch(text) else None
