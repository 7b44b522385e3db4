"""Bash-style brace expansion for shard lists: ``train-{000000..000099}.tar``, ``{a,b}-{0..3}.tar``.

The notation WebDataset uses for its shard URLs. Numeric ranges keep the zero padding of their
first bound; several groups multiply out left to right; nested braces are not supported.

>>> expand_braces("s-{08..10}.tar")
['s-08.tar', 's-09.tar', 's-10.tar']
>>> expand_braces("{a,b}{0..1}")
['a0', 'a1', 'b0', 'b1']
"""

from __future__ import annotations

import re

_GROUP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
MAX_EXPANSION = 1_000_000


def _choices(body: str, pattern: str) -> list[str]:
    m = _RANGE.match(body)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        width = len(m.group(1)) if m.group(1).lstrip("-").startswith("0") else 0
        step = 1 if b >= a else -1
        return [f"{i:0{width}d}" for i in range(a, b + step, step)]
    if "," in body:
        return body.split(",")
    raise ValueError(f"shard pattern {pattern!r}: brace group {{{body}}} is neither a range a..b nor a list a,b")


def expand_braces(pattern: str) -> list[str]:
    """Every name the pattern stands for, in order; a pattern without braces is itself."""
    if pattern.count("{") != pattern.count("}"):
        raise ValueError(f"shard pattern {pattern!r} has unbalanced braces")
    out = [""]
    pos = 0
    for m in _GROUP.finditer(pattern):
        lit = pattern[pos:m.start()]
        if "{" in lit or "}" in lit:
            raise ValueError(f"shard pattern {pattern!r} has nested or unbalanced braces")
        opts = _choices(m.group(1), pattern)
        if len(out) * len(opts) > MAX_EXPANSION:
            raise ValueError(f"shard pattern {pattern!r} expands to more than {MAX_EXPANSION} names")
        out = [o + lit + c for o in out for c in opts]
        pos = m.end()
    tail = pattern[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"shard pattern {pattern!r} has nested or unbalanced braces")
    return [o + tail for o in out]
