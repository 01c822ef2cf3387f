#!/usr/bin/env python3
"""A minimal Courier webhook endpoint: verify, deduplicate, queue, answer 204.

Standard library plus `standardwebhooks` (pip install -r requirements.txt); Python 3.11+.

    COURIER_WEBHOOK_SECRET=whsec_... python3 receiver.py --port 9000

It listens on 127.0.0.1 and accepts POST /webhooks/courier. Several secrets,
separated by spaces, are all accepted (useful while you switch to a rotated one).
The dedupe sets and the queue live in memory to keep the example short: in
production use a shared store with a TTL (e.g. Redis SET NX EX) and a durable queue.
"""

import argparse
import json
import os
import queue
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 16 * 1024 * 1024  # up to 10 events per batch, each up to the ingest limit
DEDUPE_TTL_SECONDS = 7 * 24 * 3600  # at least the retry window; a week also covers replays


class TtlSet:
    """Keys remembered for a while. Stand-in for Redis `SET key 1 NX EX ttl`."""

    def __init__(self, ttl):
        self.ttl, self.expiry, self.lock = ttl, {}, threading.Lock()

    def __contains__(self, key):
        with self.lock:
            return self.expiry.get(key, 0) > time.time()

    def add(self, key):
        with self.lock:
            self.expiry[key] = time.time() + self.ttl


accepted_batches = TtlSet(DEDUPE_TTL_SECONDS)  # webhook-id of every batch queued
processed_events = TtlSet(DEDUPE_TTL_SECONDS)  # eventId of every event processed
jobs = queue.Queue()                           # stand-in for a durable queue
latest = {}                                    # (objectType, objectId) -> occurredAt applied


def handle_event(event):
    """Your business logic. Here: apply only changes newer than what was applied."""
    key = (event["objectType"], event["data"].get("objectId"))
    occurred = datetime.fromisoformat(event["occurredAt"])
    if key in latest and occurred < latest[key]:
        print(f"  skip {event['eventId']}: older than the state already applied", flush=True)
        return
    latest[key] = occurred
    changed = event["propertiesUpdated"]
    print(f"  apply {event['objectType']}.{event['eventType']} {key[1]}"
          f"{' changed ' + ','.join(changed) if changed else ''} ({event['eventId']})", flush=True)


def worker():
    while True:
        batch = jobs.get()
        for event in batch["events"]:
            if event["eventId"] in processed_events:
                continue
            handle_event(event)
            processed_events.add(event["eventId"])


class Handler(BaseHTTPRequestHandler):
    secrets = []  # from COURIER_WEBHOOK_SECRET; the old and the new one during a switch-over

    def do_POST(self):
        if self.path != "/webhooks/courier":
            return self.answer(404, "no such endpoint")
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.answer(413, "too large")
        body = self.rfile.read(length)  # the raw bytes: verify these, not a re-serialization

        headers = dict(self.headers.items())
        if not any(self.verified(secret, body, headers) for secret in self.secrets):
            return self.answer(401, "invalid signature")

        batch_id = self.headers["webhook-id"]
        attempt = self.headers.get("x-courier-attempt")
        if batch_id in accepted_batches:
            print(f"batch {batch_id} attempt {attempt}: duplicate, already queued", flush=True)
            return self.answer(204)

        batch = json.loads(body)
        jobs.put(batch)  # hand the work off; answer before doing it
        accepted_batches.add(batch_id)  # only once the batch is safely queued
        print(f"batch {batch_id} attempt {attempt}: queued {batch['eventCount']} event(s)", flush=True)
        self.answer(204)

    @staticmethod
    def verified(secret, body, headers):
        try:
            Webhook(secret).verify(body, headers)
            return True
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed header or body
            return False

    def answer(self, status, text=""):
        data = text.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args()
    Handler.secrets = os.environ["COURIER_WEBHOOK_SECRET"].split()
    threading.Thread(target=worker, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}/webhooks/courier", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
