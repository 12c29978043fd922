"""Who may say what in the event log: job events are trusted by the broker user that sent them.

Every service sets the AMQP ``user_id`` property to the user it is connected as, and
RabbitMQ refuses a message whose ``user_id`` is not the connection's own user, so the
property cannot be forged.  With ``IMGQ_GATEWAY_USERS`` and ``IMGQ_CLASSIFIER_USERS`` set
(the least-privilege deployment: compose, Kubernetes), a gateway accepts from the log:

- markers, batch records, ``queued``, ``cancelled`` and ``forgotten`` only from a gateway user;
- ``started`` only from a classifier user;
- ``succeeded`` and ``failed`` from a classifier user, or from a gateway user only for what a
  gateway itself decides: a reused result (``reused_from``) or a dead-lettered job.

Unset (the local launcher and the tests run every service as one user), nothing is checked.

**Whose request it was.**  A replica writes a job's events from its request, and a request
can come from any producer allowed to publish to ``imgq.requests``, with any ``owner``,
``batch`` and ``idempotency_key`` headers it likes.  Those three fields decide which client
sees a job, which batch lists it and which key returns it, so a gateway believes them only
from a request a gateway published: each request's ``user_id`` (checked by RabbitMQ like any
other) travels into its events as ``requested_by``, and ``requesters()`` says which users
are gateways.  The alternative, a secret shared by the gateways and an HMAC over the fields,
would hold with any user layout but puts a secret in every gateway (to distribute and rotate)
and a MAC check on the log's hot path; this costs one set lookup per event and relies on what
the sender checks above already rely on.  What it takes: producers connect as a broker user no
gateway uses (``imgq-producer`` in compose and Kubernetes) and cannot publish to
``imgq.events`` (compose/permissions.py); gateways that run as different users list them in
``IMGQ_GATEWAY_USERS``, else a gateway counts only its own user as a gateway's.  Where
producers share the gateways' user (the local launcher: one account) nothing tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.messages import BatchRecord, JobEvent, JobForgotten
from shared.settings import GATEWAY, Environ, Variable, env_list, variable
from shared.states import JobStatus
from shared.wire import LogEntry, Marker

_GATEWAY_ONLY = frozenset({JobStatus.QUEUED, JobStatus.CANCELLED})

_GATEWAY_USERS: Variable[tuple[str, ...]] = variable(
    "IMGQ_GATEWAY_USERS",
    (),
    GATEWAY,
    "the gateways' broker users, comma-separated: with `IMGQ_CLASSIFIER_USERS`, a gateway "
    "trusts each job event in the log only from the kind of service that may send it, and a "
    "job's owner, batch and idempotency key only from a gateway's request; unset = any "
    "sender, and only requests from this gateway's own user",
)
_CLASSIFIER_USERS: Variable[tuple[str, ...]] = variable(
    "IMGQ_CLASSIFIER_USERS",
    (),
    GATEWAY,
    "the classifiers' broker users, comma-separated (see `IMGQ_GATEWAY_USERS`)",
)


@dataclass(frozen=True, slots=True)
class Senders:
    gateways: frozenset[str] = frozenset()
    classifiers: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Environ) -> Senders:
        return cls(
            gateways=frozenset(env_list(env, _GATEWAY_USERS.name, _GATEWAY_USERS.default)),
            classifiers=frozenset(env_list(env, _CLASSIFIER_USERS.name, _CLASSIFIER_USERS.default)),
        )

    @property
    def enforced(self) -> bool:
        return bool(self.gateways or self.classifiers)

    def requesters(self, own_user: str) -> frozenset[str]:
        """The broker users whose requests are a gateway's: ``IMGQ_GATEWAY_USERS``, else this
        gateway's own user (gateways usually share one)."""
        return self.gateways or frozenset({own_user})

    def refuses(self, entry: LogEntry, user_id: str | None) -> str | None:
        """Why ``entry``, sent as ``user_id``, must be ignored; None when it is acceptable."""
        if not self.enforced:
            return None
        sender = user_id or "(no user_id)"
        from_gateway = user_id in self.gateways
        from_classifier = user_id in self.classifiers
        if isinstance(entry, Marker | JobForgotten | BatchRecord) or entry.status in _GATEWAY_ONLY:
            allowed = from_gateway
        elif entry.status is JobStatus.STARTED:
            allowed = from_classifier
        else:
            allowed = from_classifier or (from_gateway and _decided_by_a_gateway(entry))
        if allowed:
            return None
        what = type(entry).__name__ if not isinstance(entry, JobEvent) else entry.status.value
        return f"{what} sent by {sender}, who may not send it"


def _decided_by_a_gateway(event: JobEvent) -> bool:
    if event.status is JobStatus.SUCCEEDED:
        return event.reused_from is not None
    return event.error is not None and event.error.code == "dead_lettered"
