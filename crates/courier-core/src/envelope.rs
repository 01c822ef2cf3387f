//! The batch envelope a subscriber receives, and the delivery job that carries one
//! batch for one webhook through the broker.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::EnvelopeEvent;
use crate::ids::{BatchId, TenantId, WebhookId};

/// The JSON body of every delivery (`proto-schemas/batch-envelope.schema.json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchEnvelope<'a> {
    pub batch_id: BatchId,
    pub event_count: usize,
    pub is_batch: bool,
    pub timestamp: DateTime<Utc>,
    pub events: &'a [EnvelopeEvent],
}

impl<'a> BatchEnvelope<'a> {
    pub fn new(batch_id: BatchId, timestamp: DateTime<Utc>, events: &'a [EnvelopeEvent]) -> Self {
        Self {
            batch_id,
            event_count: events.len(),
            is_batch: events.len() > 1,
            timestamp,
            events,
        }
    }

    /// The body as sent and signed: serialized once.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and already-valid raw JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One batch for one webhook (`proto-schemas/delivery-job.schema.json`): the message on
/// `courier.deliveries`. It carries the events so that a delivery needs no other
/// lookup than the webhook's current configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryJob {
    pub batch_id: BatchId,
    pub tenant_id: TenantId,
    pub webhook_id: WebhookId,
    /// The webhook's generation when the work was created; older ones end cancelled.
    pub generation: u64,
    /// 1 for the first series; each replay starts the next.
    pub series: u32,
    /// 1-based attempt within the series.
    pub attempt: u32,
    /// When the batch was cut: the envelope's `timestamp`, so every attempt sends the same body.
    pub created_at: DateTime<Utc>,
    /// Not before this time is the attempt made.
    pub due_at: DateTime<Utc>,
    pub events: Vec<EnvelopeEvent>,
}

impl DeliveryJob {
    /// The first attempt, due `now`, of a delivery of one event alone to one
    /// webhook, under the batch id such a delivery always gets
    /// ([`BatchId::for_single`]).
    pub fn single(
        tenant_id: TenantId,
        webhook_id: WebhookId,
        generation: u64,
        event: EnvelopeEvent,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            batch_id: BatchId::for_single(&webhook_id, &event.event_id),
            tenant_id,
            webhook_id,
            generation,
            series: 1,
            attempt: 1,
            created_at: now,
            due_at: now,
            events: vec![event],
        }
    }

    pub fn envelope(&self) -> BatchEnvelope<'_> {
        BatchEnvelope::new(self.batch_id, self.created_at, &self.events)
    }

    pub fn event_ids(&self) -> impl Iterator<Item = &str> {
        self.events.iter().map(|e| e.event_id.as_str())
    }

    /// The next attempt of this series, not to be made before `due_at`.
    pub fn next_attempt(&self, due_at: DateTime<Utc>) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1),
            due_at,
            ..self.clone()
        }
    }

    /// The first attempt of a new series of a logged batch, due `now`: the same
    /// batchId, timestamp and events (so the same body), under the webhook's current
    /// generation.
    pub fn replay(
        stored: StoredEnvelope,
        tenant_id: TenantId,
        webhook_id: WebhookId,
        generation: u64,
        series: u32,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            batch_id: stored.batch_id,
            tenant_id,
            webhook_id,
            generation,
            series,
            attempt: 1,
            created_at: stored.timestamp,
            due_at: now,
            events: stored.events,
        }
    }
}

/// A batch envelope read back from the delivery log, where it is kept as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEnvelope {
    pub batch_id: BatchId,
    pub timestamp: DateTime<Utc>,
    pub events: Vec<EnvelopeEvent>,
}

impl StoredEnvelope {
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::EventId;

    fn event(id: &str) -> EnvelopeEvent {
        serde_json::from_str(&format!(
            r#"{{"eventId":"{id}","eventType":"EntityCreated","objectType":"Prospect","data":{{"objectId":"p1"}},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn envelope_of_one_event_is_not_a_batch() {
        let events = [event("e1")];
        let wh = WebhookId::parse("wh_1").unwrap();
        let id = BatchId::for_single(&wh, &EventId::parse("e1").unwrap());
        let body = BatchEnvelope::new(id, Utc::now(), &events).to_body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["eventCount"], 1);
        assert_eq!(v["isBatch"], false);
        assert_eq!(v["batchId"], id.to_string());
        assert_eq!(v["events"][0]["eventId"], "e1");
        assert_eq!(v["events"][0]["data"]["objectId"], "p1");
    }

    #[test]
    fn a_single_event_job_has_the_batch_id_of_its_webhook_and_event() {
        let wh = WebhookId::parse("wh_1").unwrap();
        let now = Utc::now();
        let job = DeliveryJob::single(
            TenantId::parse("acme").unwrap(),
            wh.clone(),
            3,
            event("e1"),
            now,
        );
        assert_eq!(
            job.batch_id,
            BatchId::for_single(&wh, &EventId::parse("e1").unwrap())
        );
        assert_eq!((job.series, job.attempt, job.generation), (1, 1, 3));
        assert_eq!((job.created_at, job.due_at), (now, now));
        assert_eq!(job.event_ids().collect::<Vec<_>>(), ["e1"]);
    }

    #[test]
    fn a_replay_sends_the_same_body_in_a_new_series() {
        let events = [event("e1"), event("e2")];
        let wh = WebhookId::parse("wh_1").unwrap();
        let created = Utc::now() - chrono::Duration::hours(1);
        let body = BatchEnvelope::new(BatchId::generate(), created, &events).to_body();
        let stored = StoredEnvelope::parse(std::str::from_utf8(&body).unwrap()).unwrap();
        let now = Utc::now();
        let job = DeliveryJob::replay(stored, TenantId::parse("acme").unwrap(), wh, 7, 2, now);
        assert_eq!((job.series, job.attempt, job.generation), (2, 1, 7));
        assert_eq!(job.due_at, now);
        assert_eq!(job.envelope().to_body(), body);
        let next = job.next_attempt(now + chrono::Duration::seconds(5));
        assert_eq!((next.series, next.attempt), (2, 2));
        assert_eq!(next.envelope().to_body(), body);
    }

    #[test]
    fn envelope_of_several_events_is_a_batch_in_order() {
        let events = [event("e1"), event("e2"), event("e3")];
        let body = BatchEnvelope::new(BatchId::generate(), Utc::now(), &events).to_body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["eventCount"], 3);
        assert_eq!(v["isBatch"], true);
        let ids: Vec<_> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventId"].clone())
            .collect();
        assert_eq!(ids, ["e1", "e2", "e3"]);
    }
}
