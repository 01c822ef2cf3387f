//! Where deliveries may connect: the target policy applied at connect time (SSRF
//! protection), and the optional egress proxy.
//!
//! Without a proxy the delivery client resolves host names itself, through
//! [`GuardedResolver`]: every address a name resolves to is checked against the
//! [`TargetPolicy`] and only allowed ones are handed to the connector, so a name
//! that resolves to an internal address (directly, or by DNS rebinding between a
//! check and the connection) is never connected to. IP-literal URLs skip DNS, so
//! [`Guard::preflight`] checks them before each request. Redirects are never
//! followed, so an endpoint cannot bounce a delivery elsewhere.
//!
//! With `COURIER_EGRESS_PROXY` every delivery goes through the proxy, which resolves
//! the target itself. The worker then resolves the target before each request and
//! refuses it if *any* of its addresses is refused. Between that check and the
//! proxy's own lookup the name may change (DNS rebinding), so the proxy should
//! enforce an egress policy of its own; the worker's check keeps honest mistakes
//! and plain internal names out. The proxy's own address is not subject to the
//! policy (it is the operator's choice, typically an internal address).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use courier_core::target::{Refusal, TargetPolicy};
use courier_core::webhook::WebhookUrl;
use futures::future::BoxFuture;

use crate::WorkerConfig;

/// Turns a host name into addresses. The worker uses the system's resolver; tests
/// put their own in [`WorkerConfig::resolver`] to map names to chosen addresses.
pub trait TargetResolver: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver, through tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl TargetResolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            let mut seen = HashSet::new();
            Ok(addrs
                .map(|a| a.ip())
                .filter(|ip| seen.insert(*ip))
                .collect())
        })
    }
}

/// A shareable [`TargetResolver`].
#[derive(Clone)]
pub struct Resolver(Arc<dyn TargetResolver>);

impl Resolver {
    pub fn new(resolver: impl TargetResolver + 'static) -> Self {
        Self(Arc::new(resolver))
    }

    pub fn system() -> Self {
        Self::new(SystemResolver)
    }

    pub async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.0.lookup(host).await
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// `COURIER_EGRESS_PROXY`: an http(s) proxy URL, possibly with credentials, which
/// are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(url::Url);

impl ProxyUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an http:// or https:// proxy URL".into());
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if !shown.username().is_empty() || shown.password().is_some() {
            let _ = shown.set_username("redacted");
            let _ = shown.set_password(None);
        }
        write!(f, "ProxyUrl({shown})")
    }
}

/// A delivery target the policy refuses, in words a tenant understands, e.g. "the
/// webhook's host resolves to 10.0.0.1, a private address".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl Refused {
    fn resolved(refusal: Refusal) -> Self {
        Self(format!("the webhook's host resolves to {refusal}"))
    }

    fn literal(refusal: Refusal) -> Self {
        Self(format!("the webhook's URL names {refusal}"))
    }

    fn loopback_name(host: &str) -> Self {
        Self(format!("the webhook's host {host} is a loopback name"))
    }

    pub fn words(&self) -> &str {
        &self.0
    }
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The policy refuses the target: a permanent failure.
    Refused(Refused),
    /// Behind a proxy, the target's name could not be resolved to be checked: a
    /// temporary failure, like any connection error.
    Unresolved,
}

/// What the delivery client needs to know about where it may connect.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    pub policy: TargetPolicy,
    pub resolver: Resolver,
    pub proxy: Option<ProxyUrl>,
}

impl Egress {
    /// From the worker's configuration: the profile's and operator's target policy
    /// (tests may override the loopback allowance and the resolver).
    pub fn from_config(config: &WorkerConfig) -> Self {
        let mut policy = config.shared.target_policy();
        if let Some(allow) = config.allow_loopback {
            policy.allow_loopback = allow;
        }
        Self {
            policy,
            resolver: config.resolver.clone().unwrap_or_default(),
            proxy: config.egress_proxy.clone(),
        }
    }
}

/// The checks a delivery goes through before and while connecting.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Arc<TargetPolicy>,
    resolver: Resolver,
    proxied: bool,
}

impl Guard {
    pub fn new(egress: &Egress) -> Self {
        Self {
            policy: Arc::new(egress.policy.clone()),
            resolver: egress.resolver.clone(),
            proxied: egress.proxy.is_some(),
        }
    }

    /// The resolver the client connects through when there is no proxy.
    pub fn connect_resolver(&self) -> GuardedResolver {
        GuardedResolver {
            policy: self.policy.clone(),
            resolver: self.resolver.clone(),
        }
    }

    /// Checks what can be checked before a request: an IP-literal URL (which skips
    /// DNS), a loopback name, and behind a proxy every address of the host.
    pub async fn preflight(&self, url: &WebhookUrl) -> Result<(), Blocked> {
        let Ok(parsed) = url::Url::parse(url.as_str()) else {
            return Ok(());
        };
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(name)) => {
                if self.policy.refuses_name(name) {
                    return Err(Blocked::Refused(Refused::loopback_name(name)));
                }
                if self.proxied {
                    return self.check_all(name).await;
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        self.policy
            .check(ip)
            .map_err(|r| Blocked::Refused(Refused::literal(r)))
    }

    async fn check_all(&self, host: &str) -> Result<(), Blocked> {
        let addrs = self
            .resolver
            .lookup(host)
            .await
            .map_err(|_| Blocked::Unresolved)?;
        if addrs.is_empty() {
            return Err(Blocked::Unresolved);
        }
        for ip in addrs {
            self.policy
                .check(ip)
                .map_err(|r| Blocked::Refused(Refused::resolved(r)))?;
        }
        Ok(())
    }
}

/// The delivery client's DNS resolver: resolves through the [`TargetResolver`] and
/// hands the connector only the addresses the policy allows; with none, the
/// connection fails with [`Refused`].
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
    resolver: Resolver,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (policy, resolver) = (self.policy.clone(), self.resolver.clone());
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolver.lookup(&host).await?;
            let mut refused = None;
            let mut allowed = Vec::with_capacity(addrs.len());
            for ip in addrs {
                match policy.check(ip) {
                    Ok(()) => allowed.push(SocketAddr::new(ip, 0)),
                    Err(r) => {
                        refused.get_or_insert(r);
                    }
                }
            }
            match (allowed.is_empty(), refused) {
                (false, _) => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
                (true, Some(r)) => Err(Box::new(Refused::resolved(r)) as BoxError),
                (true, None) => Err(Box::new(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                )) as BoxError),
            }
        })
    }
}

/// The [`Refused`] behind a failed request, if the policy refused its target.
pub fn refusal_of(error: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::HashMap;

    struct Fixed(HashMap<&'static str, Vec<IpAddr>>);

    impl TargetResolver for Fixed {
        fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
            let found = self.0.get(host).cloned();
            Box::pin(async move { found.ok_or_else(|| io::ErrorKind::NotFound.into()) })
        }
    }

    fn egress(proxied: bool) -> Egress {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        Egress {
            policy: TargetPolicy::default(),
            resolver: Resolver::new(Fixed(HashMap::from([
                ("internal.test", vec![ip("10.0.0.7")]),
                ("mixed.test", vec![ip("10.0.0.7"), ip("93.184.216.34")]),
                ("public.test", vec![ip("93.184.216.34")]),
            ]))),
            proxy: proxied.then(|| ProxyUrl::parse("http://proxy.internal:3128").unwrap()),
        }
    }

    /// A stored URL, as a gateway with another policy may have accepted it.
    fn url(s: &str) -> WebhookUrl {
        let anything = courier_core::webhook::UrlPolicy {
            allow_http: true,
            targets: TargetPolicy {
                allow_loopback: true,
                allowed: courier_core::target::parse_cidrs("0.0.0.0/0,::/0").unwrap(),
            },
        };
        WebhookUrl::parse(s, &anything).unwrap()
    }

    #[tokio::test]
    async fn ip_literals_and_loopback_names_are_refused_before_sending() {
        let guard = Guard::new(&egress(false));
        let refused = |words: &str| Err(Blocked::Refused(Refused(words.into())));
        assert_eq!(
            guard.preflight(&url("http://127.0.0.1:9000/x")).await,
            refused("the webhook's URL names 127.0.0.1, a loopback address")
        );
        assert_eq!(
            guard.preflight(&url("http://[::ffff:10.0.0.1]/x")).await,
            refused("the webhook's URL names 10.0.0.1, a private address")
        );
        assert_eq!(
            guard.preflight(&url("http://localhost:9000/x")).await,
            refused("the webhook's host localhost is a loopback name")
        );
        // Names are checked when connecting, not before, without a proxy.
        assert_eq!(
            guard.preflight(&url("http://internal.test/x")).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn behind_a_proxy_every_address_of_the_name_is_checked_first() {
        let guard = Guard::new(&egress(true));
        assert_eq!(
            guard.preflight(&url("http://mixed.test/x")).await,
            Err(Blocked::Refused(Refused(
                "the webhook's host resolves to 10.0.0.7, a private address".into()
            )))
        );
        assert_eq!(guard.preflight(&url("http://public.test/x")).await, Ok(()));
        assert_eq!(
            guard.preflight(&url("http://unknown.test/x")).await,
            Err(Blocked::Unresolved)
        );
    }

    #[tokio::test]
    async fn the_connect_resolver_keeps_only_allowed_addresses() {
        use reqwest::dns::Resolve as _;
        let resolver = Guard::new(&egress(false)).connect_resolver();
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
        let addrs: Vec<_> = resolver
            .resolve(name("mixed.test"))
            .await
            .unwrap()
            .collect();
        assert_eq!(
            addrs,
            vec!["93.184.216.34:0".parse::<SocketAddr>().unwrap()]
        );
        let Err(e) = resolver.resolve(name("internal.test")).await else {
            panic!("an internal-only name resolves to nothing");
        };
        assert_eq!(
            e.downcast_ref::<Refused>().map(Refused::words),
            Some("the webhook's host resolves to 10.0.0.7, a private address")
        );
    }

    #[test]
    fn proxy_credentials_are_not_printed() {
        let p = ProxyUrl::parse("http://user:hunter2@proxy:3128").unwrap();
        assert_eq!(format!("{p:?}"), "ProxyUrl(http://redacted@proxy:3128/)");
        assert!(ProxyUrl::parse("socks5://proxy:1080").is_err());
    }
}
