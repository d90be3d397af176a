"""Fitting a user's weights to a model: the ``key_map`` that renames them, and the report of
what does not fit (missing, unexpected and wrongly shaped keys, with a suggested ``key_map``).

A ``key_map`` is a JSON object of exact renames ``{"old.name": "new.name"}``, optionally with a
``"prefix"`` entry holding prefix rules ``{"prefix": {"0.": "fc1.", "2.": "fc2."}}``. A name is
renamed by its exact entry if it has one, else by the longest matching prefix rule, else kept.
Two names renamed to one is an error. Everything here works on names and shapes only, so it
runs on a file's header before any tensor is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from operators.models.sources import SourceError

PREFIX = "prefix"


def check_key_map(key_map: Any) -> dict:
    """Validate a key_map object (see the module docstring); returns it."""
    if key_map is None:
        return {}
    if not isinstance(key_map, dict):
        raise SourceError("key_map", f"must be a JSON object old name -> new name, got {key_map!r}")
    prefixes = key_map.get(PREFIX, {})
    if not isinstance(prefixes, dict):
        raise SourceError(f"key_map.{PREFIX}", "must be an object old prefix -> new prefix")
    for where, pairs in (("key_map", {k: v for k, v in key_map.items() if k != PREFIX}),
                         (f"key_map.{PREFIX}", prefixes)):  # fmt: skip
        for old, new in pairs.items():
            if not isinstance(new, str) or not old or (where == "key_map" and not new):
                raise SourceError(f"{where}.{old}", f"must map to a non-empty name, got {new!r}")
    return key_map


def rename(names: Sequence[str], key_map: dict | None) -> dict[str, str]:
    """``{new name: old name}`` for the given names under ``key_map``; a collision (two names to
    one) raises :class:`SourceError` naming both."""
    key_map = check_key_map(key_map)
    prefixes = sorted(key_map.get(PREFIX, {}).items(), key=lambda kv: -len(kv[0]))
    renamed: dict[str, str] = {}
    for old in names:
        new = key_map.get(old) if old != PREFIX else None
        if new is None:
            new = next((n + old[len(p):] for p, n in prefixes if old.startswith(p)), old)
        if new in renamed:
            raise SourceError(
                "key_map", f"maps both {renamed[new]!r} and {old!r} to {new!r}; each weight "
                "needs a name of its own",
            )  # fmt: skip
        renamed[new] = old
    return renamed


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _modules(shapes: Mapping[str, Sequence[int]], order: Sequence[str]) -> list[tuple[str, dict]]:
    """``[(module prefix, {leaf: shape})]`` in the order of ``order``."""
    grouped: dict[str, dict[str, tuple]] = {}
    for name in order:
        module, _, leaf = name.rpartition(".")
        grouped.setdefault(f"{module}." if module else "", {})[leaf] = tuple(shapes[name])
    return list(grouped.items())


def suggest_key_map(
    expected: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]]
) -> dict | None:
    """A key_map that makes ``given`` fit ``expected`` when their modules match one for one in
    order (same leaves, same shapes; ``given`` in natural name order, ``expected`` in the
    model's order), else None."""
    want = _modules(expected, list(expected))
    have = _modules(given, sorted(given, key=_natural))
    if len(want) != len(have) or any(w[1] != h[1] for w, h in zip(want, have, strict=True)):
        return None
    rules = {h: w for (w, _), (h, _) in zip(want, have, strict=True) if h != w}
    if "" in rules or any(w == "" for w in rules.values()):
        return {h + leaf: w + leaf for (w, leaves), (h, _) in zip(want, have, strict=True)
                for leaf in leaves if h != w}  # fmt: skip
    return {PREFIX: rules} if rules else None


def mismatch_report(
    expected: Mapping[str, Sequence[int]], given: Mapping[str, Sequence[int]]
) -> str | None:
    """None when ``given`` has exactly ``expected``'s names and shapes; else a message listing
    the missing, unexpected and wrongly shaped keys, and a suggested key_map where one fits."""
    missing = [n for n in expected if n not in given]
    unexpected = sorted((n for n in given if n not in expected), key=_natural)
    shaped = [f"{n} {list(given[n])} (expected {list(expected[n])})" for n in expected
              if n in given and tuple(given[n]) != tuple(expected[n])]  # fmt: skip
    if not (missing or unexpected or shaped):
        return None

    def listed(label: str, items: list[str]) -> str:
        more = f" and {len(items) - 20} more" if len(items) > 20 else ""
        return f"{label} ({len(items)}): {', '.join(items[:20])}{more}"

    parts = [listed(label, items) for label, items in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shaped),
    ) if items]  # fmt: skip
    suggestion = suggest_key_map(expected, given)
    if suggestion:
        parts.append(f"the shapes match in order: send key_map={json.dumps(suggestion)}")
    return "; ".join(parts)
