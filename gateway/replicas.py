"""Which classifier replicas are online, from the heartbeats they publish."""

from __future__ import annotations

import time

from shared.catalog import version_order
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
        # known(), worked out again only when a heartbeat changes _known: every submission of
        # a model outside IMGQ_MODELS looks it up, and heartbeats rarely change it.
        self._ids: dict[str, AnnouncedModel] | None = None

    def record(self, beat: ReplicaHeartbeat) -> None:
        self._beats[beat.replica] = beat
        if any(self._known.get(key) != model for key, model in beat.model_info.items()):
            self._known.update(beat.model_info)
            self._ids = None

    def online(self) -> list[ReplicaHeartbeat]:
        now = time.time()
        alive = [b for b in self._beats.values() if now - b.at <= _MISSED_BEATS * b.interval]
        # Forget the dead, or a churning fleet would grow this dict forever.
        self._beats = {b.replica: b for b in alive}
        return alive

    def serving(self, model: str) -> int:
        return sum(model in beat.models for beat in self.online())

    def known(self) -> dict[str, AnnouncedModel]:
        """Every model ID announced since start-up, live or not, in name order: each
        ``name@version``, and ``name`` alone for a default version (a replica takes jobs that
        name no version for it).  Where replicas disagree on a default, the newer version wins."""
        if self._ids is not None:
            return self._ids
        ids: dict[str, AnnouncedModel] = {}
        newest_last = sorted(
            self._known.items(), key=lambda item: (item[1].name, version_order(item[1].version))
        )
        for key, model in newest_last:
            ids[key] = model
            if model.default and model.name:
                ids[model.name] = model
        self._ids = dict(sorted(ids.items()))
        return self._ids
