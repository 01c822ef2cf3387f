#!/usr/bin/env python3
"""A webhook receiver for trying Courier by hand.

Listens on 127.0.0.1 (or --host), prints every POST it gets (path, every header and
the pretty-printed JSON body) and answers 204 No Content. With --secret it also
verifies the Standard Webhooks signature. It takes POSTs on any path, or with
--path only on that one (others get 404).

    python3 deploy/echo_receiver.py --port 9000
    python3 deploy/echo_receiver.py --port 9000 --secret whsec_... --path /webhooks/courier

Headers Courier sets, and the standard ones, are printed as they are; the values
of any other header (a webhook's custom headers, such as the receiver's own
`Authorization` or `X-Api-Key`, are secrets) are masked after their first 4
characters. It also checks the `hmac-sha256-hex` scheme (`x-courier-signature`)
when a request carries that header. Standard library only.
"""

import argparse
import base64
import binascii
import errno
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers printed as they are: Courier's own and standard ones that carry no secret.
# Every other header's value is masked (see `shown`).
PLAIN_HEADERS = {
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "content-type",
    "host",
    "traceparent",
    "tracestate",
    "user-agent",
}
PLAIN_PREFIXES = ("webhook-", "x-courier-")


def shown(name, value):
    """The value to print for header `name`: as it is, or its first 4 characters and ***."""
    lower = name.lower()
    if lower in PLAIN_HEADERS or lower.startswith(PLAIN_PREFIXES):
        return value
    return value[:4] + "***"


def secret_key(secret):
    """The HMAC key of a `whsec_` secret: the base64-decoded part after the prefix."""
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    encoded += "=" * (-len(encoded) % 4)  # padding is optional
    return base64.b64decode(encoded, validate=True)


def sign(key, msg_id, timestamp, body):
    """The base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" (body as bytes)."""
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(key, msg_id, timestamp, body, signature_header):
    """True if one of the space-separated `v1,<sig>` entries matches."""
    if not (msg_id and timestamp and signature_header):
        return False
    expected = sign(key, msg_id, timestamp, body)
    for entry in signature_header.split():
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


def verify_hex(secret, body, *values):
    """The hmac-sha256-hex scheme: `sha256=<hex HMAC-SHA256(secret string, body)>`."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return any(v is not None and hmac.compare_digest(v.strip(), expected) for v in values)


class Handler(BaseHTTPRequestHandler):
    server_version = "CourierEchoReceiver/0.1"
    secret = None  # the whsec_ string when --secret is given
    key = None  # its HMAC key
    path_only = None  # --path: the only path taken

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if self.path_only is not None and self.path.split("?", 1)[0] != self.path_only:
            print("\nPOST %s: not %s, answered 404" % (self.path, self.path_only), flush=True)
            self.send_response(404)
            self.end_headers()
            return
        lines = ["", "POST %s" % self.path]
        for name, value in self.headers.items():
            lines.append("  %s: %s" % (name.lower(), shown(name, value)))
        if self.key is not None and self.headers.get("x-courier-signature") is not None:
            ok = verify_hex(
                self.secret,
                body,
                self.headers.get("x-courier-signature"),
                self.headers.get("x-courier-signature-previous"),
            )
            lines.append("signature: %s" % ("valid" if ok else "INVALID"))
        elif self.key is not None:
            ok = verify(
                self.key,
                self.headers.get("webhook-id"),
                self.headers.get("webhook-timestamp"),
                body,
                self.headers.get("webhook-signature"),
            )
            lines.append("signature: %s" % ("valid" if ok else "INVALID"))
        try:
            lines.append(json.dumps(json.loads(body), indent=2, ensure_ascii=False))
        except ValueError:
            lines.append(body.decode("utf-8", errors="replace"))
        print("\n".join(lines), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):  # the request is printed above
        pass


def self_test():
    """The Standard Webhooks reference vector."""
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}'
    want = "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    got = sign(key, msg_id, ts, body)
    assert got == want, "signature %s, want %s" % (got, want)
    assert verify(key, msg_id, ts, body, "v1,bm9wZQ== v1," + want)
    assert not verify(key, msg_id, ts, body + b" ", "v1," + want)
    assert not verify(key, msg_id, ts, body, "v2," + want)
    assert sign(secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".rstrip("=")), msg_id, ts, body) == want
    assert verify_hex("s", b"{}", "sha256=" + hmac.new(b"s", b"{}", hashlib.sha256).hexdigest())
    assert shown("X-Api-Key", "abcdefgh") == "abcd***"
    assert shown("Authorization", "Bearer s3cret") == "Bear***"
    assert shown("webhook-id", "35dfc8b5") == "35dfc8b5"
    assert shown("traceparent", "00-ab-cd-01") == "00-ab-cd-01"
    print("self-test: ok")


def main():
    parser = argparse.ArgumentParser(description="Print the webhooks Courier sends; answer 204.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--secret", help="the webhook's whsec_... secret, to verify signatures")
    parser.add_argument("--path", help="take POSTs on this path only, e.g. /webhooks/courier (default: any path)")
    parser.add_argument("--self-test", action="store_true", help="check the signing code and exit")
    args = parser.parse_args()

    if args.self_test:
        self_test()
        return
    if args.secret is not None:
        try:
            Handler.key = secret_key(args.secret)
            Handler.secret = args.secret
        except (binascii.Error, ValueError):
            parser.error("--secret must be whsec_ followed by base64")

    if args.path is not None:
        if not args.path.startswith("/"):
            parser.error("--path must start with /")
        Handler.path_only = args.path
    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            sys.exit(
                "echo_receiver: port %d is in use, maybe by an echo receiver started earlier: "
                "stop that one (Ctrl-C in its terminal, or kill %%1 / kill <pid> if it runs in "
                "the background) or pass another --port" % args.port
            )
        raise
    print(
        "listening on http://%s:%d%s%s%s (Ctrl-C to stop)"
        % (
            args.host,
            args.port,
            args.path or "/",
            "" if args.path else " on any path",
            ", verifying signatures" if Handler.key is not None else "",
        ),
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
