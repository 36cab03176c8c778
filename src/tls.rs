//! TLS as a layer of a connection: rustls driven by hand.
//!
//! Teaches: TLS is a state machine between two byte streams. Ciphertext read from the
//! socket goes in (`read_tls`), `process_new_packets` runs the protocol, plaintext comes out
//! (`reader()`); the application's plaintext goes in (`writer()`) and ciphertext comes out
//! (`write_tls`), which we append to the connection's [`SendBuf`] so partial sends,
//! backpressure and half-close work exactly as for plain TCP. The session may want to write
//! when the application has nothing to say (handshake messages, alerts, session tickets,
//! `close_notify`), so the reactor asks for its output after every input.
//!
//! This module drives rustls connections; [`crate::tls_config`] builds their
//! configurations. Elsewhere rustls appears only as types in the public API (a server or
//! client configuration to pass in, the rustls error inside [`crate::CloseReason::Tls`]).
//! It uses the buffered API of rustls 0.23.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::sendbuf::SendBuf;

/// Cap on plaintext rustls may hold for us. Output is moved to our [`SendBuf`] at once, so
/// this only bounds what can pile up before the handshake finishes.
const RUSTLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Plaintext capacity a session keeps between sends: enough for a typical message
/// without an allocation each time, small beside the ~30 KiB rustls itself holds.
const STAGED_KEEP: usize = 16 * 1024;

/// One TLS session, client or server side.
pub(crate) struct TlsSession {
    conn: Connection,
    peer_closed: bool,
    /// Our `close_notify` is queued: it goes once, after all data.
    close_notify_sent: bool,
    /// Application plaintext not yet encrypted: everything sent until the connection next
    /// transmits is sealed in one go, so many small sends become few records.
    staged: Vec<u8>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

impl TlsSession {
    pub(crate) fn server(config: &Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        let conn = ServerConnection::new(Arc::clone(config))?;
        Ok(TlsSession::wrap(conn.into()))
    }

    pub(crate) fn client(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsSession, rustls::Error> {
        let conn = ClientConnection::new(Arc::clone(config), name)?;
        Ok(TlsSession::wrap(conn.into()))
    }

    fn wrap(mut conn: Connection) -> TlsSession {
        conn.set_buffer_limit(Some(RUSTLS_BUFFER_LIMIT));
        TlsSession {
            conn,
            peer_closed: false,
            close_notify_sent: false,
            staged: Vec::new(),
        }
    }

    /// Still negotiating: no application data flows yet.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The peer sent `close_notify`: it will send no more (TLS's half-close).
    pub(crate) fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Feeds ciphertext read from the socket; appends the plaintext it yields to `plain`.
    ///
    /// On error the session has queued an alert for the peer: call [`Self::poll_output`]
    /// and flush before closing, so the peer learns why.
    pub(crate) fn handle_ciphertext(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        while !input.is_empty() {
            let before = input.len();
            // `&[u8]` is a reader that advances itself: read_tls takes what it can buffer.
            // An `Other` error is rustls's backpressure ("received plaintext buffer full"):
            // not fatal, drain the plaintext below and feed the rest on the next turn.
            let read = self.conn.read_tls(&mut input);
            if let Err(e) = &read {
                if e.kind() != io::ErrorKind::Other {
                    return Err(rustls::Error::General(e.to_string()));
                }
            }
            let state = self.conn.process_new_packets()?;
            if state.plaintext_bytes_to_read() > 0 {
                self.drain_plaintext(plain)?;
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
                // Anything after close_notify is not for us.
                break;
            }
            if input.len() == before {
                // No progress: a backpressure error that draining did not cure is fatal,
                // anything else means rustls will read no more.
                return match read {
                    Err(e) => Err(rustls::Error::General(e.to_string())),
                    Ok(_) => Ok(()),
                };
            }
        }
        Ok(())
    }

    fn drain_plaintext(&mut self, plain: &mut Vec<u8>) -> Result<(), rustls::Error> {
        // read_to_end keeps what it read before stopping; WouldBlock just means "no more
        // plaintext for now", and Ok means close_notify was seen.
        match self.conn.reader().read_to_end(plain) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(rustls::Error::General(e.to_string())),
        }
    }

    /// Encrypts application data into `out` (what [`TlsSession::seal`] does with the
    /// staged plaintext).
    ///
    /// rustls's writer only copies into memory, so it fails only on a broken session; it
    /// answers `Ok(0)` when its buffer limit is reached, which is not an error: move its
    /// output to ours and go on. Before the handshake ends nothing can be encrypted, so
    /// nothing drains; the limit is lifted rather than lose the bytes (our backpressure
    /// bounds them). A writer that still takes nothing is an error, never a reason to loop.
    fn write_plaintext(&mut self, mut data: &[u8], out: &mut SendBuf) -> Result<(), rustls::Error> {
        let broken = |e: io::Error| rustls::Error::General(format!("TLS writer failed: {e}"));
        while !data.is_empty() {
            let mut n = self.conn.writer().write(data).map_err(broken)?;
            if n == 0 {
                let before = out.len();
                self.poll_output(out);
                if out.len() == before {
                    self.conn.set_buffer_limit(None);
                    n = self.conn.writer().write(data).map_err(broken)?;
                    self.conn.set_buffer_limit(Some(RUSTLS_BUFFER_LIMIT));
                    if n == 0 {
                        return Err(rustls::Error::General(
                            "TLS writer accepted no bytes".into(),
                        ));
                    }
                }
            }
            data = &data[n..];
        }
        self.poll_output(out);
        Ok(())
    }

    /// Keeps application plaintext for the next [`TlsSession::seal`].
    pub(crate) fn stage(&mut self, data: &[u8]) {
        self.staged.extend_from_slice(data);
    }

    /// Plaintext staged and not yet encrypted.
    pub(crate) fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Forgets the staged plaintext.
    pub(crate) fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Encrypts the staged plaintext into `out`.
    pub(crate) fn seal(&mut self, out: &mut SendBuf) -> Result<(), rustls::Error> {
        let staged = std::mem::take(&mut self.staged);
        let result = self.write_plaintext(&staged, out);
        self.staged = staged;
        self.staged.clear();
        if self.staged.capacity() > STAGED_KEEP {
            // One burst must not pin its size for the life of the connection.
            self.staged = Vec::new();
        }
        result
    }

    /// Moves every TLS record the session wants to send into `out`.
    pub(crate) fn poll_output(&mut self, out: &mut SendBuf) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out.vec_for_append()).is_err() {
                break;
            }
        }
    }

    /// Queues `close_notify` ("I will send no more") into `out`. rustls never sends it on
    /// its own; without it the peer cannot tell a clean end from a truncation attack.
    /// Calling it again does nothing.
    pub(crate) fn send_close_notify(&mut self, out: &mut SendBuf) {
        if self.close_notify_sent {
            return;
        }
        self.close_notify_sent = true;
        self.conn.send_close_notify();
        self.poll_output(out);
    }

    /// The negotiated protocol version, for logs.
    pub(crate) fn protocol(&self) -> Option<&'static str> {
        self.conn.protocol_version().and_then(|v| v.as_str())
    }

    /// The negotiated cipher suite, for traces.
    pub(crate) fn cipher(&self) -> Option<&'static str> {
        self.conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
    }

    /// The application protocol agreed by ALPN, if any.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }
}
