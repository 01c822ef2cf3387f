// Verify Courier's Standard Webhooks signatures with the `standardwebhooks` npm package.
//
//   npm install        # standardwebhooks
//   node verify.mjs    # checks against the official test vector
import { createHmac } from "node:crypto";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

// Throws WebhookVerificationError unless one of `secrets` signed the request.
// `payload` is the raw body (string or Buffer) exactly as received; `headers` is
// an object of header names (any case) to values, e.g. Node's `req.headers`.
function verifyCourierRequest(secrets, payload, headers) {
  let error = new WebhookVerificationError("no secret configured");
  for (const secret of secrets) {
    try {
      // Checks webhook-timestamp (at most 5 minutes off) and every v1 entry of webhook-signature.
      return new Webhook(secret).verify(payload, headers); // the parsed JSON
    } catch (e) {
      if (!(e instanceof WebhookVerificationError)) throw e;
      error = e;
    }
  }
  throw error;
}

// The official Standard Webhooks test vector.
const VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TIMESTAMP = 1614265330;
const VECTOR_BODY = '{"test": 2432232314}';
const VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

// The documented algorithm, written out: v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
function sign(secret, msgId, timestamp, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const mac = createHmac("sha256", key).update(`${msgId}.${timestamp}.${body}`).digest("base64");
  return `v1,${mac}`;
}

const headersFor = (id, ts, sig) => ({ "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": sig });

const results = [];
function check(label, expectOk, secrets, body, headers) {
  let ok = false;
  let outcome;
  try {
    verifyCourierRequest(secrets, body, headers);
    ok = true;
    outcome = "accepted";
  } catch (e) {
    outcome = `rejected (${e.message})`;
  }
  console.log(`${ok === expectOk ? "ok  " : "FAIL"} ${label}: ${outcome}`);
  results.push(ok === expectOk);
}

// 1. The library and the written-out algorithm both reproduce the vector's signature.
const libSig = new Webhook(VECTOR_SECRET).sign(VECTOR_ID, new Date(VECTOR_TIMESTAMP * 1000), VECTOR_BODY);
const ownSig = sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
const same = libSig === VECTOR_SIGNATURE && ownSig === VECTOR_SIGNATURE;
console.log(`${same ? "ok  " : "FAIL"} vector signature: library ${libSig}, own ${ownSig}`);
results.push(same);

// 2. The vector as is: its 2021 timestamp is far more than 5 minutes old.
check("vector with its 2021 timestamp", false, [VECTOR_SECRET], VECTOR_BODY,
  headersFor(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE));

// 3. The vector's secret, id and body, signed now; as a string and as a Buffer.
const now = Math.floor(Date.now() / 1000);
const fresh = sign(VECTOR_SECRET, VECTOR_ID, now, VECTOR_BODY);
check("signed now", true, [VECTOR_SECRET], VECTOR_BODY, headersFor(VECTOR_ID, now, fresh));
check("signed now, body as a Buffer", true, [VECTOR_SECRET], Buffer.from(VECTOR_BODY), headersFor(VECTOR_ID, now, fresh));

// 4. Changed body, other id, stale timestamp.
check("body changed", false, [VECTOR_SECRET], '{"test": 2432232315}', headersFor(VECTOR_ID, now, fresh));
check("body re-serialized by JSON.stringify", false, [VECTOR_SECRET],
  JSON.stringify(JSON.parse(VECTOR_BODY)), headersFor(VECTOR_ID, now, fresh));
check("other webhook-id", false, [VECTOR_SECRET], VECTOR_BODY, headersFor("msg_other", now, fresh));
const old = now - 600;
check("timestamp 10 minutes old", false, [VECTOR_SECRET], VECTOR_BODY,
  headersFor(VECTOR_ID, old, sign(VECTOR_SECRET, VECTOR_ID, old, VECTOR_BODY)));

// 5. A rotation: one v1 entry per valid secret, the new one first.
const newSecret = `whsec_${Buffer.alloc(32, 7).toString("base64")}`;
const both = `${sign(newSecret, VECTOR_ID, now, VECTOR_BODY)} ${fresh}`;
check("rotation header, endpoint still on the old secret", true, [VECTOR_SECRET], VECTOR_BODY,
  headersFor(VECTOR_ID, now, both));
check("rotation header, endpoint already on the new secret", true, [newSecret], VECTOR_BODY,
  headersFor(VECTOR_ID, now, both));
const onlyNew = sign(newSecret, VECTOR_ID, now, VECTOR_BODY);
check("after the overlap, endpoint on the old secret", false, [VECTOR_SECRET], VECTOR_BODY,
  headersFor(VECTOR_ID, now, onlyNew));
check("after the overlap, endpoint holding both secrets", true, [newSecret, VECTOR_SECRET], VECTOR_BODY,
  headersFor(VECTOR_ID, now, onlyNew));

const failed = results.filter((r) => !r).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
