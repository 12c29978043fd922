"""Read Prometheus text exposition (format 0.0.4) strictly, line by line (helpers for tests)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$"
)
_HELP = re.compile(rf"^# HELP (?P<name>{_NAME}) (?P<text>.*)$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|histogram|summary|untyped)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]


@dataclass
class Exposition:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is absent (a labelled counter appears on first use)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def parse(text: str) -> Exposition:
    """Parse, failing on any line that is not a HELP, TYPE or sample line of the format."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    out = Exposition()
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _HELP.match(line):
            out.helps[match["name"]] = match["text"]
        elif match := _TYPE.match(line):
            assert match["name"] not in out.types, f"line {number}: second TYPE for a metric"
            out.types[match["name"]] = match["type"]
        elif match := _SAMPLE.match(line):
            labels = frozenset(_PAIR.findall(match["labels"] or ""))
            key = (match["name"], labels)
            assert key not in out.samples, f"line {number}: duplicate sample {line!r}"
            raw = match["value"]
            out.samples[key] = float(raw.replace("Inf", "inf"))
        else:
            raise AssertionError(f"line {number} is not in the text format: {line!r}")
    _check_families(out)
    return out


def _family(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def _check_families(out: Exposition) -> None:
    for name, _ in out.samples:
        family = _family(name, out.types)
        assert family in out.types, f"{name}: no TYPE line"
        assert family in out.helps, f"{name}: no HELP line"
        if out.types[family] == "counter":
            assert family.endswith("_total"), f"counter {family} must end in _total"
    for family, kind in out.types.items():
        if kind != "histogram":
            continue
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for (name, labels), value in out.samples.items():
            if name == f"{family}_bucket":
                le = dict(labels)["le"]
                rest = frozenset(p for p in labels if p[0] != "le")
                groups.setdefault(rest, []).append((float(le.replace("Inf", "inf")), value))
        for rest, buckets in groups.items():
            buckets.sort()
            counts = [count for _, count in buckets]
            assert counts == sorted(counts), f"{family}: buckets must be cumulative"
            assert math.isinf(buckets[-1][0]), f"{family}: no +Inf bucket"
            total = out.samples[(f"{family}_count", rest)]
            assert buckets[-1][1] == total, f"{family}: +Inf bucket != _count"
            assert (f"{family}_sum", rest) in out.samples, f"{family}: no _sum"
