//! The gateway's HTTP server against clients that hold on to it: headers that do
//! not come, bodies that stall, connections left idle, more connections than the
//! cap, and all of these at shutdown. The gateway runs as its binary, configured
//! by environment; clients are raw TCP sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use courier_tests::raw_http::{closed_within, exchange, read_response, request};
use courier_tests::{prospect_created, ChildService, Deps, TestEnv};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

async fn gateway(env: &TestEnv, settings: &[(&str, &str)]) -> ChildService {
    ChildService::gateway(&Deps::shared(&env.prefix), settings).await
}

/// A connection that has sent `bytes` and then nothing.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Asserts the server closes `stream` between `not_before` and `within` after
/// `since`.
async fn assert_closed(
    what: &str,
    stream: &mut TcpStream,
    since: Instant,
    not_before: Duration,
    within: Duration,
) {
    let left = within.saturating_sub(since.elapsed());
    assert!(
        closed_within(stream, left).await,
        "{what}: still open {within:?} later"
    );
    let took = since.elapsed();
    assert!(
        took >= not_before,
        "{what}: closed after {took:?}, before its deadline"
    );
}

/// Writes `bytes` one at a time, `every` apart, until the connection breaks.
fn dribble(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// An ingest request's head with a body of `length` bytes to come.
fn ingest_head(key: &str, length: usize) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: courier.test\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn headers_that_do_not_arrive_in_time_are_cut_off() {
    let env = TestEnv::new("http-headers").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_HEADER_TIMEOUT", "1s"),
            ("COURIER_HTTP_IDLE_TIMEOUT", "60s"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut partial = sent(
        gw.addr,
        b"GET /healthz HTTP/1.1\r\nHost: courier.test\r\nX-Slow: ",
    )
    .await;
    // A byte every 200 ms: it keeps sending, but not a whole head in time.
    let (mut slow_read, slow_write) = TcpStream::connect(gw.addr).await.unwrap().into_split();
    dribble(
        slow_write,
        b"GET /healthz HTTP/1.1\r\nHost: courier.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec(),
        Duration::from_millis(200),
    );
    // Meanwhile ordinary requests are served.
    let ok = exchange(
        gw.addr,
        &request("GET", "/healthz", None, None, false),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ok.status, 200);

    let (at_least, at_most) = (Duration::from_millis(900), Duration::from_secs(6));
    assert_closed(
        "a silent connection",
        &mut silent,
        started,
        at_least,
        at_most,
    )
    .await;
    assert_closed("partial headers", &mut partial, started, at_least, at_most).await;
    let left = at_most.saturating_sub(started.elapsed());
    let cut = tokio::time::timeout(left, read_response_or_close(&mut slow_read)).await;
    assert!(
        matches!(cut, Ok(None)),
        "dribbled headers: cut off without an answer ({cut:?})"
    );

    gw.kill().await;
    env.cleanup().await;
}

/// Reads from a split connection until it closes (`None`) or answers.
async fn read_response_or_close(read: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    match read.read(&mut buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(buf[..n].to_vec()),
    }
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_within_the_body_deadline() {
    let env = TestEnv::new("http-body").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_BODY_TIMEOUT", "1s"),
            ("COURIER_HTTP_IDLE_TIMEOUT", "60s"),
        ],
    )
    .await;
    let tenant = gw.api().tenant("acme").await;
    let body = serde_json::to_vec(&prospect_created("stalled")).unwrap();

    // Half the body, then nothing; and the whole body a byte every 200 ms.
    let mut stalled = sent(gw.addr, &ingest_head(&tenant.key, body.len())).await;
    stalled.write_all(&body[..body.len() / 2]).await.unwrap();
    let started = Instant::now();
    let (mut dribbled_read, mut dribbled_write) =
        TcpStream::connect(gw.addr).await.unwrap().into_split();
    dribbled_write
        .write_all(&ingest_head(&tenant.key, body.len()))
        .await
        .unwrap();
    dribble(dribbled_write, body.clone(), Duration::from_millis(200));

    let answer = tokio::time::timeout(Duration::from_secs(6), read_response(&mut stalled))
        .await
        .expect("an answer within the body deadline")
        .expect("an answer, not a closed connection");
    let took = started.elapsed();
    assert_eq!(
        answer.status,
        408,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(answer.is_json_error());
    assert_eq!(answer.json()["error"]["type"], "request_timeout");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(closed_within(&mut stalled, Duration::from_secs(3)).await);

    let mut head = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(bytes) = read_response_or_close(&mut dribbled_read).await {
            head.extend(bytes);
        }
    })
    .await;
    assert!(answered.is_ok(), "the dribbled body was cut off in time");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");

    // Nothing of either request was accepted.
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 0);

    gw.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let env = TestEnv::new("http-idle").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_IDLE_TIMEOUT", "2s"),
            ("COURIER_HTTP_HEADER_TIMEOUT", "30s"),
        ],
    )
    .await;
    let healthz = request("GET", "/healthz", None, None, true);

    // A connection that keeps asking, more often than the idle timeout, stays.
    let mut busy = sent(gw.addr, &healthz).await;
    for _ in 0..8 {
        let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut busy))
            .await
            .unwrap()
            .expect("the connection stays open while it is used");
        assert_eq!(answer.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.write_all(&healthz).await.unwrap();
    }
    assert_eq!(read_response(&mut busy).await.map(|r| r.status), Some(200));
    let idle_since = Instant::now();
    assert_closed(
        "an idle connection",
        &mut busy,
        idle_since,
        Duration::from_millis(1800),
        Duration::from_secs(8),
    )
    .await;

    gw.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_responses_is_disconnected() {
    let env = TestEnv::new("http-write-stall").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_WRITE_TIMEOUT", "1s"),
            ("COURIER_HTTP_IDLE_TIMEOUT", "60s"),
        ],
    )
    .await;
    let document = request("GET", "/openapi.json", None, None, true);
    let mut one = sent(gw.addr, &document).await;
    let whole = tokio::time::timeout(Duration::from_secs(5), read_response(&mut one))
        .await
        .unwrap()
        .expect("a client that reads gets the document");
    assert_eq!(whole.status, 200);
    let size = whole.body.len();
    assert!(size > 50_000, "{size}");

    // Far more than the socket buffers hold, asked for at once and never read.
    let pipelined = 200;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gw.addr).await.unwrap();
    stalled
        .write_all(&document.repeat(pipelined))
        .await
        .unwrap();
    let stalled_since = Instant::now();
    // The client reads nothing for longer than the write deadline...
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...then finds the connection closed after what the buffers held, not every
    // response it asked for.
    let mut taken = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stalled, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => taken += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "still open {:?} after the client stopped reading ({taken} bytes taken)",
        stalled_since.elapsed()
    );
    assert!(
        taken < pipelined * size / 2,
        "{taken} bytes of {} arrived: the server waited for the reader",
        pipelined * size
    );

    // The server goes on serving others.
    let mut other = sent(gw.addr, &request("GET", "/healthz", None, None, true)).await;
    assert_eq!(read_response(&mut other).await.map(|r| r.status), Some(200));

    gw.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_served_once_others_close() {
    let env = TestEnv::new("http-cap").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_MAX_CONNECTIONS", "3"),
            ("COURIER_HTTP_IDLE_TIMEOUT", "60s"),
            ("COURIER_HTTP_HEADER_TIMEOUT", "60s"),
        ],
    )
    .await;
    let healthz = request("GET", "/healthz", None, None, true);
    // Three kept-alive connections, each served once and held open. (The readiness
    // probe's connection may still be closing: allow for it.)
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = sent(gw.addr, &healthz).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream))
            .await
            .expect("served within the cap")
            .unwrap();
        assert_eq!(answer.status, 200);
        held.push(stream);
    }
    // A fourth is connected by the kernel but not served...
    let mut fourth = sent(gw.addr, &healthz).await;
    let early = tokio::time::timeout(Duration::from_millis(1500), read_response(&mut fourth)).await;
    assert!(
        early.is_err(),
        "a connection beyond the cap was served at once: {early:?}"
    );
    // ...until one of the three closes.
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut fourth))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(answer.status, 200);

    gw.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_is_prompt_with_idle_and_half_open_connections() {
    let env = TestEnv::new("http-shutdown").await;
    let gw = gateway(
        &env,
        &[
            ("COURIER_HTTP_HEADER_TIMEOUT", "60s"),
            ("COURIER_HTTP_BODY_TIMEOUT", "60s"),
            ("COURIER_HTTP_IDLE_TIMEOUT", "60s"),
            ("COURIER_HTTP_SHUTDOWN_GRACE", "5s"),
        ],
    )
    .await;
    let tenant = gw.api().tenant("acme").await;
    let addr = gw.addr;

    let mut idle = sent(addr, &request("GET", "/healthz", None, None, true)).await;
    assert_eq!(read_response(&mut idle).await.map(|r| r.status), Some(200));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = sent(addr, b"GET /healthz HTTP/1.1\r\nHost: courier.test\r\n").await;
    let body = serde_json::to_vec(&prospect_created("in-flight")).unwrap();
    let mut finishing = sent(addr, &ingest_head(&tenant.key, body.len())).await;
    finishing.write_all(&body[..10]).await.unwrap();
    let mut stalled = sent(addr, &ingest_head(&tenant.key, body.len())).await;
    stalled.write_all(&body[..10]).await.unwrap();
    // Let the gateway take in both requests' heads.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    let exit =
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_secs(30), gw.terminate()).await },
        );
    // Idle and half-open connections are closed at once.
    for (what, stream) in [
        ("idle", &mut idle),
        ("silent", &mut silent),
        ("partial headers", &mut partial),
    ] {
        assert_closed(what, stream, asked, Duration::ZERO, Duration::from_secs(2)).await;
    }
    // A request in progress may finish within the grace...
    finishing.write_all(&body[10..]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(4), read_response(&mut finishing))
        .await
        .expect("the request in progress is answered")
        .unwrap();
    assert_eq!(
        answer.status,
        202,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    // ...one that does not is cut at its end, and the process exits.
    assert_closed(
        "a stalled request",
        &mut stalled,
        asked,
        Duration::from_millis(4500),
        Duration::from_secs(15),
    )
    .await;
    let (status, took) = exit
        .await
        .unwrap()
        .expect("the gateway exits within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    println!("exited {took:?} after SIGTERM");

    env.cleanup().await;
}
