#!/usr/bin/env python3
"""Send a Courier-style signed delivery to your endpoint, to test it without Courier.

Builds a batch envelope, signs it as Courier does (Standard Webhooks, or the
hmac-sha256-hex scheme), POSTs it and prints the status your endpoint answered.
Standard library only.

    python3 send_test_delivery.py http://127.0.0.1:9000/webhooks/courier whsec_...
    python3 send_test_delivery.py URL SECRET --events 3           # a batch of 3 events
    python3 send_test_delivery.py URL SECRET --previous whsec_... # as during a rotation
    python3 send_test_delivery.py URL SECRET --scheme hmac-sha256-hex
    python3 send_test_delivery.py URL SECRET --id SAME-ID          # resend: test your dedupe
    python3 send_test_delivery.py URL SECRET --skew -600           # a stale timestamp
    python3 send_test_delivery.py URL SECRET --tamper              # body changed after signing
"""

import argparse
import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone


def standard_signature(secret, msg_id, timestamp, body):
    """`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, key = base64-decoded part of whsec_."""
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def hex_signature(secret, body):
    """`sha256=<hex HMAC-SHA256(key, body)>`, key = UTF-8 bytes of the whole secret string."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def envelope(batch_id, count):
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    events = [
        {
            "eventId": f"evt_test_{uuid.uuid4()}",
            "eventType": "EntityUpdated",
            "objectType": "Prospect",
            "data": {"objectId": f"prospect_{i + 1}", "title": "VP Sales", "phone": "+1 415 555 0134"},
            "propertiesUpdated": ["title", "phone"],
            "occurredAt": now,
        }
        for i in range(count)
    ]
    return {
        "batchId": batch_id,
        "eventCount": count,
        "isBatch": count > 1,
        "timestamp": now,
        "events": events,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("secret", help="the webhook's whsec_ secret")
    p.add_argument("--previous", help="a previous secret that also signs (rotation)")
    p.add_argument("--scheme", choices=["standard", "hmac-sha256-hex"], default="standard")
    p.add_argument("--events", type=int, default=1, help="events in the batch (default 1)")
    p.add_argument("--id", help="the batchId / webhook-id (default: a new UUID)")
    p.add_argument("--attempt", type=int, default=1, help="x-courier-attempt (default 1)")
    p.add_argument("--skew", type=int, default=0, help="seconds added to webhook-timestamp")
    p.add_argument("--tamper", action="store_true", help="change the body after signing")
    args = p.parse_args()

    batch_id = args.id or str(uuid.uuid4())
    body = json.dumps(envelope(batch_id, args.events), separators=(",", ":")).encode()
    timestamp = str(int(time.time()) + args.skew)
    headers = {
        "content-type": "application/json",
        "user-agent": "Courier/test",
        "webhook-id": batch_id,
        "webhook-timestamp": timestamp,
        "x-courier-delivery-id": batch_id,
        "x-courier-attempt": str(args.attempt),
    }
    secrets = [args.secret] + ([args.previous] if args.previous else [])
    if args.scheme == "standard":
        headers["webhook-signature"] = " ".join(standard_signature(s, batch_id, timestamp, body) for s in secrets)
    else:
        headers["x-courier-signature"] = hex_signature(args.secret, body)
        if args.previous:
            headers["x-courier-signature-previous"] = hex_signature(args.previous, body)
    if args.tamper:
        body = body.replace(b"VP Sales", b"VP Sale$")

    req = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, text = resp.status, resp.read(200)
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read(200)
    print(f"webhook-id {batch_id}: {status} {text.decode('utf-8', 'replace')}".rstrip())


if __name__ == "__main__":
    main()
