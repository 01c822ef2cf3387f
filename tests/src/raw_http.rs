//! HTTP/1.1 by hand over TCP: for requests that ordinary clients refuse or
//! normalise (`..`, bytes that are not UTF-8 once percent-decoded) and for
//! connections a test keeps idle, half-open, or stalled mid-request.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether this is the API's error: a JSON body `{"error": {"type", "message",
    /// "details"}}` with a JSON content type.
    pub fn is_json_error(&self) -> bool {
        let error = &self.json()["error"];
        self.header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
            && error["type"].is_string()
            && error["message"].is_string()
            && error["details"].is_object()
    }
}

/// A request: `method target`, optional bearer token and JSON body, and
/// `Connection: close` unless `keep_alive`.
pub fn request(
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<&str>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: courier.test\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default().as_bytes());
    bytes
}

/// Connects, sends `request` and reads one response, all within `deadline`.
pub async fn exchange(addr: SocketAddr, request: &[u8], deadline: Duration) -> RawResponse {
    tokio::time::timeout(deadline, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_response(&mut stream)
            .await
            .expect("a response before the connection closed")
    })
    .await
    .unwrap_or_else(|_| panic!("no response within {deadline:?}"))
}

/// Reads one response (its body by `Content-Length`, chunks, or to the end of
/// the connection); `None` when the connection closes before a whole head.
pub async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if !read_more(stream, &mut buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if !read_more(stream, &mut rest).await {
                break;
            }
        }
        rest.truncate(len);
        rest
    } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let Some(line_end) = find(&rest, b"\r\n") else {
                if read_more(stream, &mut rest).await {
                    continue;
                }
                break;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if rest.len() < line_end + 2 + size + 2 {
                if read_more(stream, &mut rest).await {
                    continue;
                }
                break;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        while read_more(stream, &mut rest).await {}
        rest
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Whether the peer has closed the connection (or reset it) within `within`,
/// reading and dropping whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
