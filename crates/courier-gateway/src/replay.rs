//! Replays (design §7): a logged batch delivered again as a new series, now, with
//! the same batchId (so the same `webhook-id`) and body, under its webhook's current
//! generation.
//!
//! [`publish_jobs`] is the port that hands replay jobs to the broker; the functions
//! around it read the log and the webhook, build the job in the domain, publish it,
//! and only then move the log record to the new series. A replay is thus never lost
//! between the two: if the record cannot be moved, the job's first claim moves it.

use std::collections::HashMap;

use chrono::Utc;
use courier_broker::topology::DELIVERY_ROUTING_KEY;
use courier_broker::{BrokerError, Message, Publisher, Topology};
use courier_core::envelope::{DeliveryJob, StoredEnvelope};
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_core::webhook::Webhook;
use courier_store::{DeliveryRecord, IndexCursor, Span, StoreError};

use crate::error::ApiError;
use crate::state::AppState;

/// Most dead letters one bulk replay goes through; a caller goes on with another.
pub const BULK_REPLAY_LIMIT: usize = 10_000;

/// Why a batch was not replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("delivery {0} not found")]
    NotFound(BatchId),
    #[error("webhook {0} no longer exists")]
    WebhookGone(WebhookId),
    #[error("webhook {0} is disabled; enable it to replay its deliveries")]
    WebhookDisabled(WebhookId),
    #[error("the logged payload of delivery {0} is unreadable")]
    Unreadable(BatchId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker did not take the replay: {0}")]
    Broker(#[from] BrokerError),
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
            ReplayError::WebhookGone(_) | ReplayError::WebhookDisabled(_) => {
                ApiError::conflict(e.to_string())
            }
            ReplayError::Unreadable(_) => ApiError::conflict(e.to_string()),
            ReplayError::Store(e) => e.into(),
            ReplayError::Broker(e) => ApiError::dependency("the broker", &e),
        }
    }
}

/// The port: publishes delivery jobs to `courier.deliveries` (due now), confirms
/// pipelined; Ok once the broker has confirmed every one.
pub async fn publish_jobs(
    publisher: &Publisher,
    topology: &Topology,
    jobs: &[DeliveryJob],
) -> Result<(), BrokerError> {
    let exchange = topology.deliveries();
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs {
        // A job is plain strings, numbers and already-valid raw JSON: it always serializes.
        let body = serde_json::to_vec(job).unwrap_or_default();
        let id = job.batch_id.to_string();
        let mut msg = Message::new(&exchange, DELIVERY_ROUTING_KEY, &body).with_message_id(&id);
        // The replay's delivery continues the trace of the request that asked for it.
        for (name, value) in courier_telemetry::TraceHeaders::current().pairs() {
            msg = msg.with_header(name, value.to_owned());
        }
        pending.push(publisher.send(msg).await?);
    }
    let mut failure = None;
    for confirm in pending {
        if let Err(e) = confirm.wait().await {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The webhook a replay goes to: it must exist and be active.
fn usable(webhook: Option<Webhook>, id: &WebhookId) -> Result<Webhook, ReplayError> {
    match webhook {
        None => Err(ReplayError::WebhookGone(id.clone())),
        Some(w) if !w.active => Err(ReplayError::WebhookDisabled(id.clone())),
        Some(w) => Ok(w),
    }
}

/// The replay job of a logged batch: the next series, from the stored payload.
fn job_for(record: &DeliveryRecord, webhook: &Webhook) -> Result<DeliveryJob, ReplayError> {
    let stored = StoredEnvelope::parse(record.payload.get())
        .map_err(|_| ReplayError::Unreadable(record.batch_id))?;
    if stored.batch_id != record.batch_id {
        return Err(ReplayError::Unreadable(record.batch_id));
    }
    Ok(DeliveryJob::replay(
        stored,
        record.tenant_id.clone(),
        webhook.id.clone(),
        webhook.generation,
        record.series.saturating_add(1),
        Utc::now(),
    ))
}

/// Publishes replay jobs, then moves their log records to the new series.
async fn start(state: &AppState, jobs: &[DeliveryJob]) -> Result<(), ReplayError> {
    publish_jobs(&state.publisher, &state.topology, jobs).await?;
    for job in jobs {
        state.store.mark_replayed(job).await?;
    }
    Ok(())
}

/// Replays one of the tenant's batches; returns the job of the new series.
#[tracing::instrument(skip_all, fields(tenant = %tenant, batch_id = %batch))]
pub async fn replay_batch(
    state: &AppState,
    tenant: &TenantId,
    batch: &BatchId,
) -> Result<DeliveryJob, ReplayError> {
    let record = match state.store.delivery(batch).await? {
        Some(r) if &r.tenant_id == tenant => r,
        _ => return Err(ReplayError::NotFound(*batch)),
    };
    let webhook = usable(
        state.store.webhook(&record.webhook_id).await?,
        &record.webhook_id,
    )?;
    let job = job_for(&record, &webhook)?;
    start(state, std::slice::from_ref(&job)).await?;
    tracing::info!(series = job.series, "delivery replayed");
    Ok(job)
}

/// Replays a job found parked in the dead-letter queue, as a new series after both
/// the job's and the log's; its own events make the body when the log has none.
pub async fn replay_parked_job(
    state: &AppState,
    parked: &DeliveryJob,
) -> Result<DeliveryJob, ReplayError> {
    let webhook = usable(
        state.store.webhook(&parked.webhook_id).await?,
        &parked.webhook_id,
    )?;
    if webhook.tenant_id != parked.tenant_id {
        return Err(ReplayError::WebhookGone(parked.webhook_id.clone()));
    }
    let logged_series = state
        .store
        .delivery(&parked.batch_id)
        .await?
        .map_or(0, |r| r.series);
    let job = DeliveryJob {
        generation: webhook.generation,
        series: parked.series.max(logged_series).saturating_add(1),
        attempt: 1,
        due_at: Utc::now(),
        ..parked.clone()
    };
    start(state, std::slice::from_ref(&job)).await?;
    Ok(job)
}

/// What a bulk replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BulkReplay {
    pub replayed: usize,
    /// Dead letters left as they are: their webhook is gone or disabled, or their
    /// payload is unreadable.
    pub skipped: usize,
}

/// Replays the tenant's dead letters that failed within `span`, optionally of one
/// webhook only, oldest failure first, at most [`BULK_REPLAY_LIMIT`].
#[tracing::instrument(skip_all, fields(tenant = %tenant))]
pub async fn replay_dead_letters(
    state: &AppState,
    tenant: &TenantId,
    webhook: Option<&WebhookId>,
    span: Span,
) -> Result<BulkReplay, ReplayError> {
    const PAGE: usize = 100;
    let mut done = BulkReplay::default();
    let mut cursor: Option<IndexCursor> = None;
    let mut webhooks: HashMap<WebhookId, Option<Webhook>> = HashMap::new();
    let mut seen = 0;
    while seen < BULK_REPLAY_LIMIT {
        let page = state
            .store
            .dead_letter_batches(tenant, span, cursor.as_ref(), PAGE)
            .await?;
        let Some(&(batch, score)) = page.last() else {
            break;
        };
        cursor = Some(IndexCursor { score, batch });
        seen += page.len();
        let mut jobs = Vec::with_capacity(page.len());
        for (batch, _) in &page {
            let Some(record) = state.store.delivery(batch).await? else {
                continue;
            };
            if &record.tenant_id != tenant
                || record.status != courier_core::delivery::DeliveryStatus::Failed
                || webhook.is_some_and(|w| w != &record.webhook_id)
            {
                continue;
            }
            let wh = match webhooks.get(&record.webhook_id) {
                Some(w) => w.clone(),
                None => {
                    let w = state.store.webhook(&record.webhook_id).await?;
                    webhooks.insert(record.webhook_id.clone(), w.clone());
                    w
                }
            };
            match usable(wh, &record.webhook_id).and_then(|w| job_for(&record, &w)) {
                Ok(job) => jobs.push(job),
                Err(_) => done.skipped += 1,
            }
        }
        start(state, &jobs).await?;
        done.replayed += jobs.len();
        if page.len() < PAGE {
            break;
        }
    }
    tracing::info!(
        replayed = done.replayed,
        skipped = done.skipped,
        "dead letters replayed"
    );
    Ok(done)
}
