"""GBNF for numbers within a schema's bounds (``minimum``, ``maximum`` and their
exclusive forms), which llama-cpp-python's schema converter leaves out: without them a
model asked for a score between 0 and 1 writes ``10`` and the reply fails validation.

An ``integer`` is held to exactly its bounds. A ``number`` is held to the integers within
its bounds and to decimals ``k.ddd`` whose whole part ``k`` keeps every such decimal
inside them (``0.ddd`` for ``[0, 1]``, but not ``1.5``); the decimals that start at the
edge of a bound that is not a whole number (``0.7`` for a minimum of ``0.5``) are left
out, which keeps the grammar small and every value it allows valid. No exponents. Whole
parts have at most :data:`MAX_DIGITS` digits. Where nothing can be said (bounds that
leave no value, types other than these two), there is no rule and the server's
validation alone holds the schema.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DIGITS = 15
_UNBOUNDED = 10**MAX_DIGITS - 1  # the largest whole part written
_BOUND_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_FRACTION = f'"." [0-9]{{1,{MAX_DIGITS}}}'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive); None: no bound on that side.
    Draft 4's boolean exclusiveMinimum/Maximum and later drafts' numeric ones both count."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low = low if _is_number(low) else None
    high = high if _is_number(high) else None
    low_exclusive = high_exclusive = False
    exclusive_low, exclusive_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if exclusive_low is True:
        low_exclusive = low is not None
    elif _is_number(exclusive_low) and (low is None or exclusive_low >= low):
        low, low_exclusive = exclusive_low, True
    if exclusive_high is True:
        high_exclusive = high is not None
    elif _is_number(exclusive_high) and (high is None or exclusive_high <= high):
        high, high_exclusive = exclusive_high, True
    return low, low_exclusive, high, high_exclusive


def bounded_number_rule(schema: dict[str, Any]) -> str | None:
    """The GBNF body (without trailing space) for a bounded ``integer`` or ``number``
    schema, or None when the schema is not one or its bounds cannot be written."""
    kind = schema.get("type")
    if kind not in ("integer", "number") or not any(key in schema for key in _BOUND_KEYWORDS):
        return None
    if any(key in schema for key in ("enum", "const", "$ref", "anyOf", "oneOf", "allOf")):
        return None
    low, low_exclusive, high, high_exclusive = _bounds(schema)
    if low is None and high is None:
        return None
    # The whole numbers allowed.
    first = None if low is None else (math.floor(low) + 1 if low_exclusive else math.ceil(low))
    last = None if high is None else (math.ceil(high) - 1 if high_exclusive else math.floor(high))
    alternatives = []
    integers = integer_range(first, last)
    if integers is not None:
        alternatives.append(integers)
    if kind == "number":
        # k.ddd for k >= 0 lies in [k, k + 1): k must be above the low bound (k itself
        # is a value: strictly above an exclusive one) and k + 1 at most the high one.
        positive = integer_range(
            max(first if first is not None else 0, 0),
            None if high is None else math.floor(high) - 1,
        )
        if positive is not None:
            alternatives.append(f"({positive}) {_FRACTION}")
        # -k.ddd for k >= 0 lies in (-(k + 1), -k]: -k at most the high bound (strictly
        # below an exclusive one) and -(k + 1) at least the low one.
        if low is None or low < 0:
            least = (
                0
                if high is None
                else max(math.floor(-high) + 1 if high_exclusive else math.ceil(-high), 0)
            )
            most = None if low is None else math.floor(-low) - 1
            negative = integer_range(least, most)
            if negative is not None:
                alternatives.append(f'"-" ({negative}) {_FRACTION}')
    if not alternatives:
        return None
    return "(" + " | ".join(f"({alternative})" for alternative in alternatives) + ")"


def integer_range(first: int | None, last: int | None) -> str | None:
    """GBNF for the JSON integers from ``first`` to ``last`` (None: unbounded on that
    side, up to :data:`MAX_DIGITS` digits); None when there are none."""
    low = -_UNBOUNDED if first is None else max(first, -_UNBOUNDED)
    high = _UNBOUNDED if last is None else min(last, _UNBOUNDED)
    if low > high:
        return None
    alternatives = []
    if low < 0:
        # -1 down to -(-low), written as "-" and the digits.
        alternatives.append(f'"-" ({_natural_range(max(1, -high), -low)})')
    if high >= 0:
        alternatives.append(_natural_range(max(low, 0), high))
    return (
        " | ".join(alternatives)
        if len(alternatives) == 1
        else " | ".join(f"({a})" for a in alternatives)
    )


def _natural_range(low: int, high: int) -> str:
    """GBNF for the whole numbers ``low`` to ``high`` (0 <= low <= high), no leading zeros."""
    alternatives = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(high, 10**digits - 1)
        if start <= end:
            alternatives.append(_same_length(str(start), str(end)))
    return " | ".join(f"({alternative})" for alternative in alternatives)


def _same_length(low: str, high: str) -> str:
    """GBNF for the digit strings from ``low`` to ``high``, both of one length."""
    if low == high:
        return f'"{low}"'
    width = len(low)
    if low == "0" * width and high == "9" * width:
        return _digits(width)
    if width == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return f'"{low[0]}" ({_same_length(low[1:], high[1:])})'
    rest = width - 1
    parts = [f'"{low[0]}" ({_same_length(low[1:], "9" * rest)})']
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}] {_digits(rest)}")
    parts.append(f'"{high[0]}" ({_same_length("0" * rest, high[1:])})')
    return " | ".join(f"({part})" for part in parts)


def _digits(count: int) -> str:
    return "[0-9]" if count == 1 else f"[0-9]{{{count}}}"
