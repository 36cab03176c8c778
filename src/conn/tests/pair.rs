//! `Pair`: two connections joined by an in-memory pipe, with a clock the test moves.
//!
//! No sockets: each direction of the pipe is a byte queue of a capacity the test sets
//! (1 byte to 64 KiB), standing for the kernel's buffers. A write takes what fits and
//! "would block" on the rest; a read takes what is queued; a FIN is queued behind the
//! bytes; a reset throws away what is in flight. Each side runs a tiny driver that does
//! what the reactor's does — queue the application's output when its callback returns,
//! transmit, shut down, read until the pipe is empty or reading is paused — and an
//! application (`App`) that answers events with actions.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::super::{CloseReason, Connection, Event, Limits, Session, State, Teardown};
use crate::sendbuf::BufPool;
use crate::tls::TlsSession;

/// What an application does in answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    Send(Vec<u8>),
    ShutdownWrite,
    Close,
    Abort,
    Pause,
    Resume,
}

/// What an application was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The PROXY header's client address (`None`: it named none).
    Proxied(Option<std::net::SocketAddr>),
    Open,
    Data(usize),
    Drained,
    PeerClosed,
    Closed(String),
}

/// An application on one side: answers each event with actions.
pub(crate) trait App {
    fn on_event(&mut self, ev: &Heard, data: &[u8]) -> Vec<Act>;
}

/// Echoes every byte; closes when the peer half-closes (the default `on_peer_closed`).
pub(crate) struct EchoApp;

impl App for EchoApp {
    fn on_event(&mut self, ev: &Heard, data: &[u8]) -> Vec<Act> {
        match ev {
            Heard::Data(_) => vec![Act::Send(data.to_vec())],
            Heard::PeerClosed => vec![Act::Close],
            _ => Vec::new(),
        }
    }
}

/// Does nothing on its own: the test acts for it.
pub(crate) struct Quiet;

impl App for Quiet {
    fn on_event(&mut self, ev: &Heard, _: &[u8]) -> Vec<Act> {
        match ev {
            Heard::PeerClosed => vec![Act::Close],
            _ => Vec::new(),
        }
    }
}

/// Does nothing at all, not even close when the peer does.
pub(crate) struct Deaf;

impl App for Deaf {
    fn on_event(&mut self, _: &Heard, _: &[u8]) -> Vec<Act> {
        Vec::new()
    }
}

/// One direction of the pipe: bytes in flight toward a side.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    pub(crate) bytes: VecDeque<u8>,
    /// The writer shut its side: EOF after the bytes.
    pub(crate) fin: bool,
    /// The writer reset the connection: the reader gets an error.
    pub(crate) reset: bool,
}

/// One endpoint: its connection, its application, and what it saw.
pub(crate) struct Side {
    pub(crate) conn: Connection,
    app: Box<dyn App>,
    /// Pipe toward this side (what it reads).
    pub(crate) inbox: Pipe,
    pub(crate) received: Vec<u8>,
    pub(crate) heard: Vec<Heard>,
    /// Every `Closed` reason (exactly one expected, once closed).
    pub(crate) closes: Vec<String>,
    /// The EOF in the inbox has been handed to the connection.
    eof_seen: bool,
    /// The peer's reset has been handed to the connection.
    reset_seen: bool,
    /// The connection was released (its "socket" closed), and how.
    pub(crate) released: Option<Teardown>,
    /// Largest send buffer seen, for the "no buffer past its bound" invariant.
    pub(crate) max_owed: usize,
    /// Application output waiting for the end of the callback (the driver's staging).
    staged: Vec<u8>,
    /// Spare output buffers, as the loop lends them.
    pool: BufPool,
}

impl Side {
    fn new(conn: Connection, app: Box<dyn App>) -> Side {
        Side {
            conn,
            app,
            inbox: Pipe::default(),
            received: Vec::new(),
            heard: Vec::new(),
            closes: Vec::new(),
            eof_seen: false,
            reset_seen: false,
            released: None,
            max_owed: 0,
            staged: Vec::new(),
            pool: BufPool::default(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.conn.state() == State::Closed
    }
}

/// Which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    Client,
    Server,
}

/// Two connections joined by a pipe.
pub(crate) struct Pair {
    pub(crate) client: Side,
    pub(crate) server: Side,
    pub(crate) now: Instant,
    /// The server's limits (the loop's).
    pub(crate) limits: Limits,
    /// The client's: the same, except that its reading never pauses for its own output
    /// and it has no idle timeout (tests of the idle timeout are about the server).
    /// A client that stopped reading while it owed an echo server more than the mark
    /// would deadlock with it (each waits for the other to read), which is the load
    /// generator's business to avoid, not the state machine's.
    pub(crate) client_limits: Limits,
    /// Bytes each direction of the pipe holds.
    pub(crate) pipe_capacity: usize,
    plain: Vec<u8>,
}

/// Limits small enough for tests to reach: marks of 4 KiB / 1 KiB.
pub(crate) fn test_limits() -> Limits {
    Limits {
        high_water: 4096,
        low_water: 1024,
        idle_timeout: None,
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
    }
}

/// Server and client TLS configurations for `localhost`, made once per test binary.
pub(crate) fn tls_configs() -> &'static (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let cert_der = CertificateDer::from(cert.der().to_vec());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    })
}

/// What runs over the pipe: bytes as the application sent them, or TLS records.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wire {
    Plain,
    Tls,
}

impl Wire {
    /// Both, for tests that must hold either way.
    pub(crate) const BOTH: [Wire; 2] = [Wire::Plain, Wire::Tls];
}

/// How a [`Pair`] is built: how much each direction of the pipe holds, what runs over
/// it, and the server's limits.
#[derive(Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) pipe_capacity: usize,
    pub(crate) wire: Wire,
    pub(crate) limits: Limits,
}

impl Setup {
    /// Plain bytes, the test limits.
    pub(crate) fn plain(pipe_capacity: usize) -> Setup {
        Setup {
            pipe_capacity,
            wire: Wire::Plain,
            limits: test_limits(),
        }
    }

    /// TLS, the test limits.
    pub(crate) fn tls(pipe_capacity: usize) -> Setup {
        Setup {
            wire: Wire::Tls,
            ..Setup::plain(pipe_capacity)
        }
    }

    /// The same with other limits.
    pub(crate) fn with_limits(self, limits: Limits) -> Setup {
        Setup { limits, ..self }
    }
}

impl Pair {
    /// A plain pair: the server accepted, the client connected.
    pub(crate) fn plain(client: Box<dyn App>, server: Box<dyn App>, pipe_capacity: usize) -> Pair {
        Pair::new(client, server, Setup::plain(pipe_capacity))
    }

    /// A TLS pair; the handshake runs through the pipe like everything else.
    pub(crate) fn tls(client: Box<dyn App>, server: Box<dyn App>, pipe_capacity: usize) -> Pair {
        Pair::new(client, server, Setup::tls(pipe_capacity))
    }

    /// A pair as `setup` describes it.
    pub(crate) fn new(client: Box<dyn App>, server: Box<dyn App>, setup: Setup) -> Pair {
        let tls = setup.wire == Wire::Tls;
        Pair::build(client, server, setup.pipe_capacity, tls, setup.limits, None)
    }

    /// A pair whose server sits behind a load balancer: `header` (a PROXY protocol
    /// header, or whatever the test wants to try) reaches it before the client's bytes.
    pub(crate) fn behind_balancer(
        client: Box<dyn App>,
        server: Box<dyn App>,
        pipe_capacity: usize,
        tls: bool,
        header: &[u8],
    ) -> Pair {
        Pair::build(
            client,
            server,
            pipe_capacity,
            tls,
            test_limits(),
            Some(header),
        )
    }

    fn build(
        client: Box<dyn App>,
        server: Box<dyn App>,
        pipe_capacity: usize,
        tls: bool,
        limits: Limits,
        header: Option<&[u8]>,
    ) -> Pair {
        let now = Instant::now();
        let (server_session, client_session) = if tls {
            let (s, c) = tls_configs();
            let name = ServerName::try_from("localhost").expect("name");
            (
                Session::Tls(Box::new(TlsSession::server(s).expect("server session"))),
                Session::Tls(Box::new(
                    TlsSession::client(c, name).expect("client session"),
                )),
            )
        } else {
            (Session::Plain, Session::Plain)
        };
        let client_limits = Limits {
            high_water: usize::MAX,
            low_water: usize::MAX,
            idle_timeout: None,
            ..limits
        };
        let mut c = Connection::connecting(client_session, now, None);
        c.handle_connected(now, &client_limits);
        let s = Connection::accepted(server_session, now, &limits, header.is_some());
        let mut pair = Pair {
            client: Side::new(c, client),
            server: Side::new(s, server),
            now,
            limits,
            client_limits,
            pipe_capacity: pipe_capacity.max(1),
            plain: Vec::new(),
        };
        // The balancer's header is in the pipe before anything the client sends.
        pair.server.inbox.bytes.extend(header.unwrap_or_default());
        pair.drive(Who::Client, &[]);
        pair.drive(Who::Server, &[]);
        pair
    }

    fn sides(&mut self, who: Who) -> (&mut Side, &mut Side) {
        match who {
            Who::Client => (&mut self.client, &mut self.server),
            Who::Server => (&mut self.server, &mut self.client),
        }
    }

    pub(crate) fn side(&mut self, who: Who) -> &mut Side {
        self.sides(who).0
    }

    fn limits_for(&self, who: Who) -> Limits {
        match who {
            Who::Client => self.client_limits,
            Who::Server => self.limits,
        }
    }

    /// The test acts for a side's application, as a callback outside any event would.
    pub(crate) fn act(&mut self, who: Who, acts: Vec<Act>) {
        self.apply(who, acts);
        self.commit(who);
        self.drive(who, &[]);
    }

    /// Moves the clock and lets deadlines fire.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d;
        for who in [Who::Client, Who::Server] {
            let now = self.now;
            let limits = self.limits_for(who);
            let side = self.side(who);
            if side.conn.poll_timeout().is_some_and(|at| at <= now) {
                side.conn.handle_timeout(now, &limits);
                self.drive(who, &[]);
            }
        }
    }

    /// Steps both sides until nothing moves (bounded).
    pub(crate) fn run(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step(Who::Client) & !self.step(Who::Server) {
                return;
            }
        }
        panic!("the pair never came to rest");
    }

    /// One read (and what follows) on one side; true if anything moved.
    pub(crate) fn step(&mut self, who: Who) -> bool {
        let now = self.now;
        let limits = self.limits_for(who);
        let mut moved = false;
        let (me, _) = self.sides(who);
        if me.released.is_some() {
            return false;
        }
        // A reset socket is writable too: the write then fails.
        let peer_gone = self.sides(who).1.released.is_some();
        let blocked = self.side(who).conn.is_write_blocked();
        if blocked && (self.peer_room(who) > 0 || peer_gone) {
            self.side(who).conn.handle_writable();
            self.drive(who, &[]);
            moved = true;
        }
        let me = self.side(who);
        // The kernel reports a reset (EPOLLERR) whether or not we read; the driver takes
        // the socket's error then.
        if me.inbox.reset && !me.reset_seen && !me.is_closed() {
            me.reset_seen = true;
            me.conn
                .handle_io_error(std::io::ErrorKind::ConnectionReset.into());
            self.drive(who, &[]);
            return true;
        }
        if !me.conn.wants_read() {
            return moved;
        }
        if !me.inbox.bytes.is_empty() {
            // A read takes what is queued, up to the reactor's 64 KiB buffer.
            let n = me.inbox.bytes.len().min(64 * 1024);
            let wire: Vec<u8> = me.inbox.bytes.drain(..n).collect();
            let mut plain = std::mem::take(&mut self.plain);
            let me = self.side(who);
            let data = me
                .conn
                .handle_input(now, &wire, &mut plain, &limits)
                .to_vec();
            self.plain = plain;
            self.drive(who, &data);
            return true;
        }
        if me.inbox.fin && !me.eof_seen {
            me.eof_seen = true;
            me.conn.handle_eof(now);
            self.drive(who, &[]);
            return true;
        }
        moved
    }

    /// Bytes the pipe toward the other side can still take.
    fn peer_room(&mut self, who: Who) -> usize {
        let cap = self.pipe_capacity;
        let (_, peer) = self.sides(who);
        cap.saturating_sub(peer.inbox.bytes.len())
    }

    fn apply(&mut self, who: Who, acts: Vec<Act>) {
        let now = self.now;
        let limits = self.limits_for(who);
        let me = self.side(who);
        for a in acts {
            // The contexts' rules: a send is accepted only while our side may send.
            let _ = match a {
                Act::Send(d) => me.conn.can_send().map(|()| me.staged.extend_from_slice(&d)),
                Act::ShutdownWrite => me.conn.shutdown_write(),
                Act::Close => me.conn.close(now, &limits),
                Act::Abort => me.conn.abort(),
                Act::Pause => me.conn.pause_reading(),
                Act::Resume => me.conn.resume_reading(),
            };
        }
    }

    /// The driver's commit: what the callback sent is queued, by the rule every driver
    /// shares; `drive` transmits it.
    fn commit(&mut self, who: Who) {
        let limits = self.limits_for(who);
        let me = self.side(who);
        let staged = std::mem::take(&mut me.staged);
        me.conn.queue(&staged, &limits, &mut me.pool);
    }

    /// The driver's `drive`: events to the application, output to the pipe, the FIN.
    fn drive(&mut self, who: Who, data: &[u8]) {
        let now = self.now;
        let limits = self.limits_for(who);
        for _ in 0..10_000 {
            let me = self.side(who);
            if let Some(ev) = me.conn.poll_event(data) {
                let heard = match ev {
                    Event::Proxied(h) => Heard::Proxied(h.source),
                    Event::Open => Heard::Open,
                    Event::Data(data) => {
                        me.received.extend_from_slice(data);
                        Heard::Data(data.len())
                    }
                    Event::Drained => Heard::Drained,
                    Event::PeerClosed => Heard::PeerClosed,
                    Event::Closed(reason) => Heard::Closed(reason_name(&reason)),
                };
                me.heard.push(heard.clone());
                if let Heard::Closed(r) = &heard {
                    me.closes.push(r.clone());
                    self.release(who);
                    return;
                }
                let acts = me.app.on_event(&heard, data);
                self.apply(who, acts);
                self.commit(who);
                continue;
            }
            let room = self.peer_room(who);
            let (me, peer) = self.sides(who);
            let bytes = me.conn.poll_transmit(&me.pool);
            if !bytes.is_empty() && peer.released.is_some() {
                // The peer's socket is gone: its kernel answers with a reset.
                me.conn
                    .handle_io_error(std::io::ErrorKind::BrokenPipe.into());
                continue;
            }
            if !bytes.is_empty() && room > 0 {
                let n = bytes.len().min(room);
                let blocked = n < bytes.len();
                peer.inbox.bytes.extend(&bytes[..n]);
                me.conn.handle_sent(now, n, blocked, &limits, &mut me.pool);
            } else if !bytes.is_empty() {
                me.conn.handle_sent(now, 0, true, &limits, &mut me.pool);
            }
            if me.conn.poll_shutdown(now, &limits) {
                peer.inbox.fin = true;
            }
            me.max_owed = me.max_owed.max(me.conn.pending_output());
            if !me.conn.has_events() {
                me.conn.poll_timeout_changed();
                return;
            }
        }
        panic!("a side never came to rest");
    }

    /// The "socket" is closed as the connection says.
    fn release(&mut self, who: Who) {
        let (me, peer) = self.sides(who);
        let teardown = me.conn.teardown();
        me.released = Some(teardown);
        match teardown {
            Teardown::Reset => {
                // RST: what was in flight toward the peer is lost, and it hears an error.
                peer.inbox.bytes.clear();
                peer.inbox.reset = true;
            }
            Teardown::Drop | Teardown::Flush => {
                if teardown == Teardown::Flush {
                    peer.inbox.bytes.extend(me.conn.unsent());
                }
                if me.inbox.bytes.is_empty() {
                    peer.inbox.fin = true;
                } else {
                    // Closing with unread input makes the kernel reset the connection.
                    peer.inbox.bytes.clear();
                    peer.inbox.reset = true;
                }
            }
        }
    }
}

/// A short name for a close reason, for assertions.
pub(crate) fn reason_name(r: &CloseReason) -> String {
    match r {
        CloseReason::Done => "done",
        CloseReason::Aborted => "aborted",
        CloseReason::Io(_) => "io",
        CloseReason::ConnectFailed(_) => "connect-failed",
        CloseReason::ConnectTimeout => "connect-timeout",
        CloseReason::Tls(_) => "tls",
        CloseReason::HandshakeTimeout => "handshake-timeout",
        CloseReason::IdleTimeout => "idle-timeout",
        CloseReason::CloseTimeout => "close-timeout",
        CloseReason::Shutdown => "shutdown",
        CloseReason::BadProxyHeader(_) => "bad-proxy-header",
    }
    .to_string()
}
