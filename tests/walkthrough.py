#!/usr/bin/env python3
"""Runs the README's walk-through, verbatim, against the dev services, and checks
every answer it documents.

The walk-through's commands are the README's code blocks whose info string is
`sh walkthrough:<name>`; they are read from README.md at every run, so the two
cannot drift. This script

1. starts the services as `make run` does (deploy/run-dev.sh with the built
   binaries of COURIER_BIN_DIR, default target/debug: build them first), on free
   loopback ports and under a prefix of its own, so that it runs beside other
   tests and beside a `make run` on the README's ports;
2. runs the walk-through in a bash shell, block after block as a reader pastes
   them, with `API` and `HOOK_PORT` set to those ports (the README's first block
   keeps variables already set), without its last step (stopping the receiver),
   then again from the top in the same shell, then once more in a new shell (a
   reader who comes back later);
3. checks after each block the HTTP statuses it got (a `curl` function of the
   shell records them; the commands are not changed), the variables it set and
   what it printed, and after the event that the receiver printed its delivery
   with `signature: valid`, once;
4. stops the services with SIGTERM, as the README tells scripts to, checks that
   nothing of them is left, and removes the prefix with `courier-gateway reset`
   (what `make reset` runs).

Exit status 0 when every check passed. Standard library only.

    python3 tests/walkthrough.py            # from the repository root
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.environ.get("COURIER_BIN_DIR") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "debug"
)
BLOCK_TIMEOUT = 30  # seconds a block may take
DELIVERY_TIMEOUT = 30  # seconds from the event to its delivery at the receiver
STOP_TIMEOUT = 45  # seconds for the services to stop (the worker's grace is 35 s)

# The blocks, in order, and what each must show on the first run and on a rerun:
# the HTTP statuses of its curl calls, in order.
EXPECTED = [
    ("where", [], []),
    ("tenant", [201], [409]),
    ("key", [], [201]),
    ("webhook", [200, 201], [200, 204, 201]),
    ("receiver", [], []),
    ("event", [202], [202]),
    ("unknown-event", [422], [422]),
    ("wrong-credential", [401], [401]),
    ("stop", [], []),
]


class Failure(Exception):
    pass


def check(ok, message):
    if not ok:
        raise Failure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(what, condition, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failure("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(0.1)


def readme_blocks():
    """[(name, text)] of the README's walk-through blocks, in order."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return re.findall(r"^```sh walkthrough:([a-z-]+)\n(.*?)^```$", readme, re.M | re.S)


class Shell:
    """A bash shell fed the blocks on its stdin, as a reader pastes them; its output
    (and that of the receiver it starts in the background) is collected."""

    def __init__(self, env, calls_dir, transcript):
        self.calls_dir = calls_dir
        self.transcript = transcript
        self.lines = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        # The test's only addition: curl records each answer's status line.
        self.send(
            'curl() { command curl -D "%s/$(date +%%s%%N).$BASHPID" "$@"; }' % calls_dir
        )

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))
            self.transcript.write(line)
            self.transcript.flush()

    def send(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def output_since(self, start):
        with self.lock:
            return self.lines[start:]

    def mark(self):
        with self.lock:
            return len(self.lines)

    def run_block(self, name, text):
        """Runs one block; returns (its output lines, the statuses of its calls)."""
        for f in os.listdir(self.calls_dir):
            os.remove(os.path.join(self.calls_dir, f))
        start = self.block_start = self.mark()
        token = "__walkthrough_done_%s_%d__" % (name, random.randrange(1 << 30))
        self.send(text)
        self.send("echo %s" % token)
        # an answer without a final newline (curl's) ends on the line of the token
        wait_for("block %s to finish" % name,
                 lambda: any(l.endswith(token) for l in self.output_since(start)), BLOCK_TIMEOUT)
        out = []
        for line in self.output_since(start):
            if line.endswith(token):
                if line != token:
                    out.append(line[: -len(token)])
                break
            out.append(line)
        statuses = []
        for f in sorted(os.listdir(self.calls_dir)):
            with open(os.path.join(self.calls_dir, f), encoding="latin-1") as h:
                status_line = h.readline().split()
            statuses.append(int(status_line[1]) if len(status_line) > 1 else 0)
        return out, statuses

    def variable(self, name):
        start = self.mark()
        token = "__walkthrough_var_%d__" % random.randrange(1 << 30)
        self.send('printf "%s=%%s\\n" "${%s}"' % (token, name))
        line = wait_for(
            "the value of " + name,
            lambda: next((l for l in self.output_since(start) if l.startswith(token + "=")), None),
            BLOCK_TIMEOUT,
        )
        return line[len(token) + 1:]

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # whatever the blocks started in the background (a receiver left by a failure)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def api_get(api, path, token):
    req = urllib.request.Request(api + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def walk(shell, blocks, api, hook_port, run, skip=()):
    """Runs every block but those named in `skip` once in `shell` and checks it (run
    1 is the first ever)."""
    for (name, text), (want_name, first, again) in zip(blocks, EXPECTED):
        check(name == want_name, "README block %s where %s was expected" % (name, want_name))
        if name in skip:
            continue
        out, statuses = shell.run_block(name, text)
        want = first if run == 1 else again
        print("  run %d, %-16s statuses %s" % (run, name, statuses or "-"))
        check(statuses == want, "run %d, block %s: HTTP statuses %s, want %s; output:\n%s"
              % (run, name, statuses, want, "\n".join(out)))
        if name == "where":
            check(shell.variable("API") == api, "API is not the address set before the walk-through")
            check(shell.variable("HOOK_PORT") == str(hook_port), "HOOK_PORT is not the port set before")
        elif name == "tenant":
            key = shell.variable("KEY")
            check((key.startswith("ck_")) == (run == 1), "run %d: KEY after creating the tenant is %r" % (run, key))
        elif name == "key":
            key = shell.variable("KEY")
            check(key.startswith("ck_"), "no key after the key block: %r" % key)
            check(("KEY=" + key) in out, "the key block does not print the key")
        elif name == "webhook":
            secret = shell.variable("SECRET")
            check(secret.startswith("whsec_"), "SECRET is %r" % secret)
            hooks = api_get(api, "/v1/webhooks", shell.variable("KEY"))["data"]
            check(len(hooks) == 1, "the tenant has %d webhooks, want 1: %s" % (len(hooks), hooks))
            check(hooks[0]["url"] == "http://127.0.0.1:%d/webhooks/courier" % hook_port,
                  "webhook URL %s" % hooks[0]["url"])
            check(hooks[0]["events"] == ["Prospect.*"], "webhook events %s" % hooks[0]["events"])
        elif name == "receiver":
            wait_for("the receiver to listen", lambda: listening(hook_port), BLOCK_TIMEOUT)
            wait_for("the receiver's first line",
                     lambda: any("listening on http://127.0.0.1:%d/webhooks/courier, verifying signatures" % hook_port in l
                                 for l in shell.output_since(0)), BLOCK_TIMEOUT)
        elif name == "event":
            answer = json.loads(next(l for l in out if l.startswith("{")))
            event_id = answer["eventIds"][0]
            check(event_id.startswith("evt_"), "answer %s" % answer)
            start = shell.block_start
            # the receiver prints the request line, headers, signature, then the body
            def delivered():
                text = "\n".join(shell.output_since(start))
                return event_id in text and "signature: valid" in text and text
            text = wait_for("the delivery of %s at the receiver" % event_id, delivered, DELIVERY_TIMEOUT)
            check("POST /webhooks/courier" in text, "the delivery went to another path:\n" + text)
            check("signature: INVALID" not in text, "a delivery with an invalid signature:\n" + text)
            check("traceparent: 00-" in text, "the receiver does not show traceparent:\n" + text)
            check(text.count("signature: valid") == 1, "more than one delivery:\n" + text)
        elif name == "unknown-event":
            body = json.loads("\n".join(out))
            check(body["error"]["type"] == "unprocessable", "answer %s" % body)
            check("Prospect.EntityExploded" in body["error"]["details"]["eventType"], "answer %s" % body)
        elif name == "wrong-credential":
            body = json.loads("\n".join(out))
            check(body["error"]["type"] == "unauthorized" and "tenant API key" in body["error"]["message"],
                  "answer %s" % body)
        elif name == "stop":
            wait_for("the receiver to stop", lambda: not listening(hook_port), BLOCK_TIMEOUT)
    check(len(blocks) == len(EXPECTED), "the README has %d walk-through blocks, this test knows %d"
          % (len(blocks), len(EXPECTED)))


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def main():
    blocks = readme_blocks()
    check([b[0] for b in blocks] == [e[0] for e in EXPECTED],
          "README walk-through blocks %s, this test expects %s"
          % ([b[0] for b in blocks], [e[0] for e in EXPECTED]))
    for name in ("courier-gateway", "courier-worker"):
        check(os.access(os.path.join(BIN_DIR, name), os.X_OK),
              "%s/%s not found: build it first (cargo build --bins)" % (BIN_DIR, name))

    work = tempfile.mkdtemp(prefix="courier-walkthrough-")
    gateway_port, admin_port, hook_port = free_port(), free_port(), free_port()
    prefix = "walkthrough-%08x." % random.randrange(1 << 32)
    api = "http://127.0.0.1:%d" % gateway_port
    env = dict(os.environ)
    env.update(
        COURIER_BIN_DIR=BIN_DIR,
        COURIER_GATEWAY_ADDR="127.0.0.1:%d" % gateway_port,
        COURIER_WORKER_ADMIN_ADDR="127.0.0.1:%d" % admin_port,
        COURIER_PREFIX=prefix,
        COURIER_LOG_FORMAT="text",
    )
    for name in ("COURIER_ADMIN_TOKEN", "COURIER_PROFILE"):
        env.pop(name, None)
    services_log = open(os.path.join(work, "services.log"), "w")
    transcript = open(os.path.join(work, "transcript.log"), "w")
    print("walkthrough: services on %s under prefix %s; logs in %s" % (api, prefix, work))
    services = subprocess.Popen(
        ["bash", os.path.join(ROOT, "deploy", "run-dev.sh")],
        cwd=ROOT, env=env, stdout=services_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    shells = []
    status = 1
    try:
        def ready():
            check(services.poll() is None, "the services exited (status %s); see %s/services.log"
                  % (services.returncode, work))
            try:
                with urllib.request.urlopen(api + "/readyz", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False
        wait_for("the gateway to be ready", ready, 90)

        shell_env = dict(os.environ, API=api, HOOK_PORT=str(hook_port))
        calls = os.path.join(work, "calls")
        os.mkdir(calls)
        first = Shell(shell_env, calls, transcript)
        shells.append(first)
        # The first time without the last step: its receiver still runs when the
        # walk-through starts again.
        walk(first, blocks, api, hook_port, run=1, skip=("stop",))
        walk(first, blocks, api, hook_port, run=2)
        fresh = Shell(shell_env, calls, transcript)
        shells.append(fresh)
        walk(fresh, blocks, api, hook_port, run=3)

        # Stopped as the README tells scripts to: SIGTERM.
        services.send_signal(signal.SIGTERM)
        try:
            code = services.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure("the services did not stop within %ds of SIGTERM" % STOP_TIMEOUT)
        check(code == 0, "run-dev.sh exited %d after SIGTERM" % code)
        check(not group_alive(services.pid), "processes of the services are left after SIGTERM")
        check(not listening(gateway_port) and not listening(admin_port), "a service still listens")
        log = open(os.path.join(work, "services.log"), encoding="utf-8", errors="replace").read()
        check("\x1b[" not in log, "the services' log written to a file carries ANSI escapes")
        status = 0
    except Failure as e:
        print("walkthrough: FAILED: %s" % e, file=sys.stderr)
        print("walkthrough: transcript and service logs are in %s" % work, file=sys.stderr)
    finally:
        for shell in shells:
            shell.close()
        if group_alive(services.pid):
            os.killpg(services.pid, signal.SIGTERM)
            try:
                services.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(services.pid, signal.SIGKILL)
                services.wait()
        reset = subprocess.run(
            [os.path.join(BIN_DIR, "courier-gateway"), "reset"],
            env=dict(env, COURIER_PROFILE="dev"), capture_output=True, text=True,
        )
        if reset.returncode != 0:
            print("walkthrough: reset of %s failed: %s" % (prefix, reset.stderr.strip()), file=sys.stderr)
            status = 1
        else:
            print("walkthrough: " + reset.stdout.strip())
        services_log.close()
        transcript.close()
    if status == 0:
        print("walkthrough: ok (3 runs of %d blocks)" % len(blocks))
        subprocess.run(["rm", "-rf", work])
    return status


if __name__ == "__main__":
    sys.exit(main())
