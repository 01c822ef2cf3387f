//! A clean stop of the real binaries, SIGTERM as from an orchestrator or SIGINT as
//! from Ctrl-C, exits 0 and logs no ERROR (operators alert on ERROR), also while
//! events flow through them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_tests::{
    prospect_created, Api, Behaviour, ChildService, Deps, TenantHandle, TestEnv, TestReceiver,
};
use serde_json::json;

/// Stops of each binary: every other one SIGINT.
const STOPS: usize = 20;

/// Events sent to every gateway in `targets`, one request each 20 ms, until `stop`.
fn send_events(
    targets: Arc<Mutex<Vec<Api>>>,
    tenant: TenantHandle,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut accepted = 0;
        for n in 0.. {
            let apis = targets.lock().unwrap().clone();
            for api in apis {
                let events = json!({"events": [
                    prospect_created(&format!("evt_stop_{n}_a")),
                    prospect_created(&format!("evt_stop_{n}_b")),
                ]});
                let sent = tokio::time::timeout(
                    Duration::from_secs(2),
                    api.http
                        .post(format!("{}/v1/events", api.base))
                        .bearer_auth(&tenant.key)
                        .json(&events)
                        .send(),
                )
                .await;
                if matches!(sent, Ok(Ok(r)) if r.status() == 202) {
                    accepted += 1;
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        accepted
    })
}

/// Checks how one stop ended: exit 0, no ERROR line in the output.
fn check_stop(what: &str, signal: &str, status: std::process::ExitStatus, log: &Path) {
    let output = std::fs::read_to_string(log).unwrap();
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        status.success() && errors.is_empty(),
        "{what} stopped by SIG{signal}: {status}, errors logged:\n{}",
        errors.join("\n")
    );
}

fn signal(i: usize) -> &'static str {
    if i % 2 == 0 {
        "TERM"
    } else {
        "INT"
    }
}

/// A pause of 200 to 700 ms, so that stops fall at different moments of the work.
fn a_moment(i: usize) -> Duration {
    Duration::from_millis(200 + (i as u64 * 137) % 500)
}

#[tokio::test]
async fn sigterm_and_sigint_stop_both_services_without_an_error_under_load() {
    let env = TestEnv::new("clean-stop").await;
    let deps = Deps::shared(&env.prefix);
    let receiver = TestReceiver::start().await;
    // Deliveries take a moment, so that some are in flight at every stop.
    receiver.set(Behaviour::Stall(Duration::from_millis(30)));
    let dir: PathBuf =
        std::env::temp_dir().join(format!("courier-{}", env.prefix.trim_end_matches('.')));
    std::fs::create_dir_all(&dir).unwrap();

    // One gateway and one worker stay up throughout; the others come and go.
    let gateway = ChildService::gateway(&deps, &[]).await;
    let worker = ChildService::worker(&deps, &[]);
    worker.wait_ready("/readyz").await;
    let api = gateway.api();
    let tenant = api.tenant("acme").await;
    for (name, throttling) in [("single", 0), ("batched", 3)] {
        api.webhook(
            &tenant,
            json!({"name": name, "url": receiver.url("/hook"), "events": ["*"],
                   "throttling": throttling}),
        )
        .await;
    }
    let targets = Arc::new(Mutex::new(vec![api.clone()]));
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = send_events(
        targets.clone(),
        TenantHandle {
            id: tenant.id.clone(),
            key: tenant.key.clone(),
        },
        stop_load.clone(),
    );

    let workers = async {
        for i in 0..STOPS {
            let log = dir.join(format!("worker-{i}.log"));
            let worker = ChildService::worker_logging_to(&deps, &[], Some(&log));
            worker.wait_ready("/readyz").await;
            tokio::time::sleep(a_moment(i)).await;
            let (status, _) = worker.stop_with(signal(i)).await;
            check_stop("the worker", signal(i), status, &log);
        }
    };
    let gateways = async {
        for i in 0..STOPS {
            let log = dir.join(format!("gateway-{i}.log"));
            let gateway = ChildService::gateway_logging_to(&deps, &[], Some(&log)).await;
            targets.lock().unwrap().push(gateway.api());
            tokio::time::sleep(a_moment(i)).await;
            let (status, _) = gateway.stop_with(signal(i)).await;
            targets.lock().unwrap().truncate(1);
            check_stop("the gateway", signal(i), status, &log);
        }
    };
    tokio::join!(workers, gateways);

    stop_load.cancel();
    let accepted = load.await.unwrap();
    assert!(
        accepted > 100,
        "events flowed meanwhile ({accepted} requests)"
    );
    assert!(receiver.count() > 100, "deliveries ran meanwhile");
    let _ = std::fs::remove_dir_all(&dir);
    gateway.terminate().await;
    worker.terminate().await;
    receiver.stop();
    env.cleanup().await;
}
