"""Read a /metrics answer with prometheus_client's own parser (helpers for tests).

The parser is the reference reader of the text format: what it cannot read, a scraper
would not either.  Family names are the parser's: a counter's family drops ``_total``
(``imgq_gateway_jobs`` holds the samples named ``imgq_gateway_jobs_total``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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
    out = Exposition()
    for family in text_string_to_metric_families(text):
        assert family.name not in out.types, f"second family named {family.name}"
        out.types[family.name] = family.type
        out.helps[family.name] = family.documentation
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out.samples, f"duplicate sample {key}"
            out.samples[key] = sample.value
    return out
