// A minimal Courier webhook endpoint in Node.js: verify, deduplicate, queue, answer 204.
//
//   npm install
//   COURIER_WEBHOOK_SECRET=whsec_... node receiver.mjs 9000
//
// Listens on 127.0.0.1 and accepts POST /webhooks/courier. Several secrets,
// separated by spaces, are all accepted (useful while you switch to a rotated one).
// The dedupe sets and the queue live in memory to keep the example short: in
// production use a shared store with a TTL (e.g. Redis SET NX EX) and a durable queue.
import { createServer } from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const secrets = (process.env.COURIER_WEBHOOK_SECRET ?? "").split(/\s+/).filter(Boolean);
const port = Number(process.argv[2] ?? 9000);
const MAX_BODY = 16 * 1024 * 1024; // up to 10 events per batch, each up to the ingest limit
const DEDUPE_TTL_MS = 7 * 24 * 3600 * 1000; // at least the retry window; a week also covers replays

// Keys remembered for a while. Stand-in for Redis `SET key 1 NX PX ttl`.
class TtlSet {
  #expiry = new Map();
  has(key) { return (this.#expiry.get(key) ?? 0) > Date.now(); }
  add(key) { this.#expiry.set(key, Date.now() + DEDUPE_TTL_MS); }
}
const acceptedBatches = new TtlSet(); // webhook-id of every batch queued
const processedEvents = new TtlSet(); // eventId of every event processed

function verify(body, headers) {
  for (const secret of secrets) {
    try {
      return new Webhook(secret).verify(body, headers); // the parsed envelope
    } catch (e) {
      if (!(e instanceof WebhookVerificationError)) throw e;
    }
  }
  return null;
}

// Your business logic runs here, after the answer has been sent.
async function processBatch(batch) {
  for (const event of batch.events) {
    if (processedEvents.has(event.eventId)) continue;
    console.log(`  apply ${event.objectType}.${event.eventType} ${event.data.objectId} (${event.eventId})`);
    processedEvents.add(event.eventId);
  }
}

createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/webhooks/courier") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      res.writeHead(413).end();
      req.destroy();
    } else {
      chunks.push(chunk);
    }
  });
  req.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes: verify these, not a re-serialization
    const batch = verify(body, req.headers);
    if (batch === null) {
      res.writeHead(401).end("invalid signature");
      return;
    }
    const batchId = req.headers["webhook-id"];
    const attempt = req.headers["x-courier-attempt"];
    if (acceptedBatches.has(batchId)) {
      console.log(`batch ${batchId} attempt ${attempt}: duplicate, already queued`);
      res.writeHead(204).end();
      return;
    }
    setImmediate(() => processBatch(batch).catch(console.error)); // stand-in for a durable queue
    acceptedBatches.add(batchId);
    console.log(`batch ${batchId} attempt ${attempt}: queued ${batch.eventCount} event(s)`);
    res.writeHead(204).end();
  });
}).listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${port}/webhooks/courier`));
