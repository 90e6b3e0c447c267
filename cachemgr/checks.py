"""Checks of the values an adapter passes in (a task's JSON arguments above all): a wrong type
or an absurd number is refused with a one-line message before anything changes. JSON gives
"0" or 0.5 where a flag was meant, and Lua's numbers are doubles."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cachemgr.errors import BadArgument

# Lua's numbers are doubles: a whole number past 2^53 loses its last digits on the way through
# a script (and Redis then refuses it as "not an integer").
MAX_EXACT = 2**53


def flag(name: str, value: Any) -> bool:
    """`value` if it is a real boolean: "0", 0.5 and None are not."""
    if not isinstance(value, bool):
        raise BadArgument(f"{name} must be true or false, got {shown(value)}")
    return value


def whole(name: str, value: Any, *, low: int = 0, high: int = MAX_EXACT) -> int:
    """`value` if it is a whole number (not a boolean) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        said = shown(value)
        raise BadArgument(f"{name} must be a whole number from {low} to {high}, got {said}")
    return value


def seconds(name: str, value: Any, *, low: float, high: float, hint: str = "") -> float:
    """`value` if it is a number of seconds from `low` to `high`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not low <= value <= high:  # NaN fails the comparison too
        raise BadArgument(
            f"{name} must be a number of seconds from {low:g} to {high:g}{hint}, "
            f"got {shown(value)}"
        )
    return float(value)


# A pin holder's name: one per stream or job (two streams under one name end each other's
# lease); what a log line can show.
MAX_HOLDER = 200


def many(name: str, values: Iterable[Any]) -> list[Any]:
    """A batch as a list; one string is refused: iterated, it played each of its letters."""
    if isinstance(values, str | bytes):
        raise BadArgument(f"{name} must be a list, not one string: {values!r}")
    return list(values)


def holder(value: Any) -> str:
    """A pin holder's name: None for anyone's lease, else a string of 1 to 200 printable
    characters, not all blank (an unset $STREAM_ID, passed as '', ended every stream's lease)."""
    if value is None:
        return ""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_HOLDER
        or not value.isprintable()
    ):
        raise BadArgument(
            f"holder must be a name of at most {MAX_HOLDER} printable characters, "
            f"got {shown(value)}"
        )
    return value


# A node's name, wherever one is asked for (`?node=`, `cachemgr forget-node`).
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
NODE_NAME_RULE = "a node's name: 1 to 100 of letters, digits, '_', '.' and '-'"


def node_name(value: Any) -> str:
    """`value` if it can be a node's name."""
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise BadArgument(f"{NODE_NAME_RULE}, got {shown(value)}")
    return value


def shown(value: Any, width: int = 40) -> str:
    """The value in a one-line message: a 400-digit number by its start and its length
    (past `width` characters, half of them)."""
    text = repr(value)
    size = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= width else f"{text[: width // 2]}... ({size} characters)"
