"""JSON from outside, parsed with its nesting bounded: a payload nested 100,000 deep is a 400, not
the parser's RecursionError (a 500), and nothing downstream walks a deeper one."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # GitHub's deepest payloads nest about 8


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, raising ValueError (naming the limit) for a document nested deeper than `max_depth`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None
    pending = [(value, 1)]
    while pending:  # a loop, not recursion: its own depth is what it checks
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > max_depth:
                    raise ValueError(f"JSON nested deeper than {max_depth} levels")
                pending.append((child, depth + 1))
    return value
