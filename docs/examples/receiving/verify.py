#!/usr/bin/env python3
"""Verify Courier's Standard Webhooks signatures with the `standardwebhooks` package.

    pip install -r requirements.txt     # standardwebhooks
    python3 verify.py                   # checks against the official test vector

Run as a script, it checks the library against the Standard Webhooks test vector
and prints one line per accepted or rejected case.
"""

import base64
import hashlib
import hmac
import time
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verify_courier_request(secrets, body: bytes, headers) -> None:
    """Raise WebhookVerificationError unless one of `secrets` signed this request.

    `body` is the raw request body, exactly as received. `headers` is any mapping
    of header names to values (names in any case). Pass both the old and the new
    secret while you switch your endpoint over during a secret rotation.
    """
    headers = dict(headers.items())
    error = WebhookVerificationError("no secret configured")
    for secret in secrets:
        try:
            # Checks webhook-timestamp (at most 5 minutes off) and every v1 entry of webhook-signature.
            Webhook(secret).verify(body, headers)
            return
        except WebhookVerificationError as e:
            error = e
    raise error


# The official Standard Webhooks test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The documented algorithm, written out: v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers_for(msg_id, timestamp, signature):
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def check(label, expect_ok, secrets, body, headers):
    try:
        verify_courier_request(secrets, body, headers)
        outcome, ok = "accepted", True
    except WebhookVerificationError as e:
        outcome, ok = f"rejected ({e})", False
    print(f"{'ok  ' if ok == expect_ok else 'FAIL'} {label}: {outcome}")
    return ok == expect_ok


def main():
    results = []

    # 1. The library and the written-out algorithm both reproduce the vector's signature.
    lib_sig = Webhook(VECTOR_SECRET).sign(
        VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=timezone.utc), VECTOR_BODY.decode()
    )
    own_sig = sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    same = lib_sig == own_sig == VECTOR_SIGNATURE
    print(f"{'ok  ' if same else 'FAIL'} vector signature: library {lib_sig}, own {own_sig}")
    results.append(same)

    # 2. The vector as is: its 2021 timestamp is far more than 5 minutes old.
    results.append(check("vector with its 2021 timestamp", False, [VECTOR_SECRET], VECTOR_BODY,
                         headers_for(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE)))

    # 3. The vector's secret, id and body, signed now.
    now = int(time.time())
    fresh = sign(VECTOR_SECRET, VECTOR_ID, now, VECTOR_BODY)
    results.append(check("signed now", True, [VECTOR_SECRET], VECTOR_BODY,
                         headers_for(VECTOR_ID, now, fresh)))

    # 4. One changed byte in the body.
    results.append(check("body changed", False, [VECTOR_SECRET], b'{"test": 2432232315}',
                         headers_for(VECTOR_ID, now, fresh)))

    # 5. Another message id.
    results.append(check("other webhook-id", False, [VECTOR_SECRET], VECTOR_BODY,
                         headers_for("msg_other", now, fresh)))

    # 6. Signed 10 minutes ago (a replayed request).
    old = now - 600
    results.append(check("timestamp 10 minutes old", False, [VECTOR_SECRET], VECTOR_BODY,
                         headers_for(VECTOR_ID, old, sign(VECTOR_SECRET, VECTOR_ID, old, VECTOR_BODY))))

    # 7. A rotation: Courier sends one v1 entry per valid secret, the new one first.
    new_secret = "whsec_" + base64.b64encode(b"\x07" * 32).decode()
    both = f"{sign(new_secret, VECTOR_ID, now, VECTOR_BODY)} {fresh}"
    results.append(check("rotation header, endpoint still on the old secret", True, [VECTOR_SECRET],
                         VECTOR_BODY, headers_for(VECTOR_ID, now, both)))
    results.append(check("rotation header, endpoint already on the new secret", True, [new_secret],
                         VECTOR_BODY, headers_for(VECTOR_ID, now, both)))

    # 8. The old secret has expired: only the new one signs; an endpoint still on the old one rejects.
    only_new = sign(new_secret, VECTOR_ID, now, VECTOR_BODY)
    results.append(check("after the overlap, endpoint on the old secret", False, [VECTOR_SECRET],
                         VECTOR_BODY, headers_for(VECTOR_ID, now, only_new)))
    results.append(check("after the overlap, endpoint holding both secrets", True,
                         [new_secret, VECTOR_SECRET], VECTOR_BODY, headers_for(VECTOR_ID, now, only_new)))

    print(f"{results.count(True)} passed, {results.count(False)} failed")
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
