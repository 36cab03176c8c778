//! The listeners of `echoloop serve`: each one bound (or adopted from systemd) in a
//! worker's loop, and the `listening` lines that say they are up. Kept apart from the
//! arguments, which only decide what to listen on.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use echoloop::net::Endpoint;
use echoloop::{Bound, Echo, EchoDatagram, EventLoop, ListenKind};

use super::metrics::Metrics;
use super::server_loop::ServeState;
use crate::cli::common::CliError;

/// One listener to create.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) kind: &'static str,
    pub(crate) addr: Endpoint,
    /// Handed over by systemd rather than bound here (each worker serves a duplicate).
    pub(crate) fd: Option<Arc<OwnedFd>>,
}

/// Binds `specs` in `el`. Unix sockets cannot be shared between reactors, so only the
/// first worker (`with_unix`) binds them.
pub(crate) fn bind_all(
    el: &mut EventLoop<ServeState>,
    specs: &[Spec],
    tls: Option<&Arc<rustls::ServerConfig>>,
    with_unix: bool,
) -> Result<Vec<Option<Bound>>, CliError> {
    let mut bound = Vec::new();
    for s in specs {
        if let Some(fd) = &s.fd {
            bound.push(Some(adopt(el, s.kind, fd, tls)?));
            continue;
        }
        let b = match (s.kind, &s.addr) {
            ("tcp", a) => Some(el.listen(a, ListenKind::Tcp, || Box::new(Echo))?),
            ("tls", a) => {
                // plan() only makes tls specs when a config was loaded.
                let cfg = tls.ok_or("--tls needs --cert and --key")?;
                Some(el.listen(a, ListenKind::Tls(Arc::clone(cfg)), || Box::new(Echo))?)
            }
            ("udp", Endpoint::Inet(a)) => Some(el.bind_udp(*a, Box::new(EchoDatagram))?),
            ("unix", a) if with_unix => Some(el.listen(a, ListenKind::Unix, || Box::new(Echo))?),
            ("unix-dgram", Endpoint::Unix(n)) if with_unix => {
                Some(el.bind_unix_datagram(n, Box::new(EchoDatagram))?)
            }
            // One metrics listener for the whole server, on the first worker. Its scrapes
            // are not echo connections: not in the statistics, not under the limit.
            ("metrics", a) if with_unix => {
                let b = el.listen(a, ListenKind::Tcp, || Box::new(Metrics::default()))?;
                el.count_in_stats(b.id, false)?;
                Some(b)
            }
            _ => None,
        };
        if let (Some(b), true) = (&b, el.state().proxy && takes_proxy_header(s.kind)) {
            el.expect_proxy_header(b.id, true)?;
        }
        if let Some(b) = &b {
            match s.kind {
                "metrics" => log::info!("serving metrics on http://{}/metrics", b.addr),
                kind => log::info!("serving {kind} echo on {}", b.addr),
            }
        }
        bound.push(b);
    }
    Ok(bound)
}

/// With `--proxy-protocol`, the listeners whose connections start with a PROXY header:
/// the echo stream listeners (a load balancer speaks to them), never datagrams or metrics.
fn takes_proxy_header(kind: &str) -> bool {
    matches!(kind, "tcp" | "tls" | "unix")
}

/// Serves a socket systemd handed over (a duplicate of it: each worker has its own).
fn adopt(
    el: &mut EventLoop<ServeState>,
    kind: &str,
    fd: &OwnedFd,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Bound, CliError> {
    let fd = fd.try_clone()?;
    let proxy = el.state().proxy && takes_proxy_header(kind);
    let b = match kind {
        "tcp" => el.adopt_listener(fd, ListenKind::Tcp, || Box::new(Echo))?,
        "unix" => el.adopt_listener(fd, ListenKind::Unix, || Box::new(Echo))?,
        "tls" => {
            let cfg = tls.ok_or("a socket named tls needs --cert and --key")?;
            el.adopt_listener(fd, ListenKind::Tls(Arc::clone(cfg)), || Box::new(Echo))?
        }
        _ => el.adopt_datagram(fd, Box::new(EchoDatagram))?,
    };
    if proxy {
        el.expect_proxy_header(b.id, true)?;
    }
    log::info!("serving {kind} echo on {} (socket activation)", b.addr);
    Ok(b)
}

/// Prints one `listening <kind> <address>` line per listener, then flushes: tests and
/// scripts wait for these lines instead of sleeping.
pub(crate) fn announce(specs: &[Spec], bound: &[Option<Bound>]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for (s, b) in specs.iter().zip(bound) {
        if let Some(b) = b {
            writeln!(out, "listening {} {}", s.kind, b.addr)?;
        }
    }
    out.flush()?;
    Ok(())
}
