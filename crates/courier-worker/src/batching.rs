//! Throttled webhooks' batches (design §7): handing cut batches on as delivery
//! jobs, flushing batches whose oldest event waited the flush timeout, taking over
//! batches whose replica died before handing them on, and re-cutting what waits
//! when a webhook's throttling changes or it is disabled or deleted.

use std::sync::Arc;
use std::time::Duration;

use courier_core::ids::TenantId;
use courier_store::batch::CutBatch;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::carry::Carried;
use crate::fanout::publish_jobs;
use crate::Pipeline;

/// Most batches one flush or reap takes at once.
const BATCHES_PER_ROUND: usize = 64;

/// Publishes the batches' delivery jobs (confirmed), then forgets them as pending.
/// Each job carries its first event's trace context and links to every event's.
/// A batch whose job was not confirmed stays pending and is taken over when its
/// lease ends. Returns whether every job was confirmed.
pub async fn hand_on(p: &Pipeline, batches: &[CutBatch]) -> bool {
    if batches.is_empty() {
        return true;
    }
    let jobs: Vec<_> = batches
        .iter()
        .map(|b| (b.job(), Carried::of_batch(b)))
        .collect();
    if !publish_jobs(p, &jobs).await {
        return false;
    }
    for batch in batches {
        p.metrics.batch_sent(batch.events.len());
        // The job is out; if this fails the lease ends and a duplicate job (same
        // batch id, so the same webhook-id and no second POST) is published.
        if let Err(e) = p.store.batch_handed_on(batch).await {
            p.metrics.flow.deps.redis_error();
            tracing::warn!(error = %e, batch_id = %batch.batch_id(), "could not clear a handed-on batch");
        }
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
async fn recut_tenant(p: &Pipeline, tenant: &TenantId) -> Result<(), courier_store::StoreError> {
    for id in p.store.accumulating(tenant).await? {
        let (chunk, drain) = match p.store.webhook(&id).await? {
            Some(w) if w.active && w.throttling.batches() => (w.throttling.get(), false),
            Some(w) if w.active => (1, true),
            _ => (10, true),
        };
        let cut = p.store.recut(&id, chunk, drain, p.batch_timing).await?;
        hand_on(p, &cut).await;
    }
    Ok(())
}
