"""JSON files of a checkpoint (config.json, the shard index), read within bounds from disk or the Hub.

A hostile repo can make such a file huge or nested thousands deep; both are refused with a one-line error
before anything larger than the cap is read, and the parse never recurses past MAX_DEPTH.
"""

from __future__ import annotations

import json

from lineage_scanner.errors import ConfigError, ScanError

#: Real configs and indexes are kilobytes to a few megabytes (DeepSeek-V3's index: about 9 MB).
MAX_JSON_BYTES = 16 << 20
MAX_DEPTH = 64


def parse_object(raw: bytes, where: str, error: type[ScanError] = ConfigError, expect: type = dict):
    """A JSON object (or another ``expect``ed kind: a listing page is an array) from ``raw``, or ``error``
    naming ``where`` and the problem."""
    if len(raw) > MAX_JSON_BYTES:
        raise error(where, f"{len(raw)} bytes of JSON, over the {MAX_JSON_BYTES >> 20} MiB cap")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise error(where, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(where, f"malformed JSON ({exc})") from None
    if not isinstance(data, expect):
        raise error(where, f"a JSON {type(data).__name__}, not {'an object' if expect is dict else 'a list'}")
    if _depth(data) > MAX_DEPTH:
        raise error(where, f"JSON nested deeper than {MAX_DEPTH} levels")
    return data


def _depth(value, level: int = 1) -> int:
    """Nesting depth, iteratively (a deep document must not exhaust the stack here either)."""
    deepest, todo = level, [(value, level)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
