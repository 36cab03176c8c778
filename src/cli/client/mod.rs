//! `echoloop client`: sends messages and checks that each comes back unchanged, over TCP,
//! TLS, Unix streams, UDP and Unix datagrams.
//!
//! The client is two handlers on the library's own reactor, not a blocking program:
//!
//! * `StreamClient` (tcp, tls, unix) is a [`echoloop::Handler`]. The socket is connected without
//!   blocking (the loop completes the connect on writability and checks `SO_ERROR`), so a
//!   connect timeout is just a timer. A host name may resolve to several addresses: they
//!   are tried in turn, each with the connect timeout, the next connect being started from
//!   `on_close` of the failed one (like a careful `create_connection`). Once open it sends a
//!   message, collects the echo until all of its bytes are in (a stream has no message
//!   boundaries: the echo may come in any number of pieces), compares, and only then sends
//!   the next message. After the last one it half-closes and expects the server's EOF.
//!   `--timeout` (default 5 s) bounds the connect (TLS handshake included), each whole
//!   echo, and the wait for that EOF. The default is longer than the datagram one because a
//!   lost TCP SYN is retransmitted after 1 s: a 1 s connect timeout would fail on one loss.
//!
//!   Over TLS 1.3 the client's side of the handshake is over before the server has judged
//!   the client's certificate (its verdict, an alert, comes after our first message went
//!   out). So until the server has sent a byte, or closed cleanly, what would be printed
//!   is held back: a server that then refuses the handshake gets only the error, nothing
//!   reported as sent. The first message's `SENT` line therefore shows with its echo.
//! * `DgramClient` (udp, unix-dgram) is a [`echoloop::DatagramHandler`]. Each message is one
//!   datagram; if no matching reply comes within `--timeout` (default 1 s) it is sent again,
//!   up to `--retries` (default 3) more times, so a silent server is reported after about
//!   timeout × (retries + 1). The UDP socket is connected to the server (`connect(2)`
//!   sends nothing): the kernel then tells of an ICMP "port unreachable", and a port where
//!   nothing listens is reported as refused at once instead of after every retry. A UDP
//!   host name with several addresses (localhost is often `::1` and `127.0.0.1`) cannot
//!   be checked by a handshake: if the first message gets no answer at all from one
//!   address, or is refused there, it moves on to the next (on a new socket of that
//!   family), so a silent server is then reported after that time per address.
//!
//! **Stale replies.** Over datagrams a reply to an earlier attempt can arrive late, after
//! the message was resent or even after the next message was sent; the network may also
//! duplicate one. A reply is taken for the current message only if it comes from the
//! server's address (UDP) and its bytes are exactly the current message's; anything else is
//! counted as ignored and mentioned if the message finally fails. The payload is the user's
//! bytes with nothing added, so what this guarantees is: every accepted echo has the current
//! message's exact bytes, and a late echo of an earlier *different* message is never taken
//! for the current one. When two consecutive messages are identical, a late copy of the
//! first one's echo is indistinguishable from the second one's and may stand in for it.
//!
//! **Standard input** is read one line at a time, when the next message is due, so typing
//! lines by hand shows each echo at once and a long input is never held in memory. Reading
//! blocks the loop meanwhile, which is harmless: between two messages nothing is in flight
//! and no timer is armed. A line is whatever bytes precede its `\n` (or `\r\n`), UTF-8
//! or not: an echo tool sends bytes, and compares them byte for byte. The `SENT` and `RCVD`
//! lines carry the bytes as they are, as `nc` would print them. An empty line is an empty
//! message (over a stream it trivially echoes, over datagrams it is a real empty datagram).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::cli::common::{CliError, TlsClientArgs, Transport, TransportArg, host_of};
use crate::cli::units::parse_duration;
use echoloop::net::{Endpoint, PeerAddr, UnixName, resolve_all};
use echoloop::tls_config::{client_config, server_name};
use echoloop::{Config, ConnectOptions, EventLoop};

mod dgram;
mod exchange;
mod stream;

use dgram::{DgramClient, unspecified_like};
use exchange::{Common, Messages, Shared};
use stream::StreamClient;

/// Default `--timeout` for tcp, tls and unix: connect, each echo, and the final EOF.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--timeout` for udp and unix-dgram: the wait before a datagram is resent.
const DGRAM_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `--retries` for udp and unix-dgram.
const DGRAM_RETRIES: u32 = 3;
/// Largest `--timeout` accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Arguments of `echoloop client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Transport to use.
    #[arg(value_parser = TransportArg)]
    transport: Transport,
    // The help text is this comment as written: `[::1]` is an address, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// Server address: host:port (IPv6 as [::1]:port) for tcp, tls and udp; a path or
    /// @name (Linux abstract name) for unix and unix-dgram.
    addr: String,
    /// Send TEXT (repeatable, sent in order). Without it, each line of standard input is a
    /// message.
    #[arg(long = "message", short = 'm', value_name = "TEXT")]
    messages: Vec<OsString>,
    /// Streams: connect (and TLS handshake) timeout, time allowed for each whole echo and
    /// for the server's EOF at the end (default 5). Datagrams: wait before resending
    /// (default 1). Seconds, or 500ms, 2m...
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Datagrams only: resend an unanswered message up to N times (default 3).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    #[command(flatten)]
    tls: TlsClientArgs,
    /// Print every decision the loop makes on stderr (connected, read, partial write,
    /// eof, shutdown(write)…), each naming the guide's section that explains it.
    #[arg(long)]
    trace: bool,
}

/// Runs the client: exits 0 only if every message's echo arrived and matched.
pub fn run(args: ClientArgs) -> Result<ExitCode, CliError> {
    check_options(&args)?;
    let stream = args.transport.is_stream();
    let timeout = args.timeout.unwrap_or(if stream {
        STREAM_TIMEOUT
    } else {
        DGRAM_TIMEOUT
    });
    if timeout.is_zero() {
        return Err("--timeout must be greater than zero".into());
    }
    // Deadlines are `Instant + timeout`, which panics on overflow: keep it sane.
    if timeout > MAX_TIMEOUT {
        return Err("--timeout must be at most 24h".into());
    }
    let messages = if args.messages.is_empty() {
        Messages::from_reader(io::stdin().lock())
    } else {
        // The bytes as given: an argument need not be UTF-8 any more than a line is.
        Messages::from_list(
            args.messages
                .iter()
                .cloned()
                .map(OsString::into_vec)
                .collect(),
        )
    };

    let mut config = Config::default();
    // No backpressure for the client: it must keep reading its echo while it still owes
    // the server part of a long message, or both sides would stop, each waiting for the
    // other to read.
    config.high_water = usize::MAX;
    config.low_water = usize::MAX;
    config.close_timeout = timeout;
    if args.trace {
        config.trace = Some(crate::cli::common::tracer());
    }
    let mut el = EventLoop::with_state(
        config,
        Shared {
            messages,
            outcome: None,
        },
    )?;
    let common = Common { timeout, index: 0 };
    match args.transport {
        Transport::Tcp | Transport::Tls | Transport::Unix => {
            start_stream(&mut el, &args, common)?;
        }
        Transport::Udp | Transport::UnixDgram => {
            start_dgram(&mut el, &args, common)?;
        }
        // The command line offers no other (the library's list may grow).
        other => return Err(format!("client does not speak {}", other.name()).into()),
    }
    // A zero wait first: a stop asked for while the socket was being set up (no messages at
    // all) is then applied at once instead of after the first event.
    if el.run_once(Some(Duration::ZERO))? {
        el.run()?;
    }
    let result = el.state_mut().outcome.take();
    match result {
        Some(Ok(())) => Ok(ExitCode::SUCCESS),
        Some(Err(msg)) => Err(msg.into()),
        None => Err("the event loop stopped before the exchange was over".into()),
    }
}

/// Rejects options that do not apply to the chosen transport, so a typo is not silently
/// ignored (a --ca meant for TLS on a plain TCP run would otherwise look like it worked).
fn check_options(args: &ClientArgs) -> Result<(), CliError> {
    if args.transport != Transport::Tls {
        if let Some(flag) = args.tls.given().first() {
            return Err(format!("{flag} only applies to the tls transport").into());
        }
    }
    if args.transport.is_stream() && args.retries.is_some() {
        return Err("--retries only applies to udp and unix-dgram (streams do not resend)".into());
    }
    Ok(())
}

/// Resolves the target and starts the first connect.
fn start_stream(
    el: &mut EventLoop<Shared>,
    args: &ClientArgs,
    common: Common,
) -> Result<(), CliError> {
    let endpoints: VecDeque<Endpoint> = match args.transport {
        Transport::Unix => VecDeque::from([Endpoint::Unix(UnixName::parse(&args.addr)?)]),
        _ => resolve_all(&args.addr)?
            .into_iter()
            .map(Endpoint::Inet)
            .collect(),
    };
    let mut opts = ConnectOptions::new().timeout(common.timeout);
    let mut tls_name = None;
    if args.transport == Transport::Tls {
        let name = match &args.tls.server_name {
            Some(n) => n.clone(),
            None => host_of(&args.addr).to_owned(),
        };
        let cfg = client_config(&args.tls.options())?;
        opts = opts.tls(cfg, server_name(&name)?);
        tls_name = Some(name);
    }
    let mut client = StreamClient::new(common, args.addr.clone(), endpoints, opts, tls_name);
    // The first connect is started here; one that fails, at once (say, no IPv6 route) or
    // later, moves on to the next address in `on_close`.
    let Some(ep) = client.remaining.pop_front() else {
        return Err(client.connect_failure().into());
    };
    let opts = client.opts.clone();
    let next = client.successor(ep.clone());
    el.connect(&ep, opts, Box::new(next));
    Ok(())
}

/// Binds the client's datagram socket and registers it; the handler sends the first
/// message from `on_ready`.
fn start_dgram(
    el: &mut EventLoop<Shared>,
    args: &ClientArgs,
    common: Common,
) -> Result<(), CliError> {
    let retries = args.retries.unwrap_or(DGRAM_RETRIES);
    match args.transport {
        Transport::Udp => {
            // A name with several addresses (localhost is often ::1 and 127.0.0.1): there
            // is no connect to fail, so silence is the only sign of a wrong one. The first
            // message moves on to the next address when all its tries go unanswered.
            let mut servers: VecDeque<std::net::SocketAddr> = resolve_all(&args.addr)?.into();
            let server = servers
                .pop_front()
                .ok_or_else(|| format!("{} resolves to no address", args.addr))?;
            let mut client = DgramClient::new(common, PeerAddr::Inet(server), retries, true);
            client.fallbacks = servers;
            el.bind_udp(unspecified_like(server), Box::new(client))?;
        }
        _ => {
            let server = UnixName::parse(&args.addr)?
                .to_std()
                .map_err(|e| format!("invalid Unix socket name {:?}: {e}", args.addr))?;
            let sock = autobound_unix_datagram()
                .map_err(|e| format!("cannot create a Unix datagram socket: {e}"))?;
            let client = DgramClient::new(common, PeerAddr::Unix(server), retries, false);
            el.add_unix_datagram(sock, Box::new(client))?;
        }
    }
    Ok(())
}

/// A Unix datagram socket with a name the server can reply to. Binding to an address that
/// holds only the address family asks Linux to pick a unique abstract name (autobind, see
/// unix(7)): nothing on disk to clean up, no name to invent.
fn autobound_unix_datagram() -> io::Result<UnixDatagram> {
    let sock = Socket::new(Domain::UNIX, Type::DGRAM, None)?;
    // socket2 gives an empty path an address length of just the family field.
    sock.bind(&SockAddr::unix("")?)?;
    Ok(UnixDatagram::from(OwnedFd::from(sock)))
}

#[cfg(test)]
mod tests {
    use super::exchange::{quoted, rcvd_line, sent_line};
    use super::stream::explain_tls;
    use super::{
        Common, Config, DgramClient, Duration, EventLoop, Messages, PeerAddr, Shared, VecDeque,
        unspecified_like,
    };

    fn lines(input: &'static [u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut m = Messages::from_reader(input);
        std::iter::from_fn(|| m.next()).collect()
    }

    fn ok(line: &[u8]) -> Result<Vec<u8>, String> {
        Ok(line.to_vec())
    }

    #[test]
    fn stdin_lines_strip_newlines_and_keep_text() {
        assert_eq!(
            lines("a\r\nhé 日本\n\nlast".as_bytes()),
            vec![ok(b"a"), ok("hé 日本".as_bytes()), ok(b""), ok(b"last")]
        );
        assert!(lines(b"").is_empty());
    }

    /// An echo tool sends bytes: a line need not be UTF-8, and is passed on unchanged
    /// (a lone `\r` inside it, NUL, bytes no encoding would accept).
    #[test]
    fn stdin_lines_are_bytes_whatever_their_encoding() {
        assert_eq!(
            lines(b"ok\n\xff\xfe\r\n\x00bin\rary\ncaf\xe9"),
            vec![
                ok(b"ok"),
                ok(b"\xff\xfe"),
                ok(b"\x00bin\rary"),
                ok(b"caf\xe9")
            ]
        );
    }

    /// What is printed carries the bytes as they are; errors quote them readably, with
    /// escapes only when they are not UTF-8 (a lossy decoding would hide the difference).
    #[test]
    fn reports_keep_the_bytes_and_errors_escape_them() {
        assert_eq!(sent_line(b"caf\xe9"), b"SENT caf\xe9 (4 bytes)".to_vec());
        let peer = "127.0.0.1:7";
        assert_eq!(
            rcvd_line(b"\xff", &peer),
            b"RCVD \xff (1 bytes) from 127.0.0.1:7".to_vec()
        );
        assert_eq!(quoted("hé".as_bytes()), "\"hé\"");
        assert_eq!(quoted(b"caf\xe9\n"), "b\"caf\\xe9\\n\"");
    }

    #[test]
    fn tls_errors_say_which_check_failed() {
        use rustls::{AlertDescription, CertificateError, Error};
        let name = explain_tls(
            &Error::InvalidCertificate(CertificateError::NotValidForName),
            "x.test",
        );
        assert!(name.contains("not valid for name \"x.test\""), "{name}");
        let issuer = explain_tls(
            &Error::InvalidCertificate(CertificateError::UnknownIssuer),
            "localhost",
        );
        assert!(issuer.contains("not trusted"), "{issuer}");
        let required = explain_tls(
            &Error::AlertReceived(AlertDescription::CertificateRequired),
            "localhost",
        );
        assert!(required.contains("--cert"), "{required}");
    }

    /// A UDP echo on ::1 for `times` datagrams, on a thread.
    fn ipv6_udp_echo(times: usize) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let echo = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let addr = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            echo.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1500];
            for _ in 0..times {
                let (n, from) = echo.recv_from(&mut buf).unwrap();
                echo.send_to(&buf[..n], from).unwrap();
            }
        });
        (addr, server)
    }

    /// A name may stand for several addresses; when the first never answers, the first
    /// message moves on to the next, on a socket of that address's family.
    #[test]
    fn udp_moves_on_to_the_next_address_when_the_first_is_silent() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (echo_addr, server) = ipv6_udp_echo(2);
        let common = Common {
            timeout: Duration::from_millis(100),
            index: 0,
        };
        let first = PeerAddr::Inet(silent.local_addr().unwrap());
        let mut client = DgramClient::new(common, first, 1, true);
        client.fallbacks = VecDeque::from([echo_addr]);
        let shared = Shared {
            messages: Messages::from_list(vec!["one".into(), "two".into()]),
            outcome: None,
        };
        let mut el = EventLoop::with_state(Config::default(), shared).unwrap();
        el.bind_udp(
            unspecified_like(silent.local_addr().unwrap()),
            Box::new(client),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while el.run_once(Some(Duration::from_millis(50))).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "client never finished"
            );
        }
        server.join().unwrap();
        assert_eq!(el.state().outcome, Some(Ok(())));
    }

    /// A first address where nothing listens answers with ICMP "port unreachable": the
    /// client moves on to the next at once, without waiting out its retries there.
    #[test]
    fn udp_moves_on_at_once_when_the_first_address_refuses() {
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let refusing = gone.local_addr().unwrap();
        drop(gone);
        let (echo_addr, server) = ipv6_udp_echo(1);
        // Waiting out the retries would take 4 x 5 s.
        let common = Common {
            timeout: Duration::from_secs(5),
            index: 0,
        };
        let mut client = DgramClient::new(common, PeerAddr::Inet(refusing), 3, true);
        client.fallbacks = VecDeque::from([echo_addr]);
        let shared = Shared {
            messages: Messages::from_list(vec!["one".into()]),
            outcome: None,
        };
        let mut el = EventLoop::with_state(Config::default(), shared).unwrap();
        el.bind_udp(unspecified_like(refusing), Box::new(client))
            .unwrap();
        let start = std::time::Instant::now();
        while el.run_once(Some(Duration::from_millis(50))).unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(4),
                "the refusal was not noticed"
            );
        }
        server.join().unwrap();
        assert_eq!(el.state().outcome, Some(Ok(())));
    }
}
