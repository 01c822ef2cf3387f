//! Support of the security tests: a resolver that maps names to chosen addresses,
//! a tiny forward proxy that counts what goes through it, and a dump of every value
//! a deployment keeps in Redis.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use courier_worker::guard::{Resolver, TargetResolver};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Resolves the names it was given to their addresses, and nothing else.
#[derive(Debug, Clone, Default)]
pub struct FixedResolver(HashMap<String, Vec<IpAddr>>);

impl FixedResolver {
    pub fn new<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in names {
            map.entry(name.to_owned())
                .or_default()
                .push(ip.parse().unwrap());
        }
        Self(map)
    }

    /// As the worker's resolver.
    pub fn shared(self) -> Resolver {
        Resolver::new(self)
    }
}

impl TargetResolver for FixedResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let found = self.0.get(host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown test name"))
        })
    }
}

/// A forward proxy on 127.0.0.1:0 for plain-http requests in absolute form and
/// for CONNECT tunnels; it records the target of each request. Every forwarded
/// request asks the origin to close the connection, so one request is one
/// connection and the count is exact.
#[derive(Clone)]
pub struct TestProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl TestProxy {
    pub async fn start() -> Self {
        Self::with_names([]).await
    }

    /// A proxy that resolves these names to these addresses itself (as a real
    /// proxy would with its own DNS).
    pub async fn with_names<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let names: Arc<HashMap<String, String>> = Arc::new(
            names
                .into_iter()
                .map(|(n, a)| (n.to_owned(), a.to_owned()))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (log, token) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        tokio::spawn(proxy_one(client, log.clone(), names.clone()));
                    }
                }
            }
        });
        Self { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The target of every request so far: `http://host:port/path` or the
    /// `host:port` of a tunnel.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn proxy_one(
    mut client: TcpStream,
    seen: Arc<Mutex<Vec<String>>>,
    names: Arc<HashMap<String, String>>,
) {
    let resolve = |host: &str| names.get(host).cloned().unwrap_or_else(|| host.to_owned());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    seen.lock().unwrap().push(target.to_owned());
    if method == "CONNECT" {
        let (host, port) = target.rsplit_once(':').unwrap_or((target, "443"));
        let Ok(mut upstream) = TcpStream::connect(format!("{}:{port}", resolve(host))).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    let Ok(url) = url::Url::parse(target) else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        return;
    };
    let authority = format!(
        "{}:{}",
        resolve(url.host_str().unwrap_or_default()),
        url.port_or_known_default().unwrap_or(80)
    );
    let Ok(mut upstream) = TcpStream::connect(&authority).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let version = parts.next().unwrap_or("HTTP/1.1");
    let mut forwarded = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if name != "connection" && name != "proxy-connection" && name != "proxy-authorization" {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    if upstream.write_all(forwarded.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Every value stored under `prefix` in the shared Redis (strings, hashes, lists,
/// sets, sorted sets, streams), keys included, as one text to search.
pub async fn redis_dump(prefix: &str) -> String {
    let mut out = String::new();
    for (key, value) in redis_entries(prefix).await {
        out.push_str(&key);
        out.push('\n');
        out.push_str(&value);
        out.push('\n');
    }
    out
}

/// Every key under `prefix` in the shared Redis with its value as text (members,
/// fields and entries one a line).
pub async fn redis_entries(prefix: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(crate::REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut entries = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut cmd = match kind.as_str() {
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "list" => redis::cmd("LRANGE"),
                "set" => redis::cmd("SMEMBERS"),
                "zset" => redis::cmd("ZRANGE"),
                "stream" => redis::cmd("XRANGE"),
                _ => continue,
            };
            cmd.arg(&key);
            match kind.as_str() {
                "list" | "zset" => {
                    cmd.arg(0).arg(-1);
                }
                "stream" => {
                    cmd.arg("-").arg("+");
                }
                _ => {}
            }
            let value: redis::Value = cmd.query_async(&mut conn).await.unwrap();
            let mut text = String::new();
            flatten(&value, &mut text);
            entries.push((key, text));
        }
        if next == 0 {
            return entries;
        }
        cursor = next;
    }
}

fn flatten(value: &redis::Value, out: &mut String) {
    use redis::Value as V;
    match value {
        V::BulkString(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        V::SimpleString(s) => out.push_str(s),
        V::VerbatimString { text, .. } => out.push_str(text),
        V::Array(items) | V::Set(items) => {
            for item in items {
                flatten(item, out);
                out.push('\n');
            }
        }
        V::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                out.push('\n');
                flatten(v, out);
                out.push('\n');
            }
        }
        other => out.push_str(&format!("{other:?}")),
    }
}
