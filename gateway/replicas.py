"""Which classifier replicas are online, from the heartbeats they publish."""

from __future__ import annotations

import re
import time

from shared.messages import AnnouncedModel, ReplicaHeartbeat

# A replica counts as online until it has missed this many heartbeats.
_MISSED_BEATS = 3


class ReplicaRegistry:
    def __init__(self) -> None:
        self._beats: dict[str, ReplicaHeartbeat] = {}
        # Every model any replica has announced since this gateway started, kept when its
        # replicas go: its queue exists (replicas declare the queues they serve), so its jobs
        # are still accepted, and wait there for a replica to come back.
        self._known: dict[str, AnnouncedModel] = {}

    def record(self, beat: ReplicaHeartbeat) -> None:
        self._beats[beat.replica] = beat
        self._known.update(beat.model_info)

    def online(self) -> list[ReplicaHeartbeat]:
        now = time.time()
        alive = [b for b in self._beats.values() if now - b.at <= _MISSED_BEATS * b.interval]
        # Forget the dead, or a churning fleet would grow this dict forever.
        self._beats = {b.replica: b for b in alive}
        return alive

    def serving(self, model: str) -> int:
        return sum(model in beat.models for beat in self.online())

    def announced(self) -> dict[str, AnnouncedModel]:
        """Every model a live replica serves, with what it says about it (name order)."""
        models: dict[str, AnnouncedModel] = {}
        for beat in self.online():
            models.update(beat.model_info)
        return dict(sorted(models.items()))

    def known(self) -> dict[str, AnnouncedModel]:
        """Every model ID announced since start-up, live or not, in name order: each
        ``name@version``, and ``name`` alone for a default version (a replica takes jobs that
        name no version for it).  Where replicas disagree on a default, the newer version wins."""
        ids: dict[str, AnnouncedModel] = {}
        for key, model in sorted(self._known.items(), key=lambda item: _version_order(item[1])):
            ids[key] = model
            if model.default and model.name:
                ids[model.name] = model
        return dict(sorted(ids.items()))


def _version_order(model: AnnouncedModel) -> tuple[str, tuple[tuple[int, int | str], ...]]:
    """Natural order of versions within a name: 10 after 9, 2 after 1.5."""
    parts = re.split(r"(\d+)", model.version)
    return model.name, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)
