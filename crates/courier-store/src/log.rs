//! Attempt claims and the delivery log record (design §6–§7).
//!
//! Before a POST a worker claims `(batch, series, attempt)`. The claim is a lease
//! while the POST runs and becomes `done` with the result, so a second copy of the
//! same job (an AMQP redelivery, an event sent twice) does not POST again; a lease
//! whose holder died expires and the next copy takes over. A holder that outlived
//! its lease and was taken over still has its attempt logged, but its result
//! changes nothing: the newer holder's does.
//!
//! Keys: the claim (expires with the lease, then after the dedupe window once
//! `done`); the record and its attempts (expire after the log retention, renewed by
//! each claim); the webhook's log index and the tenant's dead letters (expire after
//! the retention, and are trimmed to it).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::delivery::{AttemptRecord, DeliveryStatus};
use courier_core::envelope::{DeliveryJob, StoredEnvelope};
use courier_core::ids::{BatchId, EventId, TenantId, WebhookId};
use redis::AsyncCommands;

use crate::{scripts, Store, StoreError};

/// How long a finished claim stops duplicates: the dedupe window of design §2.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What claiming an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker may POST.
    Claimed,
    /// The attempt already ran to its end; nothing to do.
    Done,
    /// Another worker holds the lease for this long.
    Busy(Duration),
    /// A newer series of the batch (a replay) has started; this job is obsolete.
    Superseded,
}

/// A delivery log record: one batch for one webhook, with its attempts.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub batch_id: BatchId,
    pub tenant_id: TenantId,
    pub webhook_id: WebhookId,
    pub event_ids: Vec<String>,
    pub status: DeliveryStatus,
    pub series: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the batch failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The envelope as sent.
    pub payload: Box<serde_json::value::RawValue>,
    /// Every attempt of every series, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// Everything the log needs about the job an attempt belongs to.
pub struct ClaimRequest<'a> {
    pub job: &'a DeliveryJob,
    pub holder: &'a str,
    pub lease: Duration,
    pub payload: &'a [u8],
    pub retention: Duration,
}

impl Store {
    /// Claims an attempt, creating the log record of its series (status `pending`)
    /// if this is the series' first sight.
    ///
    /// The payload goes to Redis only where the record is expected to be created:
    /// with the first attempt of the first series. A later attempt that finds no
    /// record (it expired, or was never made) is claimed again with it.
    pub async fn claim(&self, req: ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let job = req.job;
        let first = job.series == 1 && job.attempt == 1;
        let (mut state, mut pttl) = self.claim_once(&req, first).await?;
        if state == "missing" {
            (state, pttl) = self.claim_once(&req, true).await?;
        }
        Ok(match state.as_str() {
            "claimed" => Claim::Claimed,
            "done" => Claim::Done,
            "superseded" => Claim::Superseded,
            "busy" => Claim::Busy(Duration::from_millis(pttl.max(0).unsigned_abs())),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "claim of {}: unexpected answer {other}",
                    job.batch_id
                )))
            }
        })
    }

    async fn claim_once(
        &self,
        req: &ClaimRequest<'_>,
        with_payload: bool,
    ) -> Result<(String, i64), StoreError> {
        let job = req.job;
        let (event_ids, payload) = if with_payload {
            let ids: Vec<&str> = job.event_ids().collect();
            (serde_json::to_string(&ids).unwrap_or_default(), req.payload)
        } else {
            (String::new(), &[][..])
        };
        let mut conn = self.conn().await?;
        Ok(scripts::CLAIM
            .key(self.keys.claim(&job.batch_id, job.series, job.attempt))
            .key(self.keys.log(&job.batch_id))
            .key(self.keys.log_index(&job.webhook_id))
            .key(self.keys.dead(&job.tenant_id))
            .arg(req.holder)
            .arg(millis(req.lease))
            .arg(job.tenant_id.as_str())
            .arg(job.webhook_id.as_str())
            .arg(event_ids)
            .arg(payload)
            .arg(job.series)
            .arg(job.batch_id.to_string())
            .arg(req.retention.as_secs().max(1))
            .arg(if self.trim_due() { "1" } else { "0" })
            .arg(job.generation)
            .invoke_async(&mut *conn)
            .await?)
    }

    /// Records the end of an attempt claimed by `holder`: appends it (if any) to the
    /// log and, if `holder` still holds the claim (or it expired with nobody else
    /// taking it), moves the status forward (never back, and only within the
    /// record's current series) and marks the claim done. A holder whose lease ran
    /// out and was taken over changes nothing but the attempts. A batch that becomes
    /// `failed` joins its tenant's dead letters, with the attempt's outcome as the
    /// reason. Returns whether the status changed.
    pub async fn finish(
        &self,
        job: &DeliveryJob,
        holder: &str,
        attempt: Option<&AttemptRecord>,
        status: DeliveryStatus,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let attempt_json = attempt
            .map(|a| serde_json::to_string(a).unwrap_or_default())
            .unwrap_or_default();
        let mut conn = self.conn().await?;
        let applied: i64 = scripts::FINISH
            .key(self.keys.claim(&job.batch_id, job.series, job.attempt))
            .key(self.keys.log(&job.batch_id))
            .key(self.keys.log_attempts(&job.batch_id))
            .key(self.keys.dead(&job.tenant_id))
            .arg(attempt_json)
            .arg(status.as_str())
            .arg(job.series)
            .arg(DEDUPE_WINDOW.as_secs())
            .arg(retention.as_secs().max(1))
            .arg(attempt.map_or("", |a| a.outcome.as_str()))
            .arg(job.batch_id.to_string())
            .arg(holder)
            .invoke_async(&mut *conn)
            .await?;
        Ok(applied == 1)
    }

    /// Reads a delivery log record with its attempts.
    pub async fn delivery(&self, batch: &BatchId) -> Result<Option<DeliveryRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let (fields, attempts): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(self.keys.log(batch))
            .lrange(self.keys.log_attempts(batch), 0, -1)
            .query_async(&mut *conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            fields
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| StoreError::Corrupt(format!("log record {batch} lacks {name}")))
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("log record {batch}: bad {what}"));
        let time = |name: &str| -> Result<DateTime<Utc>, StoreError> {
            field(name)?
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .ok_or_else(|| corrupt(name))
        };
        Ok(Some(DeliveryRecord {
            batch_id: *batch,
            tenant_id: TenantId::parse(field("tenant")?).map_err(|_| corrupt("tenant"))?,
            webhook_id: WebhookId::parse(field("webhookId")?).map_err(|_| corrupt("webhookId"))?,
            event_ids: serde_json::from_str(field("eventIds")?).map_err(|_| corrupt("eventIds"))?,
            status: DeliveryStatus::parse(field("status")?).ok_or_else(|| corrupt("status"))?,
            series: field("series")?.parse().map_err(|_| corrupt("series"))?,
            created_at: time("createdAt")?,
            updated_at: time("updatedAt")?,
            reason: fields.get("reason").cloned(),
            payload: serde_json::from_str(field("payload")?).map_err(|_| corrupt("payload"))?,
            attempts: attempts
                .iter()
                .map(|a| serde_json::from_str(a).map_err(|_| corrupt("attempt")))
                .collect::<Result<_, _>>()?,
        }))
    }

    /// Marks the batch of a job that was parked in the dead-letter queue `failed`,
    /// without an attempt, so that its tenant sees it (and can replay it). A series
    /// that already ended, or was replaced by a newer one, is left as it is. Returns
    /// whether the batch was marked.
    pub async fn mark_dead(
        &self,
        job: &DeliveryJob,
        reason: &str,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let event_ids: Vec<&str> = job.event_ids().collect();
        let mut conn = self.conn().await?;
        let marked: i64 = scripts::MARK_DEAD
            .key(self.keys.log(&job.batch_id))
            .key(self.keys.log_index(&job.webhook_id))
            .key(self.keys.dead(&job.tenant_id))
            .arg(job.tenant_id.as_str())
            .arg(job.webhook_id.as_str())
            .arg(serde_json::to_string(&event_ids).unwrap_or_default())
            .arg(job.envelope().to_body())
            .arg(job.series)
            .arg(job.batch_id.to_string())
            .arg(retention.as_secs().max(1))
            .arg(reason)
            .invoke_async(&mut *conn)
            .await?;
        Ok(marked == 1)
    }

    /// Moves the record of a replayed batch to the job's (new) series, `pending`, and
    /// takes the batch off its tenant's dead letters. Returns whether it moved; it
    /// does not when the record is gone or already there (the first claim of the
    /// series then does the same).
    pub async fn mark_replayed(&self, job: &DeliveryJob) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let moved: i64 = scripts::MARK_REPLAYED
            .key(self.keys.log(&job.batch_id))
            .key(self.keys.dead(&job.tenant_id))
            .arg(job.series)
            .arg(job.batch_id.to_string())
            .invoke_async(&mut *conn)
            .await?;
        Ok(moved == 1)
    }

    /// The first attempts of `event` to `webhooks` that were claimed and never
    /// ended: log records still `pending`, whose attempt was lost with the worker
    /// making it (or the broker connection it would have acked on). Each comes back
    /// as the job of that attempt, under the generation it was created with, so that
    /// it runs again, or ends `cancelled` if its webhook is gone or changed.
    /// Webhooks deleted within the last day are looked at too. Only attempts made
    /// straight from the fan-out can be lost this way: a queued job is redelivered
    /// by the broker itself.
    pub async fn lost_attempts(
        &self,
        tenant: &TenantId,
        event: &EventId,
        webhooks: &[WebhookId],
    ) -> Result<Vec<DeliveryJob>, StoreError> {
        let mut conn = self.conn().await?;
        let (deleted, deleted_before): (Vec<String>, Vec<String>) = redis::pipe()
            .zrange(self.keys.deleted_webhooks(tenant), 0, -1)
            .smembers(self.keys.deleted_webhooks_before(tenant))
            .query_async(&mut *conn)
            .await?;
        let mut seen: std::collections::HashSet<&str> =
            webhooks.iter().map(WebhookId::as_str).collect();
        let candidates: Vec<WebhookId> = webhooks
            .iter()
            .cloned()
            .chain(
                deleted
                    .iter()
                    .chain(&deleted_before)
                    .filter(|id| seen.insert(id.as_str()))
                    .filter_map(|id| WebhookId::parse(id).ok()),
            )
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for w in &candidates {
            pipe.cmd("HMGET")
                .arg(self.keys.log(&BatchId::for_single(w, event)))
                .arg(&["status", "series", "generation", "tenant", "payload"][..]);
        }
        let records: Vec<Vec<Option<String>>> = pipe.query_async(&mut *conn).await?;
        let now = Utc::now();
        let mut lost = Vec::new();
        for (webhook, fields) in candidates.into_iter().zip(records) {
            let [Some(status), Some(series), generation, Some(owner), Some(payload)] =
                <[Option<String>; 5]>::try_from(fields).unwrap_or_default()
            else {
                continue;
            };
            if status != DeliveryStatus::Pending.as_str() || owner != tenant.as_str() {
                continue;
            }
            let (Ok(series), Ok(stored)) = (series.parse(), StoredEnvelope::parse(&payload)) else {
                tracing::warn!(%webhook, event = %event, "skipping an unreadable delivery log record");
                continue;
            };
            let generation = generation.and_then(|g| g.parse().ok()).unwrap_or(0);
            lost.push(DeliveryJob::replay(
                stored,
                tenant.clone(),
                webhook,
                generation,
                series,
                now,
            ));
        }
        Ok(lost)
    }

    /// Whether a log record exists (cheap existence check for tests and the API).
    pub async fn has_delivery(&self, batch: &BatchId) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        Ok(conn.exists(self.keys.log(batch)).await?)
    }
}

/// One claim of this many trims its webhook's log index of entries past the
/// retention; trimming on every claim would cost each delivery another command.
const TRIM_EVERY: u64 = 16;

impl Store {
    fn trim_due(&self) -> bool {
        self.claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % TRIM_EVERY
            == 0
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
