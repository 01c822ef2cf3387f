//! Serving an axum router over HTTP/1.1 with the limits a server facing untrusted
//! clients needs, which `axum::serve` does not have:
//!
//! - **headers**: a request's headers must arrive within `header_timeout` of the
//!   connection's opening, or of the first byte after it went idle; a client that
//!   sends nothing, or dribbles its headers (slowloris), is disconnected;
//! - **body**: a request's body must arrive within `body_timeout` of its headers;
//!   reading it fails with [`BodyTimeout`] after that (the gateway answers 408);
//! - **idle**: a kept-alive connection waits at most `idle_timeout` for its next
//!   request;
//! - **writes**: a response waits at most `write_timeout` for the client to take
//!   more of its bytes; a client that stops reading (a half-open connection, a
//!   stalled download) is disconnected rather than holding its request forever;
//! - **connections**: at most `max_connections` are open at once; further ones are
//!   not accepted (they wait in the listen backlog) until others close;
//! - **shutdown**: connections that are idle or still sending headers are closed at
//!   once, requests in progress may finish within `shutdown_grace`, then whatever
//!   remains is closed.
//!
//! The deadlines of a connection are kept by the task that drives it: it knows
//! from the socket when bytes arrive, and from the service when a request starts
//! and when its response has been sent.

use std::convert::Infallible;
use std::future::{poll_fn, Future as _};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::settings::parse_duration;

/// The limits of an HTTP server (the gateway's API, the worker's admin endpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct HttpSettings {
    /// Longest a client may take to send a request's headers, from the opening of
    /// the connection or its first byte after an idle wait; then the connection is
    /// closed.
    #[arg(long = "http-header-timeout", env = "COURIER_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Longest a client may take to send a request's body, from the end of its
    /// headers; then the request is answered 408.
    #[arg(long = "http-body-timeout", env = "COURIER_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Longest a kept-alive connection may wait for its next request. Keep it
    /// longer than the idle timeout of the load balancer in front, so that the
    /// balancer, not the server, closes idle connections.
    #[arg(long = "http-idle-timeout", env = "COURIER_HTTP_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Longest a response may wait for the client to take any more of its bytes
    /// (the socket's send buffer stays full); then the connection is closed. A
    /// client that stops reading, or vanished without closing, would otherwise
    /// hold its request, and what serves it, until shutdown.
    #[arg(long = "http-write-timeout", env = "COURIER_HTTP_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Most connections open at once. Further ones are not accepted until others
    /// close: they wait in the listen backlog (and are refused by the kernel once
    /// it is full).
    #[arg(long = "http-max-connections", env = "COURIER_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// On shutdown, how long requests in progress may take to finish; connections
    /// idle or still sending headers are closed at once.
    #[arg(long = "http-shutdown-grace", env = "COURIER_HTTP_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// The error of a request body that did not arrive within the body timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// Whether `error`, or an error it wraps, is a body timeout.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<BodyTimeout>() {
                return true;
            }
            current = e.source();
        }
        false
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then closes the
/// listener, lets requests in progress finish within the shutdown grace, and
/// returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(settings.max_connections as usize));
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    loop {
        // A connection is accepted only with a slot: beyond the cap, clients wait
        // in the backlog.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, settings) = (router.clone(), *settings);
        let (shutdown, force) = (shutdown.clone(), force.clone());
        connections.spawn(async move {
            connection(stream, router, settings, shutdown, force).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    let open = connections.len();
    if open > 0 {
        tracing::debug!(open, "waiting for requests in progress");
    }
    if tokio::time::timeout(settings.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            grace = ?settings.shutdown_grace,
            "closing connections whose requests did not finish within the shutdown grace"
        );
        force.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// An error of `accept`: one connection's trouble is skipped; running out of file
/// descriptors (or the like) waits a moment, as the connections being served
/// will free some.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Where a connection stands, for its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers (a new connection, or bytes after idling).
    Head { since: Instant },
    /// Requests in progress, their responses not yet sent in full.
    Busy { requests: usize },
    /// Every response sent; waiting for the next request.
    Idle { since: Instant },
}

/// A connection's phase, and since when its writes have been blocked (the
/// client takes none of the bytes sent), shared by its socket, its service and
/// its driver.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    write_blocked: Mutex<Option<Instant>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head {
                since: Instant::now(),
            }),
            write_blocked: Mutex::new(None),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *phase = change(*phase);
    }

    /// How a write went: blocked (pending) starts the write deadline, unless
    /// already started; any progress ends it.
    fn wrote<T>(&self, polled: Poll<T>) -> Poll<T> {
        let mut blocked = self.write_blocked.lock().unwrap_or_else(|e| e.into_inner());
        match polled {
            Poll::Pending => {
                blocked.get_or_insert_with(Instant::now);
            }
            Poll::Ready(_) => *blocked = None,
        }
        polled
    }

    fn write_blocked_since(&self) -> Option<Instant> {
        *self.write_blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived: an idle connection starts a request.
    fn read(&self) {
        self.update(|phase| match phase {
            Phase::Idle { .. } => Phase::Head {
                since: Instant::now(),
            },
            other => other,
        });
    }

    /// A request's headers are in; it is in progress until the guard drops.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.update(|phase| match phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
        RequestGuard(self.clone())
    }

    /// When the connection is to be closed unless something happens first.
    fn deadline(&self, settings: &HttpSettings) -> Option<Instant> {
        let phase = match self.phase() {
            Phase::Head { since } => Some(since + settings.header_timeout),
            Phase::Idle { since } => Some(since + settings.idle_timeout),
            Phase::Busy { .. } => None,
        };
        let write = self
            .write_blocked_since()
            .map(|since| since + settings.write_timeout);
        match (phase, write) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A request in progress: from its headers until its response is sent (or
/// abandoned).
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|phase| match phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }
}

/// The socket of a connection, telling its activity when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity
            .wrote(Pin::new(&mut this.stream).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity
            .wrote(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.activity
            .wrote(Pin::new(&mut this.stream).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How driving a connection ended.
enum Ended {
    /// The connection finished (the client closed it, or it failed).
    Done(hyper::Result<()>),
    /// Its header, idle or write deadline passed.
    Expired,
    /// Shutdown found it idle or still sending headers.
    NotBusy,
    /// The shutdown grace ended with a request still in progress.
    Forced,
}

/// Serves one connection, closing it when a deadline passes or shutdown asks.
async fn connection(
    stream: TcpStream,
    router: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = activity.begin();
            let request =
                request.map(|body| Body::new(DeadlineBody::new(body, settings.body_timeout)));
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
                Ok::<Response, Infallible>(response.map(|body| {
                    Body::new(Sent {
                        body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The deadlines are kept here, not by hyper, whose header timer would also
    // cut idle connections at the header timeout.
    builder.keep_alive(true).header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut shutdown_asked = pin!(shutdown.cancelled());
    let mut forced = pin!(force.cancelled());
    let mut draining = false;
    let mut timer = pin!(tokio::time::sleep_until(
        Instant::now() + settings.header_timeout
    ));
    let mut armed_for = None;
    let ended = poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Done(result));
        }
        if forced.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ended::Forced);
        }
        if !draining && shutdown_asked.as_mut().poll(cx).is_ready() {
            if !matches!(activity.phase(), Phase::Busy { .. }) {
                return Poll::Ready(Ended::NotBusy);
            }
            // Finish the requests in progress, then close.
            draining = true;
            conn.as_mut().graceful_shutdown();
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Done(result));
            }
        }
        match activity.deadline(&settings) {
            None => Poll::Pending,
            Some(deadline) => {
                if armed_for != Some(deadline) {
                    timer.as_mut().reset(deadline);
                    armed_for = Some(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Ended::Expired),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    })
    .await;
    match ended {
        Ended::Done(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ended::Expired => {
            tracing::debug!(phase = ?activity.phase(), "connection closed at its deadline")
        }
        Ended::Done(Ok(())) | Ended::NotBusy | Ended::Forced => {}
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    body: Incoming,
    timeout: Duration,
    deadline: Instant,
    /// Started on the first wait for data, so that a request without a body (or
    /// whose body is never read) costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that marks its request finished once it is sent (or dropped).
struct Sent {
    body: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_those_of_the_flags() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            http: HttpSettings,
        }
        let parsed = <Flags as clap::Parser>::try_parse_from(["x"]).map(|f| f.http);
        assert_eq!(parsed.ok(), Some(HttpSettings::default()));
    }

    #[test]
    fn a_body_timeout_is_found_inside_the_errors_that_wrap_it() {
        let inner: axum::BoxError = Box::new(BodyTimeout(Duration::from_secs(1)));
        let wrapped = axum::Error::new(inner);
        assert!(BodyTimeout::caused(&wrapped));
        assert!(!BodyTimeout::caused(&io::Error::other("other")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_waits_for_headers_then_works_then_idles() {
        let settings = HttpSettings {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            ..HttpSettings::default()
        };
        let opened = Instant::now();
        let activity = Arc::new(Activity::new());
        assert_eq!(
            activity.deadline(&settings),
            Some(opened + settings.header_timeout)
        );
        // Bytes of the headers do not move the deadline.
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&settings),
            Some(opened + settings.header_timeout)
        );
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.deadline(&settings), None);
        drop(first);
        assert_eq!(activity.deadline(&settings), None, "one still in progress");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(second);
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(&settings),
            Some(idle + settings.idle_timeout)
        );
        // The next request's first byte starts its header deadline.
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&settings),
            Some(Instant::now() + settings.header_timeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_stops_taking_has_a_write_deadline() {
        let settings = HttpSettings {
            write_timeout: Duration::from_secs(30),
            ..HttpSettings::default()
        };
        let activity = Arc::new(Activity::new());
        let _request = activity.begin();
        assert_eq!(activity.deadline(&settings), None, "a request in progress");
        let blocked = Instant::now();
        assert!(activity.wrote::<()>(Poll::Pending).is_pending());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(activity.wrote::<()>(Poll::Pending).is_pending());
        assert_eq!(
            activity.deadline(&settings),
            Some(blocked + settings.write_timeout),
            "from the first blocked write"
        );
        // Any progress ends it.
        assert!(activity.wrote(Poll::Ready(())).is_ready());
        assert_eq!(activity.deadline(&settings), None);
    }
}
