"""A small receiver for imgq's callbacks (webhooks): the standard library and ``imgq.webhooks``.

    python examples/webhook_receiver.py --port 9000 --token "$IMGQ_TOKEN"
    python examples/webhook_receiver.py --port 9000 --secret "$IMGQ_WEBHOOK_SECRET"

Then submit with ``"callback_url": "https://<this host>/imgq"`` (the gateway refuses addresses
that are not public unless its operator allowed them, IMGQ_WEBHOOK_ALLOW_NETWORKS).  For
each callback it:

1. checks the signature: ``Imgq-Signature: t=<unix>,v1=<hex>``, where the hex is
   HMAC-SHA256 of ``<t>.<body>`` keyed with your webhook secret, and ``t`` is within five
   minutes of this machine's clock (an old request replayed is refused);
2. drops a repeat: a callback is delivered at least once, and every attempt of one carries
   the same ``Imgq-Delivery`` ID (also the body's ``id``), so one seen before is answered
   200 and not handled again;
3. answers 200 at once and handles the job or batch after: a receiver that takes longer than
   10 s to answer is retried.

Your webhook secret: on a gateway with API tokens it is derived from your token,
``HMAC-SHA256(key=<token>, message="imgq-webhook-secret")`` as hex (``--token`` computes it);
on an open gateway it is the operator's IMGQ_WEBHOOK_SECRET.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from imgq.webhooks import secret_for_token, verify

# Delivery IDs remembered: far more than arrive in the hours a delivery may be retried.
REMEMBERED = 100_000
MAX_BODY_BYTES = 16 << 20


class Seen:
    """Delivery IDs already handled (bounded, oldest forgotten first), safe across threads."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        with self._lock:
            if delivery_id in self._ids:
                return False
            self._ids[delivery_id] = None
            while len(self._ids) > self._limit:
                self._ids.popitem(last=False)
            return True


def handle(payload: dict[str, Any]) -> None:
    """Your code: here it prints one line per job."""
    jobs = payload["batch"]["jobs"] if payload["type"] == "batch.done" else [payload["job"]]
    for job in jobs:
        top = (job.get("result") or [{}])[0].get("label")
        print(f"{payload['type']} {job['job_id']} {job['status']} {top or ''}", flush=True)


def make_handler(secret: str, seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)
            if not verify(secret, self.headers.get("Imgq-Signature", ""), body):
                self._answer(401)
                return
            delivery = self.headers.get("Imgq-Delivery", "")
            if not seen.first_time(delivery):
                self._answer(200)  # a repeat: handled already
                return
            self._answer(200)
            handle(json.loads(body))

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Receiver


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive imgq's callbacks.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--token", help="your imgq API token: your secret is derived from it")
    key.add_argument("--secret", help="the webhook secret itself (an open gateway's)")
    args = parser.parse_args(argv)
    secret = secret_for_token(args.token) if args.token else args.secret
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret, Seen()))
    print(f"listening on {args.host}:{args.port}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
