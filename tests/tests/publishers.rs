//! The publisher examples of docs/publishing.md (examples/publisher-python and
//! examples/publisher-rust) publish straight to `{prefix}courier.events`, and their
//! events are delivered.
//!
//! The Python example runs in a virtualenv under target/ with pika (created by its
//! run.sh on first use, from PyPI); the Rust example is built with the workspace's
//! target directory, so it reuses the compiled dependencies from the second run on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use courier_tests::{wait_until, Api, TestEnv, TestReceiver, AMQP_URL};
use serde_json::json;

/// A cold first run installs pika and compiles lapin; later runs take seconds.
const EXAMPLE_DEADLINE: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target directory: `CARGO_TARGET_DIR` when set, else `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

/// Runs an example to its end and returns its stdout; panics with its output when it
/// fails.
async fn run_example(name: &str, mut cmd: tokio::process::Command) -> String {
    cmd.current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(EXAMPLE_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the {name} example did not finish within {EXAMPLE_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("the {name} example could not start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the {name} example failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn python_example(prefix: &str, tenant: &str, id: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("examples/publisher-python/run.sh")
        .args([
            "--tenant",
            tenant,
            "--id",
            id,
            "--event-type",
            "EntityUpdated",
        ])
        .args([
            "--data",
            r#"{"objectId":"prospect_py","email":"py@example.com"}"#,
        ])
        .args(["--properties-updated", "email"])
        .env("COURIER_AMQP_URL", AMQP_URL)
        .env("COURIER_PREFIX", prefix)
        .env(
            "COURIER_PUBLISHER_VENV",
            target_dir().join("publisher-venv"),
        );
    cmd
}

fn rust_example(prefix: &str, tenant: &str, id: &str) -> tokio::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--manifest-path",
        "examples/publisher-rust/Cargo.toml",
        "--",
    ])
    .args(["--tenant", tenant, "--id", id])
    .args([
        "--data",
        r#"{"objectId":"prospect_rs","email":"rs@example.com"}"#,
    ])
    .env("CARGO_TARGET_DIR", target_dir())
    .env("COURIER_AMQP_URL", AMQP_URL)
    .env("COURIER_PREFIX", prefix);
    cmd
}

#[tokio::test]
async fn events_published_by_the_python_and_rust_examples_are_delivered() {
    let env = TestEnv::new("publishers").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    api.webhook(
        &tenant,
        json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"]}),
    )
    .await;

    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (py_id, rs_id) = (format!("evt_python_{run}"), format!("evt_rust_{run}"));
    let (py_out, rs_out) = tokio::join!(
        run_example("Python", python_example(&env.prefix, &tenant.id, &py_id)),
        run_example("Rust", rust_example(&env.prefix, &tenant.id, &rs_id)),
    );
    assert!(
        py_out.contains(&format!("accepted: event {py_id}")),
        "{py_out}"
    );
    assert!(
        rs_out.contains(&format!("accepted: event {rs_id}")),
        "{rs_out}"
    );

    let events = wait_until("both events delivered", Duration::from_secs(30), || async {
        let events: Vec<serde_json::Value> = receiver
            .received_on("/hook")
            .iter()
            .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
            .collect();
        (events.len() >= 2).then_some(events)
    })
    .await;
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["eventId"] == id)
            .unwrap_or_else(|| panic!("{id} was not delivered: {events:?}"))
            .clone()
    };
    let py = by_id(&py_id);
    assert_eq!(py["objectType"], "Prospect");
    assert_eq!(py["eventType"], "EntityUpdated");
    assert_eq!(py["data"]["email"], "py@example.com");
    assert_eq!(py["propertiesUpdated"], json!(["email"]));
    let rs = by_id(&rs_id);
    assert_eq!(rs["eventType"], "EntityCreated");
    assert_eq!(rs["data"]["email"], "rs@example.com");

    worker.wait_idle(2).await;
    assert_eq!(receiver.count(), 2, "each event is delivered once");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
