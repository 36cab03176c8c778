//! Per-loop counters an embedder can read: totals, closes by reason, traffic by transport.

use crate::conn::CloseReason;

/// Counters of one event loop, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Stream connections open now.
    pub connections_open: u64,
    /// Connections accepted from listeners.
    pub accepted: u64,
    /// Outgoing connections that completed their connect.
    pub connected: u64,
    /// Outgoing connects that failed or timed out.
    pub connect_failures: u64,
    /// Connections closed, for any reason.
    pub closed: u64,
    /// Connections accepted and closed at once because `max_connections` was reached.
    pub rejected: u64,
    /// Stream bytes read from sockets (ciphertext for TLS).
    pub bytes_in: u64,
    /// Stream bytes written to sockets (ciphertext for TLS).
    pub bytes_out: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams dropped: queue full, send error, or a sender with no address.
    pub datagrams_dropped: u64,
    /// UDP datagrams refused unread because their source port is in
    /// [`crate::Config::udp_drop_ports`] (loop-prone services).
    pub datagrams_refused: u64,
    /// TLS handshakes completed.
    pub tls_handshakes_ok: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshakes_failed: u64,
    /// `accept` calls that failed (out of descriptors, aborted connections...).
    pub accept_errors: u64,
    /// Connections whose PROXY protocol header was read.
    pub proxied: u64,
    /// Write system calls on stream sockets. Against messages sent, it shows how output
    /// coalesces: what many callbacks send to one connection in a turn goes in one write.
    pub write_calls: u64,
    /// Connections closed, by why.
    pub closed_by: ClosedBy,
    /// Bytes and datagrams in each direction, by transport.
    pub traffic: ByTransport,
}

impl Stats {
    /// Stream bytes read on a connection of transport `t`.
    pub(crate) fn stream_in(&mut self, t: Transport, n: usize) {
        self.bytes_in += n as u64;
        self.traffic.get_mut(t).bytes_in += n as u64;
    }

    /// Stream bytes written.
    pub(crate) fn stream_out(&mut self, t: Transport, n: usize) {
        self.bytes_out += n as u64;
        self.traffic.get_mut(t).bytes_out += n as u64;
    }

    /// Datagrams received, `bytes` in all.
    pub(crate) fn dgram_in(&mut self, t: Transport, count: u64, bytes: usize) {
        self.datagrams_in += count;
        let tr = self.traffic.get_mut(t);
        tr.datagrams_in += count;
        tr.bytes_in += bytes as u64;
    }

    /// Datagrams sent, `bytes` in all.
    pub(crate) fn dgram_out(&mut self, t: Transport, count: u64, bytes: usize) {
        self.datagrams_out += count;
        let tr = self.traffic.get_mut(t);
        tr.datagrams_out += count;
        tr.bytes_out += bytes as u64;
    }

    /// The sum of two loops' counters (the workers of one server).
    pub fn merged(mut self, o: &Stats) -> Stats {
        self.connections_open += o.connections_open;
        self.accepted += o.accepted;
        self.connected += o.connected;
        self.connect_failures += o.connect_failures;
        self.closed += o.closed;
        self.rejected += o.rejected;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.datagrams_dropped += o.datagrams_dropped;
        self.datagrams_refused += o.datagrams_refused;
        self.tls_handshakes_ok += o.tls_handshakes_ok;
        self.tls_handshakes_failed += o.tls_handshakes_failed;
        self.accept_errors += o.accept_errors;
        self.proxied += o.proxied;
        for (a, b) in self.closed_by.iter_mut().zip(o.closed_by.iter()) {
            *a.1 += b.1;
        }
        for (a, b) in self.traffic.iter_mut().zip(o.traffic.iter()) {
            a.1.bytes_in += b.1.bytes_in;
            a.1.bytes_out += b.1.bytes_out;
            a.1.datagrams_in += b.1.datagrams_in;
            a.1.datagrams_out += b.1.datagrams_out;
        }
        self
    }
}

/// Connections closed, by reason (see [`CloseReason`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedBy {
    /// Both sides finished: [`CloseReason::Done`].
    pub done: u64,
    /// [`CloseReason::Aborted`].
    pub aborted: u64,
    /// An I/O error (a reset, a broken pipe): [`CloseReason::Io`].
    pub io: u64,
    /// [`CloseReason::ConnectFailed`] and [`CloseReason::ConnectTimeout`].
    pub connect: u64,
    /// [`CloseReason::Tls`] and [`CloseReason::HandshakeTimeout`].
    pub tls: u64,
    /// [`CloseReason::IdleTimeout`].
    pub idle_timeout: u64,
    /// [`CloseReason::CloseTimeout`].
    pub close_timeout: u64,
    /// [`CloseReason::Shutdown`].
    pub shutdown: u64,
    /// [`CloseReason::BadProxyHeader`].
    pub bad_proxy_header: u64,
}

impl ClosedBy {
    /// Counts one close.
    pub(crate) fn count(&mut self, r: &CloseReason) {
        *match r {
            CloseReason::Done => &mut self.done,
            CloseReason::Aborted => &mut self.aborted,
            CloseReason::Io(_) => &mut self.io,
            CloseReason::ConnectFailed(_) | CloseReason::ConnectTimeout => &mut self.connect,
            CloseReason::Tls(_) | CloseReason::HandshakeTimeout => &mut self.tls,
            CloseReason::IdleTimeout => &mut self.idle_timeout,
            CloseReason::CloseTimeout => &mut self.close_timeout,
            CloseReason::Shutdown => &mut self.shutdown,
            CloseReason::BadProxyHeader(_) => &mut self.bad_proxy_header,
        } += 1;
    }

    /// `(name, count)` for each reason, as metrics label them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &u64)> {
        [
            ("done", &self.done),
            ("aborted", &self.aborted),
            ("io", &self.io),
            ("connect", &self.connect),
            ("tls", &self.tls),
            ("idle_timeout", &self.idle_timeout),
            ("close_timeout", &self.close_timeout),
            ("shutdown", &self.shutdown),
            ("bad_proxy_header", &self.bad_proxy_header),
        ]
        .into_iter()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut u64)> {
        [
            ("done", &mut self.done),
            ("aborted", &mut self.aborted),
            ("io", &mut self.io),
            ("connect", &mut self.connect),
            ("tls", &mut self.tls),
            ("idle_timeout", &mut self.idle_timeout),
            ("close_timeout", &mut self.close_timeout),
            ("shutdown", &mut self.shutdown),
            ("bad_proxy_header", &mut self.bad_proxy_header),
        ]
        .into_iter()
    }
}

/// The transports a loop serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// Unix stream.
    Unix,
    /// UDP.
    Udp,
    /// Unix datagram.
    UnixDgram,
}

impl Transport {
    /// The name metrics and logs use: `tcp`, `tls`, `unix`, `udp`, `unix-dgram`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Unix => "unix",
            Transport::Udp => "udp",
            Transport::UnixDgram => "unix-dgram",
        }
    }

    /// A byte stream (TCP, TLS, Unix stream) rather than datagrams.
    pub fn is_stream(self) -> bool {
        !self.is_datagram()
    }

    /// Datagrams (UDP, Unix datagram).
    pub fn is_datagram(self) -> bool {
        matches!(self, Transport::Udp | Transport::UnixDgram)
    }

    /// Addressed by IP and port (not a Unix socket name).
    pub fn is_ip(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls | Transport::Udp)
    }
}

/// Traffic in each direction on one transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Bytes read (ciphertext for TLS; datagram payloads for datagram sockets).
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Datagrams received (datagram transports only).
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
}

/// [`Traffic`] for every transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ByTransport {
    /// Plain TCP.
    pub tcp: Traffic,
    /// TLS over TCP.
    pub tls: Traffic,
    /// Unix stream.
    pub unix: Traffic,
    /// UDP.
    pub udp: Traffic,
    /// Unix datagram.
    pub unix_dgram: Traffic,
}

impl ByTransport {
    /// One transport's traffic.
    pub fn get(&self, t: Transport) -> &Traffic {
        match t {
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
            Transport::Unix => &self.unix,
            Transport::Udp => &self.udp,
            Transport::UnixDgram => &self.unix_dgram,
        }
    }

    pub(crate) fn get_mut(&mut self, t: Transport) -> &mut Traffic {
        match t {
            Transport::Tcp => &mut self.tcp,
            Transport::Tls => &mut self.tls,
            Transport::Unix => &mut self.unix,
            Transport::Udp => &mut self.udp,
            Transport::UnixDgram => &mut self.unix_dgram,
        }
    }

    /// `(transport, traffic)` for each.
    pub fn iter(&self) -> impl Iterator<Item = (Transport, &Traffic)> {
        [
            (Transport::Tcp, &self.tcp),
            (Transport::Tls, &self.tls),
            (Transport::Unix, &self.unix),
            (Transport::Udp, &self.udp),
            (Transport::UnixDgram, &self.unix_dgram),
        ]
        .into_iter()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (Transport, &mut Traffic)> {
        [
            (Transport::Tcp, &mut self.tcp),
            (Transport::Tls, &mut self.tls),
            (Transport::Unix, &mut self.unix),
            (Transport::Udp, &mut self.udp),
            (Transport::UnixDgram, &mut self.unix_dgram),
        ]
        .into_iter()
    }
}
