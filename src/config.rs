//! Settings: of a whole loop ([`Config`]), of one outgoing connection ([`ConnectOptions`]),
//! and of one listener ([`ListenKind`]).
//!
//! Kept apart from the loop so that the connection state machine and the handler
//! interface can read them without depending on the reactor.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// Settings of one event loop.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Stop reading a connection when this many bytes are owed to it.
    pub high_water: usize,
    /// Resume reading when the bytes owed fall to this.
    pub low_water: usize,
    /// At most this many bytes are read from one connection per turn, so one busy peer
    /// cannot starve the others.
    pub read_budget: usize,
    /// Connections beyond this are accepted and closed at once.
    pub max_connections: Option<usize>,
    /// Connections of listeners left out of the statistics and of `max_connections`
    /// (`EventLoop::count_in_stats`: a metrics or admin endpoint) beyond this are accepted
    /// and closed at once, so that a flood of them cannot take the descriptors the
    /// service itself needs.
    pub max_side_connections: usize,
    /// Close connections with no traffic for this long.
    pub idle_timeout: Option<Duration>,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Fairness for CPU-heavy work: each turn spends at most about this much on TLS
    /// handshake steps (at least one); steps beyond it wait for the next turns, so plain
    /// connections on the same loop are served in between (a signature with an RSA-2048
    /// key costs close to a millisecond). While other connections keep the loop busy, a
    /// turn that ran handshake steps is followed by as long without any, so they get at
    /// most half of its time. `Duration::ZERO` allows one step per turn; `Duration::MAX`
    /// runs every ready step at once.
    pub handshake_budget: Duration,
    /// How long a closing connection may go without traffic: while it sends what it owes,
    /// and then while it waits for the peer to finish. Past it the connection is closed,
    /// with a reset if output was still owed.
    pub close_timeout: Duration,
    /// Listen backlog (capped by the system at `net.core.somaxconn`).
    pub backlog: i32,
    /// Pause before accepting again after running out of descriptors.
    pub accept_backoff: Duration,
    /// Datagrams queued per socket while its send buffer is full.
    pub datagram_queue: usize,
    /// Bind IP sockets with `SO_REUSEPORT` (several loops sharing one address).
    pub reuse_port: bool,
    /// Echo large reads of plain TCP and Unix connections whose handler is a plain echo
    /// ([`crate::Handler::is_plain_echo`], as [`crate::Echo`]) without copying them
    /// through user space: socket → pipe → socket with `splice(2)`. On by default; it
    /// changes nothing else (backpressure, half-close, statistics).
    pub zero_copy_echo: bool,
    /// Idle strategy: after the last event, keep polling without sleeping for up to this
    /// long before blocking in `epoll_wait` (see [`crate::event_loop`], "Busy polling").
    /// `None`, the default, blocks at once.
    pub busy_poll: Option<Duration>,
    /// UDP datagrams from these source ports are dropped (and counted in
    /// [`crate::Stats::datagrams_refused`]) before any handler sees them. An echo server
    /// answering a datagram whose spoofed source is another echo (or chargen, daytime...)
    /// service would bounce it between the two forever (CVE-1999-0103); inetd drops
    /// those. Empty by default; [`Config::LOOP_PRONE_PORTS`] is the classic list.
    pub udp_drop_ports: Vec<u16>,
    /// Receives every decision the loop makes about its sockets (reads, partial writes,
    /// pauses, half-closes, resets…), as [`crate::trace::TraceEvent`]s: what
    /// `echoloop serve --trace` prints. `None` (the default) costs nothing; the same
    /// events also go to the `log` crate at trace level, with one target per area
    /// (`echoloop::stream`, `echoloop::accept`, `echoloop::tls`), when that level is
    /// enabled as the loop is made.
    pub trace: Option<crate::trace::Tracer>,
}

impl Config {
    /// Source ports of services that answer any datagram, plus port 0: echo 7, discard
    /// 9, daytime 13, qotd 17, chargen 19, time 37.
    pub const LOOP_PRONE_PORTS: [u16; 7] = [0, 7, 9, 13, 17, 19, 37];
}

impl Default for Config {
    fn default() -> Self {
        Config {
            high_water: 256 * 1024,
            low_water: 64 * 1024,
            read_budget: 256 * 1024,
            max_connections: None,
            max_side_connections: 64,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            handshake_budget: Duration::from_micros(250),
            close_timeout: Duration::from_secs(5),
            backlog: 4096,
            accept_backoff: Duration::from_millis(100),
            datagram_queue: 1024,
            reuse_port: false,
            zero_copy_echo: true,
            busy_poll: None,
            udp_drop_ports: Vec::new(),
            trace: None,
        }
    }
}

impl Config {
    /// Settings that would make the loop spin (a zero read budget never reads) or flap
    /// (resuming above the pause mark) are corrected rather than obeyed.
    pub(crate) fn sanitized(mut self) -> Config {
        self.read_budget = self.read_budget.max(1);
        self.low_water = self.low_water.min(self.high_water);
        self.datagram_queue = self.datagram_queue.max(1);
        // A window of nothing is no busy polling at all.
        self.busy_poll = self.busy_poll.filter(|w| !w.is_zero());
        self
    }
}

/// How to open an outgoing connection.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Speak TLS, verifying the server as `server_name`.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Give up if not connected (and, for TLS, handshaken) within this.
    pub timeout: Option<Duration>,
    /// Bind to this local address first (spreads many connections over source IPs).
    pub source: Option<std::net::IpAddr>,
}

impl ConnectOptions {
    /// Plain connection, no timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a connect (and handshake) timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Speaks TLS to a server that must prove it is `name`.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> Self {
        self.tls = Some((config, name));
        self
    }

    /// Binds to a local IP before connecting.
    pub fn source(mut self, ip: std::net::IpAddr) -> Self {
        self.source = Some(ip);
        self
    }
}

/// What kind of stream listener to add.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ListenKind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP with this server configuration.
    Tls(Arc<rustls::ServerConfig>),
    /// Unix stream socket.
    Unix,
}
