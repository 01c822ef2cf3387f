#!/usr/bin/env python3
"""Verify Courier's `hmac-sha256-hex` signatures (x-courier-signature). Standard library only.

    python3 verify_hex.py    # checks against a fixed vector
"""

import base64
import hashlib
import hmac


def verify_courier_hex(secret: str, body: bytes, signature, previous=None) -> bool:
    """True if `x-courier-signature` or `x-courier-signature-previous` matches `body`.

    `secret` is the whole secret string, `whsec_` included: its UTF-8 bytes are the key.
    `body` is the raw request body, exactly as received.
    """
    expected = ("sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()).encode()
    return any(
        value is not None and hmac.compare_digest(value.strip().encode("utf-8"), expected)
        for value in (signature, previous)
    )


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"test": 2432232314}'
SIGNATURE = "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"


def main():
    other = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
    other_sig = "sha256=" + hmac.new(other.encode(), BODY, hashlib.sha256).hexdigest()
    cases = [
        ("vector", True, verify_courier_hex(SECRET, BODY, SIGNATURE)),
        ("body changed", False, verify_courier_hex(SECRET, b'{"test": 2432232315}', SIGNATURE)),
        ("last digit changed", False, verify_courier_hex(SECRET, BODY, SIGNATURE[:-1] + "d")),
        ("no header", False, verify_courier_hex(SECRET, BODY, None)),
        # Keyed with the decoded bytes (the Standard Webhooks key) instead of the whole string: wrong.
        ("key = decoded bytes", False, verify_courier_hex(SECRET, BODY, "sha256=" + hmac.new(
            base64.b64decode(SECRET[6:]), BODY, hashlib.sha256).hexdigest())),
        # Rotation: x-courier-signature from the new secret, x-courier-signature-previous from ours.
        ("rotation, endpoint on the old secret", True, verify_courier_hex(SECRET, BODY, other_sig, SIGNATURE)),
        ("rotation, endpoint on the new secret", True, verify_courier_hex(other, BODY, other_sig, SIGNATURE)),
        ("after the overlap, endpoint on the old secret", False, verify_courier_hex(SECRET, BODY, other_sig)),
    ]
    for label, want, got in cases:
        print(f"{'ok  ' if want == got else 'FAIL'} {label}: {'accepted' if got else 'rejected'}")
    failed = sum(want != got for _, want, got in cases)
    print(f"{len(cases) - failed} passed, {failed} failed")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
