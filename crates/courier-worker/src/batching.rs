//! Throttled webhooks' batches (design §7): handing cut batches on as delivery
//! jobs, flushing batches whose oldest event waited the flush timeout, taking over
//! batches whose replica died before handing them on, and re-cutting what waits
//! when a webhook's throttling changes or it is disabled or deleted. A batch whose
//! stored record cannot be read ends `failed` on its own; every other batch of the
//! same flush, reap or re-cut goes on as usual.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use courier_core::ids::{TenantId, WebhookId};
use courier_store::batch::{Cut, CutBatch, UnreadableBatch};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::carry::Carried;
use crate::fanout::publish_jobs;
use crate::observe::DeadReason;
use crate::Pipeline;

/// Most batches one flush or reap takes at once.
const BATCHES_PER_ROUND: usize = 64;

/// Publishes the ready batches' delivery jobs (confirmed), then forgets them as
/// pending; ends the unreadable ones `failed`. Each job carries its first event's
/// trace context and links to every event's. A batch whose job was not confirmed
/// (or that could not be ended) stays pending and is taken over when its lease
/// ends. Returns whether every batch was dealt with.
pub async fn hand_on(p: &Pipeline, cuts: &[Cut]) -> bool {
    let mut ready: Vec<&CutBatch> = Vec::new();
    let mut unreadable: Vec<&UnreadableBatch> = Vec::new();
    for cut in cuts {
        match cut {
            Cut::Ready(b) => ready.push(b),
            Cut::Unreadable(b) => unreadable.push(b),
        }
    }
    let mut all = true;
    for batch in unreadable {
        all &= end_unreadable(p, batch).await;
    }
    if ready.is_empty() {
        return all;
    }
    let jobs: Vec<_> = ready
        .iter()
        .map(|b| (b.job(), Carried::of_batch(b)))
        .collect();
    if !publish_jobs(p, &jobs).await {
        return false;
    }
    for batch in ready {
        p.metrics.batch_sent(batch.events.len());
        // The job is out; if this fails the lease ends and a duplicate job (same
        // batch id, so the same webhook-id and no second POST) is published.
        if let Err(e) = p.store.batch_handed_on(batch).await {
            p.metrics.flow.deps.redis_error();
            tracing::warn!(error = %e, batch_id = %batch.batch_id(), "could not clear a handed-on batch");
        }
    }
    all
}

/// Ends a batch whose stored record cannot be read, for good: `failed` in the log
/// with the reason (under its webhook and tenant, with the events that could be
/// read, so that a replay sends those) and no longer pending, so that it never
/// comes back; an ERROR line and `courier_dead_letters_total{reason="unreadable"}`
/// tell operators. Returns false when Redis failed: the batch stays pending and is
/// tried again when its lease ends.
async fn end_unreadable(p: &Pipeline, batch: &UnreadableBatch) -> bool {
    let tenant = match (&batch.tenant, &batch.webhook) {
        (Some(tenant), _) => Some(tenant.clone()),
        // The record lost its tenant: the webhook's configuration knows it.
        (None, Some(webhook)) => match p.store.webhook(webhook).await {
            Ok(w) => w.map(|w| w.tenant_id),
            Err(e) => {
                p.metrics.flow.deps.redis_error();
                tracing::warn!(error = %e, "could not look up the webhook of an unreadable batch");
                return false;
            }
        },
        (None, None) => None,
    };
    let job = tenant.and_then(|t| batch.job(t, Utc::now()));
    let marked = match &job {
        Some(job) => match p.store.mark_dead(job, &batch.reason, p.log_retention).await {
            Ok(marked) => marked,
            Err(e) => {
                p.metrics.flow.deps.redis_error();
                tracing::warn!(error = %e, "could not mark an unreadable batch failed");
                return false;
            }
        },
        None => false,
    };
    if let Err(e) = p.store.forget_unreadable(batch).await {
        p.metrics.flow.deps.redis_error();
        tracing::warn!(error = %e, "could not forget an unreadable batch");
        return false;
    }
    // Counted once: by whoever marked it, or dropped it where it could not be logged.
    if marked || job.is_none() {
        p.metrics.flow.dead_letter(DeadReason::unreadable);
        tracing::error!(
            pending = %batch.member(),
            webhook_id = batch.webhook.as_ref().map(WebhookId::as_str),
            batch_id = batch.id.map(|id| id.to_string()),
            readable_events = batch.events.len(),
            logged = job.is_some(),
            reason = %batch.reason,
            "a stored batch cannot be read: it ends failed"
        );
    }
    true
}

/// Until `stop`: flushes due batches and takes over abandoned ones, every tenth of
/// the flush timeout (between 20 ms and 500 ms).
pub async fn flush(p: Arc<Pipeline>, stop: CancellationToken) {
    let tick = (p.batch_timing.flush_timeout / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        loop {
            let due = match p.store.flush_due(BATCHES_PER_ROUND, p.batch_timing).await {
                Ok(due) => due,
                Err(e) => {
                    p.metrics.flow.deps.redis_error();
                    tracing::warn!(error = %e, "could not flush due batches");
                    break;
                }
            };
            let full = due.len() == BATCHES_PER_ROUND;
            hand_on(&p, &due).await;
            if !full {
                break;
            }
        }
        match p
            .store
            .reap_batches(BATCHES_PER_ROUND, p.batch_timing)
            .await
        {
            Ok(abandoned) if !abandoned.is_empty() => {
                tracing::info!(
                    batches = abandoned.len(),
                    "taking over batches another replica cut but did not hand on"
                );
                hand_on(&p, &abandoned).await;
            }
            Ok(_) => {}
            Err(e) => {
                p.metrics.flow.deps.redis_error();
                tracing::warn!(error = %e, "could not reap abandoned batches")
            }
        }
    }
}

/// Until `stop`: re-cuts the waiting batches of tenants whose configuration changed.
pub async fn follow_changes(
    p: Arc<Pipeline>,
    mut changes: broadcast::Receiver<TenantId>,
    stop: CancellationToken,
) {
    loop {
        let tenant = tokio::select! {
            () = stop.cancelled() => return,
            change = changes.recv() => match change {
                Ok(t) => t,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Err(e) = recut_tenant(&p, &tenant).await {
            p.metrics.flow.deps.redis_error();
            tracing::warn!(error = %e, %tenant, "could not re-cut batches after a configuration change");
        }
    }
}

/// A smaller N cuts what now fills a batch; throttling 0 or 1 sends each waiting
/// event alone; a disabled or deleted webhook's waiting events are cut and handed
/// on, to end `cancelled` at delivery.
/// One webhook failing does not keep the others from being re-cut.
async fn recut_tenant(p: &Pipeline, tenant: &TenantId) -> Result<(), courier_store::StoreError> {
    for id in p.store.accumulating(tenant).await? {
        if let Err(e) = recut_webhook(p, &id).await {
            p.metrics.flow.deps.redis_error();
            tracing::warn!(error = %e, webhook_id = %id, "could not re-cut a webhook's batches after a configuration change");
        }
    }
    Ok(())
}

async fn recut_webhook(p: &Pipeline, id: &WebhookId) -> Result<(), courier_store::StoreError> {
    let (chunk, drain) = match p.store.webhook(id).await? {
        Some(w) if w.active && w.throttling.batches() => (w.throttling.get(), false),
        Some(w) if w.active => (1, true),
        _ => (10, true),
    };
    let cut = p.store.recut(id, chunk, drain, p.batch_timing).await?;
    hand_on(p, &cut).await;
    Ok(())
}
