"""Sizes and durations as people write and read them: `10GiB`, `500MB`, `24h`; `1.5 KiB`.

One table for every reader (settings, the CLI's filters, the simulator's cache sizes): a bare
letter is decimal, as `KB`, `MB`... are (`10G` = 10^10 bytes); the binary units say so
(`10GiB` = 10 x 2^30). A quota written `10G` is then never larger than its writer meant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

_SI = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _letter, _power in _SI.items():
    SIZE_UNITS[_letter] = SIZE_UNITS[f"{_letter}b"] = 1000**_power
    SIZE_UNITS[f"{_letter}ib"] = 1024**_power
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
# Digits read of a number: every bound in cachemgr has at most 19, and a 5000-digit value
# would otherwise reach int()'s own limit, with a message about Python rather than the value.
MAX_DIGITS = 40


def number_with_unit(text: str, units: Mapping[str, int], what: str) -> Fraction:
    """The exact value of `1.5KiB`, `24h`...: Fraction, not float, so that 2^63 - 1 stays itself
    and a 400-digit number is a number too large rather than an OverflowError."""
    match = _NUMBER_UNIT.match(str(text))
    if not match:
        raise ValueError(f"not a {what}: {text!r}")
    number, unit = match.groups()
    factor = units.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r}")
    whole, _, decimals = number.partition(".")
    if len(decimals) > MAX_DIGITS:
        raise ValueError(f"too many decimals in {text!r}")
    if len(whole.lstrip("0")) > MAX_DIGITS:
        # Beyond every bound: the caller's "must be at most" says so, without reading it all.
        return Fraction(10**MAX_DIGITS)
    return Fraction(number) * factor


def size(text: str | int) -> int:
    """Bytes, exactly, unbounded (the caller names the bound). A fraction of a byte
    (`1.1MiB`) is dropped."""
    if isinstance(text, int):
        return text
    return int(number_with_unit(text, SIZE_UNITS, "size"))


def duration(text: str | int) -> int:
    """Whole seconds, exactly, unbounded. A fraction of a second (`0.5`, `1.9s`) is refused,
    not rounded: 0.5 once became 0 and was refused as "must be > 0", 1.9 silently 1."""
    if isinstance(text, int):
        return text
    value = number_with_unit(text, DURATION_UNITS, "duration")
    if value.denominator != 1:
        raise ValueError(f"not a whole number of seconds: {text!r}")
    return int(value)


def human_bytes(n: float, sep: str = " ") -> str:
    """`512 B`, `1.5 KiB`, `8.0 EiB` (binary, one decimal); `sep` goes between number and unit."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{value:.0f}{sep}{unit}" if unit == "B" else f"{value:.1f}{sep}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
