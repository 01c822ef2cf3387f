//! The purge of deleted tenants (see [`courier_store::purge`]): every gateway
//! looks for due passes every second and runs them one at a time, page by page,
//! renewing its lease as it goes. A pass that fails, or that a stop interrupts,
//! runs again when its lease ends, here or on another replica.

use std::time::Duration;

use courier_store::batch::BatchTiming;
use courier_store::{PassEnd, PurgePass, StoreError};
use tokio_util::sync::CancellationToken;

use crate::metrics::PurgePassResult;
use crate::state::AppState;

/// How often a gateway looks for due passes.
const TICK: Duration = Duration::from_secs(1);
/// How long a pass is this gateway's without renewal.
const LEASE: Duration = Duration::from_secs(60);
/// Items removed per round trip.
const PAGE: usize = 200;

/// Runs due purge passes until `stop`; the next pass of a purge comes `settle`
/// after the one before.
pub async fn run(state: AppState, settle: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        loop {
            let pass = match state.store.next_purge(LEASE).await {
                Ok(Some(pass)) => pass,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for tenant purges");
                    break;
                }
            };
            match run_pass(&state, &pass, &stop).await {
                Ok(Ran::Stopped) => return,
                Ok(Ran::Done(removed)) => {
                    state.metrics.purge_pass(PurgePassResult::done);
                    match state.store.end_purge_pass(&pass, settle).await {
                        Ok(PassEnd::Finished) => {
                            state.metrics.tenant_purged();
                            tracing::info!(tenant = %pass.tenant, removed, "deleted tenant purged; its id is free");
                        }
                        Ok(end) => {
                            tracing::info!(tenant = %pass.tenant, pass = pass.pass, removed, ?end, "deleted tenant purge pass done")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, tenant = %pass.tenant, "could not record a purge pass; it runs again")
                        }
                    }
                }
                Err(e) => {
                    state.metrics.purge_pass(PurgePassResult::failed);
                    tracing::warn!(error = %e, tenant = %pass.tenant, pass = pass.pass, "a purge pass failed; it runs again when its lease ends");
                    break;
                }
            }
        }
    }
}

/// How a pass ended.
enum Ran {
    /// With this many items removed.
    Done(usize),
    /// Interrupted by a stop.
    Stopped,
}

/// Calls `page` until it removes nothing, renewing the lease; false if stopped.
async fn pages<F, Fut>(
    state: &AppState,
    pass: &PurgePass,
    stop: &CancellationToken,
    removed: &mut usize,
    mut page: F,
) -> Result<bool, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, StoreError>>,
{
    loop {
        if stop.is_cancelled() {
            return Ok(false);
        }
        let n = page().await?;
        if n == 0 {
            return Ok(true);
        }
        *removed += n;
        state.store.renew_purge(pass, LEASE).await?;
    }
}

#[tracing::instrument(skip_all, fields(tenant = %pass.tenant, pass = pass.pass))]
async fn run_pass(
    state: &AppState,
    pass: &PurgePass,
    stop: &CancellationToken,
) -> Result<Ran, StoreError> {
    let (store, tenant) = (&state.store, &pass.tenant);
    let mut removed = 0;
    if !pages(state, pass, stop, &mut removed, || {
        store.purge_unsettled(pass, PAGE)
    })
    .await?
    {
        return Ok(Ran::Stopped);
    }
    if !pages(state, pass, stop, &mut removed, || {
        store.purge_api_keys(tenant, PAGE)
    })
    .await?
    {
        return Ok(Ran::Stopped);
    }
    // Nothing is delivered for a deleted tenant, and nobody could read that its
    // waiting events were cancelled: they are dropped.
    let timing = BatchTiming {
        flush_timeout: LEASE,
        lease: LEASE,
    };
    for webhook in store.purge_webhook_ids(tenant).await? {
        removed += store.drop_batches(&webhook, timing).await?;
        if !pages(state, pass, stop, &mut removed, || {
            store.purge_webhook_log(pass, &webhook, PAGE)
        })
        .await?
        {
            return Ok(Ran::Stopped);
        }
        store.purge_webhook(tenant, &webhook).await?;
        store.renew_purge(pass, LEASE).await?;
    }
    if !pages(state, pass, stop, &mut removed, || {
        store.purge_dead_letters(pass, PAGE)
    })
    .await?
    {
        return Ok(Ran::Stopped);
    }
    let mut after: Option<String> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(Ran::Stopped);
        }
        let (n, next) = store
            .purge_operator_audit(pass, after.as_deref(), PAGE * 5)
            .await?;
        removed += n;
        store.renew_purge(pass, LEASE).await?;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    store.purge_tenant_keys(tenant).await?;
    // Whatever a cache read of the tenant while this ran goes too.
    store.announce(tenant).await?;
    state.api_keys.forget_tenant(tenant);
    Ok(Ran::Done(removed))
}
