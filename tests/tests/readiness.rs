//! Readiness reports Redis's eviction policy: a Redis that may evict keys makes a
//! production deployment not ready (the dev profile only warns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_telemetry::Profile;
use courier_tests::{TestEnv, TestRedis};

#[tokio::test]
async fn an_evicting_redis_is_not_ready_in_production_and_tolerated_in_dev() {
    let env = TestEnv::new("evict").await;
    let redis = TestRedis::start(&["--maxmemory-policy", "allkeys-lru"]).await;
    let http = reqwest::Client::new();

    let mut dev = env.gateway_config();
    dev.shared.redis_url = redis.url();
    let mut production = dev.clone();
    production.shared.profile = Profile::Production;
    // Production requires the keys that encrypt webhook secrets at rest.
    let keys = courier_core::keyring::Keyring::generate_entry("k1");
    production.shared.secret_keys = Some(courier_core::keyring::Keyring::parse(&keys).unwrap());

    let gateway = env.start_gateway(dev).await;
    let r = http
        .get(format!("http://{}/readyz", gateway.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["redisEvictionPolicy"], "allkeys-lru");
    gateway.stop().await.unwrap();

    // start_gateway waits for readiness, which never comes: run it directly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let production_keys = production.shared.secret_keys.clone();
    let task = tokio::spawn(courier_gateway::run(production, listener, stop.clone()));
    let body: serde_json::Value = courier_tests::wait_until(
        "the gateway to answer",
        std::time::Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), format!("http://{addr}/readyz"));
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 503).then_some(r.json().await.ok()?)
            }
        },
    )
    .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["redis"], true);
    assert_eq!(body["redisEvictionPolicy"], "allkeys-lru");
    stop.cancel();
    task.await.unwrap().unwrap();

    let mut worker = env.worker_config();
    worker.shared.redis_url = redis.url();
    worker.shared.profile = Profile::Production;
    worker.shared.secret_keys = production_keys;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(courier_worker::run(worker, listener, stop.clone()));
    courier_tests::wait_until(
        "the worker to say not ready",
        std::time::Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), format!("http://{addr}/readyz"));
            async move { (http.get(&url).send().await.ok()?.status() == 503).then_some(()) }
        },
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    env.cleanup().await;
}
