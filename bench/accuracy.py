"""Top-1 / top-5 of each model on labelled photos, classified through the running service."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench import http_load
from bench.load import JobFailed


@dataclass(frozen=True, slots=True)
class Accuracy:
    model: str
    photos: int
    top1: float
    top5: float
    failed: int


def score(
    model: str, predictions: Mapping[str, Sequence[int]], labels: Mapping[str, int]
) -> Accuracy:
    """``predictions``: file -> class indices, best first.  A photo with no prediction counts
    as a miss, so a failed job lowers the score instead of vanishing from it."""
    if not labels:
        raise ValueError("no labelled photos")
    top1 = sum(1 for f, c in labels.items() if list(predictions.get(f, ()))[:1] == [c])
    top5 = sum(1 for f, c in labels.items() if c in list(predictions.get(f, ()))[:5])
    failed = sum(1 for f in labels if f not in predictions)
    n = len(labels)
    return Accuracy(model, n, top1 / n, top5 / n, failed)


async def measure(
    base_url: str, models: Sequence[str], labels: Mapping[str, int], *, concurrency: int
) -> list[Accuracy]:
    """Submit every photo with every model to a gateway whose gallery is the photo folder."""
    semaphore = asyncio.Semaphore(concurrency)
    async with http_load.client_session(concurrency) as http:

        async def predict(model: str, photo: str) -> tuple[str, str, list[int] | None]:
            async with semaphore:
                try:
                    job, _ = await http_load.classify(http, base_url, model, photo)
                except JobFailed:
                    return model, photo, None
            if job["status"] != "succeeded":
                return model, photo, None
            return model, photo, [label["class_index"] for label in job["result"]]

        answers = await asyncio.gather(*(predict(m, p) for m in models for p in labels))
    results = []
    for model in models:
        predictions = {p: c for m, p, c in answers if m == model and c is not None}
        results.append(score(model, predictions, labels))
    return results
