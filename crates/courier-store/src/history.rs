//! Reading the delivery log in pages (design §6): a webhook's batches newest first,
//! a tenant's dead letters, every attempt of a time range for export; and writing
//! whole records (imports).
//!
//! Pages follow a cursor (the score and batch id of the last entry seen), not an
//! offset, so they stay correct while the indexes grow at one end and are trimmed
//! at the other. Each page reads a bounded number of records, so memory stays flat
//! however long the log.

use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::delivery::{AttemptRecord, DeliveryStatus};
use courier_core::ids::{BatchId, TenantId, WebhookId};
use redis::Value;
use serde::Serialize;

use crate::{DeliveryRecord, Store, StoreError};

/// Most index entries one listing call reads when a filter skips some; a page may
/// then hold fewer items than asked, with a cursor to go on from.
pub const SCAN_LIMIT: usize = 1000;

/// A position in a sorted index: the score (ms) and batch of the last entry seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexCursor {
    pub score: i64,
    pub batch: BatchId,
}

impl IndexCursor {
    /// The cursor as a token for API clients, who treat it as opaque.
    pub fn token(&self) -> String {
        format!("{}_{}", self.score, self.batch.as_uuid().simple())
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (score, batch) = token.split_once('_')?;
        Some(Self {
            score: score.parse().ok()?,
            batch: BatchId::parse(batch)?,
        })
    }
}

/// Inclusive bounds on an index's scores (ms since the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Items and where the next page starts (`None`: this was the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<IndexCursor>,
}

/// A batch as listings show it: its record without payload and attempts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySummary {
    pub batch_id: BatchId,
    #[serde(skip)]
    pub tenant_id: TenantId,
    pub webhook_id: WebhookId,
    pub status: DeliveryStatus,
    pub series: u32,
    pub event_ids: Vec<String>,
    pub event_count: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Attempts recorded, over every series.
    pub attempts: usize,
    /// The HTTP status of the latest attempt, if it got an answer.
    pub last_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A failed batch in its tenant's dead letters.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterEntry {
    #[serde(flatten)]
    pub delivery: DeliverySummary,
    pub failed_at: DateTime<Utc>,
}

/// A batch with every attempt, for export.
#[derive(Debug, Clone)]
pub struct BatchAttempts {
    pub batch_id: BatchId,
    pub tenant_id: TenantId,
    pub webhook_id: WebhookId,
    pub status: DeliveryStatus,
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, Copy)]
enum Order {
    NewestFirst,
    OldestFirst,
}

const SUMMARY_FIELDS: [&str; 8] = [
    "tenant",
    "webhookId",
    "status",
    "series",
    "eventIds",
    "createdAt",
    "updatedAt",
    "reason",
];

fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn decode<T: redis::FromRedisValue>(v: &Value) -> Result<T, StoreError> {
    Ok(redis::from_redis_value(v)?)
}

impl Store {
    /// Up to `count` entries of a sorted index after `after`, in `order`, within `span`.
    async fn index_after(
        &self,
        key: &str,
        order: Order,
        span: Span,
        after: Option<&IndexCursor>,
        count: usize,
    ) -> Result<Vec<(BatchId, i64)>, StoreError> {
        let mut lo = span.since;
        let mut hi = span.until;
        match (order, after) {
            (Order::NewestFirst, Some(c)) => hi = Some(hi.map_or(c.score, |h| h.min(c.score))),
            (Order::OldestFirst, Some(c)) => lo = Some(lo.map_or(c.score, |l| l.max(c.score))),
            (_, None) => {}
        }
        let lo = lo.map_or_else(|| "-inf".to_owned(), |v| v.to_string());
        let hi = hi.map_or_else(|| "+inf".to_owned(), |v| v.to_string());
        let after_member = after.map(|c| c.batch.to_string());
        let fetch = count.clamp(16, 1000);
        let mut conn = self.conn().await?;
        let mut out = Vec::with_capacity(count.min(1000));
        let mut offset = 0usize;
        loop {
            let mut cmd = match order {
                Order::NewestFirst => redis::cmd("ZREVRANGEBYSCORE"),
                Order::OldestFirst => redis::cmd("ZRANGEBYSCORE"),
            };
            cmd.arg(key);
            match order {
                Order::NewestFirst => cmd.arg(&hi).arg(&lo),
                Order::OldestFirst => cmd.arg(&lo).arg(&hi),
            };
            let page: Vec<(String, f64)> = cmd
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(fetch)
                .query_async(&mut *conn)
                .await?;
            let n = page.len();
            for (member, score) in page {
                let score = score.round() as i64;
                // Entries that tie with the cursor's score come in member order: skip
                // up to and including the cursor's own.
                if let (Some(c), Some(m)) = (after, after_member.as_deref()) {
                    let seen = match order {
                        Order::NewestFirst => member.as_str() >= m,
                        Order::OldestFirst => member.as_str() <= m,
                    };
                    if score == c.score && seen {
                        continue;
                    }
                }
                let Some(batch) = BatchId::parse(&member) else {
                    continue;
                };
                out.push((batch, score));
                if out.len() == count {
                    return Ok(out);
                }
            }
            if n < fetch {
                return Ok(out);
            }
            offset += n;
        }
    }

    /// Reads the summaries of `batches`, in one round trip; `None` for a record that
    /// is gone (expired since it was indexed) or unreadable.
    async fn summaries(
        &self,
        batches: &[BatchId],
    ) -> Result<Vec<Option<DeliverySummary>>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for b in batches {
            pipe.cmd("HMGET")
                .arg(self.keys.log(b))
                .arg(&SUMMARY_FIELDS[..]);
            pipe.llen(self.keys.log_attempts(b));
            pipe.lindex(self.keys.log_attempts(b), -1);
        }
        let mut conn = self.conn().await?;
        let values: Vec<Value> = pipe.query_async(&mut *conn).await?;
        let mut out = Vec::with_capacity(batches.len());
        for (batch, v) in batches.iter().zip(values.chunks(3)) {
            let [fields, len, last] = v else {
                return Err(StoreError::Corrupt("short pipeline answer".into()));
            };
            let fields: Vec<Option<String>> = decode(fields)?;
            let attempts: usize = decode(len)?;
            let last: Option<String> = decode(last)?;
            let summary = summary(*batch, &fields, attempts, last.as_deref());
            if summary.is_none() && fields.iter().any(Option::is_some) {
                tracing::warn!(batch_id = %batch, "skipping an unreadable delivery log record");
            }
            out.push(summary);
        }
        Ok(out)
    }

    /// A page of an index's batches that pass `keep`, newest first. Reads at most
    /// [`SCAN_LIMIT`] entries.
    async fn summary_page<T>(
        &self,
        key: &str,
        after: Option<&IndexCursor>,
        limit: usize,
        keep: impl Fn(&DeliverySummary) -> bool,
        wrap: impl Fn(DeliverySummary, i64) -> T,
    ) -> Result<Page<T>, StoreError> {
        let limit = limit.max(1);
        let chunk = (limit + 1).clamp(50, SCAN_LIMIT);
        let mut position = after.copied();
        let mut items: Vec<(T, IndexCursor)> = Vec::with_capacity(limit);
        let mut examined = 0;
        loop {
            let entries = self
                .index_after(
                    key,
                    Order::NewestFirst,
                    Span::default(),
                    position.as_ref(),
                    chunk,
                )
                .await?;
            let batches: Vec<BatchId> = entries.iter().map(|e| e.0).collect();
            let summaries = self.summaries(&batches).await?;
            for ((batch, score), summary) in entries.iter().zip(summaries) {
                position = Some(IndexCursor {
                    score: *score,
                    batch: *batch,
                });
                let Some(summary) = summary.filter(|s| keep(s)) else {
                    continue;
                };
                if items.len() == limit {
                    // One more exists: the page ends at its last item.
                    let next = items.last().map(|i| i.1);
                    return Ok(Page {
                        items: items.into_iter().map(|i| i.0).collect(),
                        next,
                    });
                }
                items.push((
                    wrap(summary, *score),
                    IndexCursor {
                        score: *score,
                        batch: *batch,
                    },
                ));
            }
            examined += entries.len();
            if entries.len() < chunk {
                return Ok(Page {
                    items: items.into_iter().map(|i| i.0).collect(),
                    next: None,
                });
            }
            if examined >= SCAN_LIMIT {
                return Ok(Page {
                    items: items.into_iter().map(|i| i.0).collect(),
                    next: position,
                });
            }
        }
    }

    /// A page of a webhook's batches, newest first, optionally only those in `status`.
    pub async fn deliveries_page(
        &self,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        after: Option<&IndexCursor>,
        limit: usize,
    ) -> Result<Page<DeliverySummary>, StoreError> {
        self.summary_page(
            &self.keys.log_index(webhook),
            after,
            limit,
            |s| &s.webhook_id == webhook && status.is_none_or(|st| s.status == st),
            |s, _| s,
        )
        .await
    }

    /// A page of a tenant's dead letters (its `failed` batches), the latest failure
    /// first, optionally of one webhook only.
    pub async fn dead_letters_page(
        &self,
        tenant: &TenantId,
        webhook: Option<&WebhookId>,
        after: Option<&IndexCursor>,
        limit: usize,
    ) -> Result<Page<DeadLetterEntry>, StoreError> {
        self.summary_page(
            &self.keys.dead(tenant),
            after,
            limit,
            |s| {
                &s.tenant_id == tenant
                    && s.status == DeliveryStatus::Failed
                    && webhook.is_none_or(|w| &s.webhook_id == w)
            },
            |delivery, score| DeadLetterEntry {
                failed_at: from_millis(score).unwrap_or(delivery.updated_at),
                delivery,
            },
        )
        .await
    }

    /// Up to `count` of a tenant's dead letters that failed within `span`, oldest
    /// failure first, after `after`: `(batch, failed at in ms)`.
    pub async fn dead_letter_batches(
        &self,
        tenant: &TenantId,
        span: Span,
        after: Option<&IndexCursor>,
        count: usize,
    ) -> Result<Vec<(BatchId, i64)>, StoreError> {
        self.index_after(
            &self.keys.dead(tenant),
            Order::OldestFirst,
            span,
            after,
            count,
        )
        .await
    }

    /// Up to `batches` of a webhook's batches created within `span`, oldest first,
    /// after `after`, each with every attempt; and where the next page starts.
    pub async fn export_page(
        &self,
        webhook: &WebhookId,
        span: Span,
        after: Option<&IndexCursor>,
        batches: usize,
    ) -> Result<Page<BatchAttempts>, StoreError> {
        let entries = self
            .index_after(
                &self.keys.log_index(webhook),
                Order::OldestFirst,
                span,
                after,
                batches.max(1),
            )
            .await?;
        let next = (entries.len() >= batches.max(1))
            .then(|| {
                entries.last().map(|(batch, score)| IndexCursor {
                    score: *score,
                    batch: *batch,
                })
            })
            .flatten();
        if entries.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next,
            });
        }
        let mut pipe = redis::pipe();
        for (b, _) in &entries {
            pipe.cmd("HMGET")
                .arg(self.keys.log(b))
                .arg(&["tenant", "webhookId", "status"][..]);
            pipe.lrange(self.keys.log_attempts(b), 0, -1);
        }
        let mut conn = self.conn().await?;
        let values: Vec<Value> = pipe.query_async(&mut *conn).await?;
        let mut items = Vec::with_capacity(entries.len());
        for ((batch, _), v) in entries.iter().zip(values.chunks(2)) {
            let [fields, attempts] = v else {
                return Err(StoreError::Corrupt("short pipeline answer".into()));
            };
            let fields: Vec<Option<String>> = decode(fields)?;
            let attempts: Vec<String> = decode(attempts)?;
            let (Some(Some(tenant)), Some(Some(wh)), Some(Some(status))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let (Ok(tenant_id), Ok(webhook_id), Some(status)) = (
                TenantId::parse(tenant),
                WebhookId::parse(wh),
                DeliveryStatus::parse(status),
            ) else {
                tracing::warn!(batch_id = %batch, "skipping an unreadable delivery log record");
                continue;
            };
            items.push(BatchAttempts {
                batch_id: *batch,
                tenant_id,
                webhook_id,
                status,
                attempts: attempts
                    .iter()
                    .filter_map(|a| serde_json::from_str(a).ok())
                    .collect(),
            });
        }
        Ok(Page { items, next })
    }

    /// Writes whole delivery log records (imports from another system, test
    /// fixtures), replacing any with the same batch id, in pipelined round trips.
    pub async fn import_deliveries(
        &self,
        records: &[DeliveryRecord],
        retention: Duration,
    ) -> Result<(), StoreError> {
        let retention = i64::try_from(retention.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        for chunk in records.chunks(500) {
            let mut pipe = redis::pipe();
            for r in chunk {
                let (log, attempts) = (
                    self.keys.log(&r.batch_id),
                    self.keys.log_attempts(&r.batch_id),
                );
                let index = self.keys.log_index(&r.webhook_id);
                let batch = r.batch_id.to_string();
                pipe.del(&log).ignore().del(&attempts).ignore();
                pipe.hset_multiple(
                    &log,
                    &[
                        ("tenant", r.tenant_id.to_string()),
                        ("webhookId", r.webhook_id.to_string()),
                        (
                            "eventIds",
                            serde_json::to_string(&r.event_ids).unwrap_or_default(),
                        ),
                        ("payload", r.payload.get().to_owned()),
                        ("series", r.series.to_string()),
                        ("status", r.status.as_str().to_owned()),
                        ("createdAt", r.created_at.timestamp_millis().to_string()),
                        ("updatedAt", r.updated_at.timestamp_millis().to_string()),
                    ],
                )
                .ignore();
                if let Some(reason) = &r.reason {
                    pipe.hset(&log, "reason", reason).ignore();
                }
                pipe.expire(&log, retention).ignore();
                if !r.attempts.is_empty() {
                    let json: Vec<String> = r
                        .attempts
                        .iter()
                        .map(|a| serde_json::to_string(a).unwrap_or_default())
                        .collect();
                    pipe.rpush(&attempts, json)
                        .ignore()
                        .expire(&attempts, retention)
                        .ignore();
                }
                pipe.zadd(&index, &batch, r.created_at.timestamp_millis())
                    .ignore()
                    .expire(&index, retention)
                    .ignore();
                if r.status == DeliveryStatus::Failed {
                    let dead = self.keys.dead(&r.tenant_id);
                    pipe.zadd(&dead, &batch, r.updated_at.timestamp_millis())
                        .ignore()
                        .expire(&dead, retention)
                        .ignore();
                }
            }
            pipe.query_async::<()>(&mut *conn).await?;
        }
        Ok(())
    }
}

/// A summary from the HMGET of [`SUMMARY_FIELDS`] and the attempts list.
fn summary(
    batch: BatchId,
    fields: &[Option<String>],
    attempts: usize,
    last: Option<&str>,
) -> Option<DeliverySummary> {
    let get = |i: usize| fields.get(i).and_then(Option::as_deref);
    let time = |i: usize| get(i)?.parse::<i64>().ok().and_then(from_millis);
    let event_ids: Vec<String> = serde_json::from_str(get(4)?).ok()?;
    let last_status_code = last
        .and_then(|a| serde_json::from_str::<AttemptRecord>(a).ok())
        .and_then(|a| a.status_code);
    Some(DeliverySummary {
        batch_id: batch,
        tenant_id: TenantId::parse(get(0)?).ok()?,
        webhook_id: WebhookId::parse(get(1)?).ok()?,
        status: DeliveryStatus::parse(get(2)?)?,
        series: get(3)?.parse().ok()?,
        event_count: event_ids.len(),
        event_ids,
        created_at: time(5)?,
        updated_at: time(6)?,
        attempts,
        last_status_code,
        reason: get(7).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_their_token() {
        let c = IndexCursor {
            score: 1_776_939_300_123,
            batch: BatchId::generate(),
        };
        assert_eq!(IndexCursor::parse(&c.token()), Some(c));
        assert_eq!(IndexCursor::parse("nope"), None);
        assert_eq!(IndexCursor::parse("12_notauuid"), None);
        assert_eq!(IndexCursor::parse(&format!("x_{}", c.batch)), None);
    }

    #[test]
    fn a_summary_needs_every_field_but_the_reason() {
        let batch = BatchId::generate();
        let mut fields: Vec<Option<String>> = [
            "acme",
            "wh_1",
            "failed",
            "2",
            r#"["e1","e2"]"#,
            "1776939300000",
            "1776939301000",
        ]
        .iter()
        .map(|s| Some((*s).to_owned()))
        .collect();
        fields.push(None);
        let last = r#"{"series":2,"attempt":1,"startedAt":"2026-04-23T10:15:00Z","statusCode":503,"latencyMs":3,"outcome":"x"}"#;
        let s = summary(batch, &fields, 4, Some(last)).unwrap();
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert_eq!((s.series, s.event_count, s.attempts), (2, 2, 4));
        assert_eq!(s.last_status_code, Some(503));
        assert_eq!(s.reason, None);
        fields[4] = None;
        assert!(summary(batch, &fields, 4, None).is_none());
    }
}
