//! Per-loop counters an embedder can read.

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
    /// TLS handshakes completed.
    pub tls_handshakes_ok: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshakes_failed: u64,
    /// `accept` calls that failed (out of descriptors, aborted connections...).
    pub accept_errors: u64,
}
