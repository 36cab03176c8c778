//! The connection state machine, tested without sockets through [`pair::Pair`], grouped by
//! the state the test is about (as smoltcp's TCP tests are). Every test ends by checking
//! that each side heard `Closed` at most once — exactly once if it is closed.

mod fuzz;
mod pair;

use std::time::{Duration, Instant};

use pair::{Act, App, Deaf, EchoApp, Heard, Pair, Quiet, Setup, Who, Wire, test_limits};

use super::{Connection, Event, Limits, Session, State, Teardown};

/// Sends `msg` once open, then half-closes; records nothing else.
struct SendThenShut {
    msg: Vec<u8>,
}

impl App for SendThenShut {
    fn on_event(&mut self, ev: &Heard, _: &[u8]) -> Vec<Act> {
        match ev {
            Heard::Open => vec![Act::Send(std::mem::take(&mut self.msg)), Act::ShutdownWrite],
            _ => Vec::new(),
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Byte-exact comparison that reports lengths and the first difference, not the bytes.
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// `on_close` exactly once for a closed side, never for an open one.
fn assert_closed_once(p: &Pair) {
    for (name, side) in [("client", &p.client), ("server", &p.server)] {
        let want = usize::from(side.is_closed());
        assert_eq!(side.closes.len(), want, "{name} heard {:?}", side.heard);
        if let Some(i) = side
            .heard
            .iter()
            .position(|h| matches!(h, Heard::Closed(_)))
        {
            assert_eq!(i + 1, side.heard.len(), "{name}: events after Closed");
        }
    }
}

fn closed_as(p: &Pair, who: Who) -> Option<&str> {
    let side = match who {
        Who::Client => &p.client,
        Who::Server => &p.server,
    };
    side.closes.first().map(String::as_str)
}

mod connecting {
    use super::{Connection, Duration, Event, Instant, Session, State, test_limits};

    #[test]
    fn conn_connecting_opens_on_connected() {
        let now = Instant::now();
        let limits = test_limits();
        let mut c = Connection::connecting(Session::Plain, now, Some(Duration::from_secs(1)));
        assert_eq!(c.state(), State::Connecting);
        assert!(
            !c.wants_read(),
            "nothing to read before the connect completes"
        );
        assert!(
            c.poll_transmit(&crate::sendbuf::BufPool::default())
                .is_empty()
        );
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(1)));
        c.handle_connected(now, &limits);
        assert!(matches!(c.poll_event(&[]), Some(Event::Open)));
        assert_eq!(c.poll_timeout(), None, "connect deadline cleared once open");
    }

    #[test]
    fn conn_connecting_times_out_and_fails() {
        let now = Instant::now();
        let limits = test_limits();
        let mut c = Connection::connecting(Session::Plain, now, Some(Duration::from_secs(1)));
        c.handle_timeout(now + Duration::from_millis(999), &limits);
        assert!(c.poll_event(&[]).is_none(), "not yet");
        c.handle_timeout(now + Duration::from_secs(1), &limits);
        assert!(matches!(
            c.poll_event(&[]),
            Some(Event::Closed(super::super::CloseReason::ConnectTimeout))
        ));
        assert!(c.poll_event(&[]).is_none(), "nothing after Closed");

        let mut f = Connection::connecting(Session::Plain, now, None);
        f.handle_connect_failed(std::io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(
            f.poll_event(&[]),
            Some(Event::Closed(super::super::CloseReason::ConnectFailed(_)))
        ));
        // Actions on a connection that is gone say so.
        assert!(f.abort().is_err());
        assert!(f.close(now, &limits).is_err());
        assert!(f.poll_event(&[]).is_none(), "Closed comes once");
    }

    #[test]
    fn conn_connecting_refuses_data_until_open() {
        let c = Connection::connecting(Session::Plain, Instant::now(), None);
        assert_eq!(c.can_send(), Err(crate::error::ConnError::NotOpen));
    }
}

mod handshaking {
    use super::{
        Duration, EchoApp, Heard, Pair, Quiet, SendThenShut, Teardown, Who, assert_bytes,
        assert_closed_once, closed_as, pattern,
    };

    #[test]
    fn conn_handshaking_tls_echo_through_a_one_byte_pipe() {
        let msg = pattern(20_000);
        let mut p = Pair::tls(
            Box::new(SendThenShut { msg: msg.clone() }),
            Box::new(EchoApp),
            1,
        );
        p.run();
        assert_bytes(&p.client.received, &msg, "received");
        assert_eq!(closed_as(&p, Who::Client), Some("done"));
        assert_eq!(closed_as(&p, Who::Server), Some("done"));
        assert_eq!(p.server.heard.first(), Some(&Heard::Open));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_handshaking_times_out() {
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        // The client's hello never reaches the server: drop it from the pipe.
        p.server.inbox.bytes.clear();
        p.advance(Duration::from_secs(11));
        assert_eq!(closed_as(&p, Who::Server), Some("handshake-timeout"));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_handshaking_garbage_closes_with_an_alert() {
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        p.server.inbox.bytes.clear();
        p.server.inbox.bytes.extend(b"GET / HTTP/1.1\r\n\r\n");
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("tls"));
        assert_eq!(
            p.server.released,
            Some(Teardown::Flush),
            "the alert is sent first"
        );
        assert_eq!(
            closed_as(&p, Who::Client),
            Some("tls"),
            "the client got an alert"
        );
        assert_closed_once(&p);
    }

    #[test]
    fn conn_handshaking_eof_is_an_error() {
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        p.server.inbox.bytes.clear();
        p.server.inbox.fin = true;
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("io"));
        assert!(!p.server.heard.contains(&Heard::Open));
        assert_closed_once(&p);
    }
}

mod open {
    use super::{
        Act, Connection, Duration, EchoApp, Event, Heard, Instant, Pair, Quiet, SendThenShut,
        Session, Setup, Teardown, Who, assert_bytes, assert_closed_once, closed_as, pattern,
        test_limits,
    };

    #[test]
    fn conn_open_partial_sends_through_a_one_byte_pipe() {
        let msg = pattern(100_000);
        let mut p = Pair::plain(
            Box::new(SendThenShut { msg: msg.clone() }),
            Box::new(EchoApp),
            1,
        );
        p.run();
        assert_bytes(&p.client.received, &msg, "byte-exact through a 1-byte pipe");
        assert_eq!(closed_as(&p, Who::Client), Some("done"));
        assert_eq!(closed_as(&p, Who::Server), Some("done"));
        assert!(
            p.client.heard.contains(&Heard::Drained),
            "the writer was blocked"
        );
        assert_closed_once(&p);
    }

    #[test]
    fn conn_open_backpressure_pauses_above_high_and_resumes_at_low() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(EchoApp), 1024);
        // The client sends 16 KiB and reads nothing: the server's output piles up.
        p.client.inbox.bytes.clear();
        p.act(Who::Client, vec![Act::Send(pattern(16 * 1024)), Act::Pause]);
        p.run();
        let owed = p.server.conn.pending_output();
        assert!(owed > p.limits.high_water, "owed {owed}");
        assert!(
            !p.server.conn.wants_read(),
            "paused above the high-water mark"
        );
        assert!(
            p.server.max_owed <= p.limits.high_water + 64 * 1024,
            "bounded: {}",
            p.server.max_owed
        );
        // The client reads again: the server drains, resumes below the low mark, and
        // goes back by itself for the data that waited (no new event would say so).
        p.act(Who::Client, vec![Act::Resume]);
        p.run();
        assert_bytes(&p.client.received, &pattern(16 * 1024), "received");
        assert!(p.server.conn.wants_read());
        assert_closed_once(&p);
    }

    #[test]
    fn conn_open_may_splice_only_plain_open_and_owing_nothing() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(EchoApp), 1024);
        p.act(Who::Server, vec![]);
        p.run();
        assert!(p.server.conn.may_splice(), "plain, open, nothing owed");
        // Owing output (the client does not read): the echo of later input must wait
        // behind it, so no splicing.
        p.act(Who::Client, vec![Act::Send(pattern(16 * 1024)), Act::Pause]);
        p.run();
        assert!(p.server.conn.pending_output() > 0);
        assert!(!p.server.conn.may_splice(), "owes output");
        // After the peer's EOF the state is no longer open.
        p.act(Who::Client, vec![Act::Resume, Act::ShutdownWrite]);
        p.run();
        assert!(!p.server.conn.may_splice(), "the peer finished");
        // TLS: never.
        let mut t = Pair::tls(Box::new(Quiet), Box::new(EchoApp), 1024);
        t.run();
        assert!(!t.server.conn.may_splice(), "a TLS session sees every byte");
    }

    #[test]
    fn conn_open_backpressure_can_be_turned_off_for_relays() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(EchoApp), 1024);
        p.act(Who::Server, vec![]);
        let limits = p.limits;
        p.server.conn.set_backpressure(false, &limits).unwrap();
        p.act(Who::Client, vec![Act::Send(pattern(16 * 1024)), Act::Pause]);
        p.run();
        assert!(p.server.conn.pending_output() > p.limits.high_water);
        assert!(
            p.server.conn.wants_read(),
            "no pause: the relay paces itself"
        );
        p.server.conn.set_backpressure(true, &limits).unwrap();
        assert!(
            !p.server.conn.wants_read(),
            "on again: above the mark, paused"
        );
        p.act(Who::Client, vec![Act::Resume]);
        p.run();
        assert_bytes(&p.client.received, &pattern(16 * 1024), "received");
    }

    #[test]
    fn conn_open_resume_reads_data_that_already_waits() {
        let limits = test_limits();
        let now = Instant::now();
        let mut c = Connection::accepted(Session::Plain, now, &limits, false);
        assert!(matches!(c.poll_event(&[]), Some(Event::Open)));
        c.pause_reading().unwrap();
        assert!(!c.wants_read());
        // The driver stopped before WouldBlock: data may be waiting.
        c.handle_read_stopped();
        assert!(!c.poll_read_again(), "still paused");
        c.resume_reading().unwrap();
        assert!(
            c.poll_read_again(),
            "resuming must go back for waiting data"
        );
        assert!(!c.poll_read_again(), "once");
    }

    #[test]
    fn conn_open_idle_timeout_closes_gracefully() {
        let mut limits = test_limits();
        limits.idle_timeout = Some(Duration::from_secs(3));
        let mut p = Pair::new(
            Box::new(Quiet),
            Box::new(Quiet),
            Setup::plain(1024).with_limits(limits),
        );
        p.run();
        p.advance(Duration::from_secs(2));
        assert!(!p.server.is_closed());
        p.advance(Duration::from_secs(2));
        p.run();
        // The server was idle and began a graceful close; the client answered its FIN at
        // once. The end was clean, but why it ended is the idle timeout (issue 18, item 11).
        assert_eq!(closed_as(&p, Who::Server), Some("idle-timeout"));
        assert_eq!(closed_as(&p, Who::Client), Some("done"));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_open_idle_timeout_with_a_stuck_peer_resets() {
        let mut limits = test_limits();
        limits.idle_timeout = Some(Duration::from_secs(3));
        limits.close_timeout = Duration::from_secs(60);
        let mut p = Pair::new(
            Box::new(Quiet),
            Box::new(EchoApp),
            Setup::plain(1024).with_limits(limits),
        );
        // The client sends more than the pipe and the server's buffer hold, and never reads.
        p.act(Who::Client, vec![Act::Pause, Act::Send(pattern(32 * 1024))]);
        p.run();
        for _ in 0..4 {
            p.advance(Duration::from_secs(2));
            p.run();
        }
        assert_eq!(closed_as(&p, Who::Server), Some("idle-timeout"));
        assert_eq!(
            p.server.released,
            Some(Teardown::Reset),
            "dropping owed output must not look like a clean end"
        );
        assert_eq!(
            closed_as(&p, Who::Client),
            Some("io"),
            "the client sees a reset"
        );
        assert_closed_once(&p);
    }

    #[test]
    fn conn_open_abort_resets_and_drops_what_is_owed() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(Quiet), 16);
        p.act(Who::Server, vec![Act::Send(pattern(1000)), Act::Abort]);
        // Sent after abort: refused.
        p.act(Who::Server, vec![Act::Send(b"late".to_vec())]);
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("aborted"));
        assert_eq!(p.server.released, Some(Teardown::Reset));
        assert!(p.client.received.len() < 1000, "the rest was dropped");
        assert!(!p.client.received.ends_with(b"late"));
        assert_eq!(closed_as(&p, Who::Client), Some("io"));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_open_misuse_gives_results_not_panics() {
        let limits = test_limits();
        let now = Instant::now();
        let mut c = Connection::accepted(Session::Plain, now, &limits, false);
        c.close(now, &limits).unwrap();
        assert!(c.close(now, &limits).is_ok(), "closing twice is harmless");
        assert_eq!(c.can_send(), Err(crate::error::ConnError::WriteShut));
        c.abort().unwrap();
        assert_eq!(c.can_send(), Err(crate::error::ConnError::Gone));
        assert!(c.abort().is_err());
        assert!(c.pause_reading().is_err());
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event(&[])).collect();
        assert!(matches!(events.last(), Some(Event::Closed(_))));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Closed(_)))
                .count(),
            1
        );
    }
}

mod peer_shut {
    use super::{
        Act, App, Heard, Pair, Quiet, SendThenShut, Setup, Who, Wire, assert_bytes,
        assert_closed_once, closed_as,
    };

    /// Half-close by the peer: we hear `PeerClosed` and may still send.
    struct ReplyAfterEof;

    impl App for ReplyAfterEof {
        fn on_event(&mut self, ev: &Heard, _: &[u8]) -> Vec<Act> {
            match ev {
                Heard::PeerClosed => vec![Act::Send(b"bye after your EOF".to_vec()), Act::Close],
                _ => Vec::new(),
            }
        }
    }

    #[test]
    fn conn_peer_shut_we_may_still_send() {
        for wire in Wire::BOTH {
            let mut p = Pair::new(
                Box::new(SendThenShut {
                    msg: b"hi".to_vec(),
                }),
                Box::new(ReplyAfterEof),
                Setup {
                    wire,
                    ..Setup::plain(64)
                },
            );
            p.run();
            assert_bytes(
                &p.client.received,
                b"bye after your EOF",
                &format!("{wire:?}"),
            );
            assert_bytes(&p.server.received, b"hi", "received");
            assert_eq!(closed_as(&p, Who::Client), Some("done"));
            assert_eq!(closed_as(&p, Who::Server), Some("done"));
            assert_closed_once(&p);
        }
    }

    #[test]
    fn conn_peer_shut_tls_close_notify_alone_is_eof() {
        // The peer says close_notify but keeps TCP open (many do).
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        p.run();
        p.act(Who::Client, vec![Act::ShutdownWrite]);
        // Deliver the close_notify, hold back the TCP FIN.
        p.server.inbox.fin = false;
        p.run();
        assert_eq!(p.server.heard.last(), Some(&Heard::Closed("done".into())));
        assert!(p.server.heard.contains(&Heard::PeerClosed));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_peer_shut_tls_without_close_notify_is_still_eof() {
        // A TCP FIN with no close_notify before it: treated as EOF, as TCP would.
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        p.run();
        p.server.inbox.fin = true;
        p.run();
        assert!(p.server.heard.contains(&Heard::PeerClosed));
        assert_closed_once(&p);
    }
}

mod write_shut {
    use super::{
        Act, App, Connection, Heard, Instant, Pair, Session, Setup, Who, Wire, assert_bytes,
        assert_closed_once, closed_as, pattern, test_limits,
    };

    /// Shuts its sending side at once, then keeps reading.
    struct ShutFirst;

    impl App for ShutFirst {
        fn on_event(&mut self, ev: &Heard, _: &[u8]) -> Vec<Act> {
            match ev {
                Heard::Open => vec![Act::Send(b"hello".to_vec()), Act::ShutdownWrite],
                _ => Vec::new(),
            }
        }
    }

    /// Keeps sending after the peer half-closed, then closes.
    struct TalkBack;

    impl App for TalkBack {
        fn on_event(&mut self, ev: &Heard, _: &[u8]) -> Vec<Act> {
            match ev {
                Heard::PeerClosed => vec![Act::Send(pattern(5000)), Act::ShutdownWrite],
                _ => Vec::new(),
            }
        }
    }

    #[test]
    fn conn_write_shut_reading_goes_on() {
        for wire in Wire::BOTH {
            let mut p = Pair::new(
                Box::new(TalkBack),
                Box::new(ShutFirst),
                Setup {
                    wire,
                    ..Setup::plain(256)
                },
            );
            p.run();
            assert_bytes(&p.client.received, b"hello", "received");
            assert_bytes(&p.server.received, &pattern(5000), &format!("{wire:?}"));
            assert_eq!(closed_as(&p, Who::Server), Some("done"));
            assert_eq!(closed_as(&p, Who::Client), Some("done"));
            assert_closed_once(&p);
        }
    }

    #[test]
    fn conn_write_shut_refuses_more_data() {
        let limits = test_limits();
        let mut c = Connection::accepted(Session::Plain, Instant::now(), &limits, false);
        c.shutdown_write().unwrap();
        assert_eq!(c.can_send(), Err(crate::error::ConnError::WriteShut));
        assert!(c.shutdown_write().is_ok(), "twice is harmless");
        assert!(c.wants_read(), "half-close keeps reading");
    }
}

mod closing {
    use super::{
        Act, Deaf, Duration, Heard, Limits, Pair, Quiet, Setup, State, Teardown, Who, assert_bytes,
        assert_closed_once, closed_as, pattern, test_limits,
    };

    #[test]
    fn conn_closing_delivers_what_is_owed_then_fin() {
        let msg = pattern(50_000);
        let mut p = Pair::plain(Box::new(Quiet), Box::new(Quiet), 100);
        p.act(Who::Server, vec![Act::Send(msg.clone()), Act::Close]);
        p.run();
        assert_bytes(&p.client.received, &msg, "received");
        assert_eq!(closed_as(&p, Who::Server), Some("done"));
        assert_eq!(closed_as(&p, Who::Client), Some("done"));
        assert_eq!(p.server.released, Some(Teardown::Drop));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_closing_with_a_peer_that_never_reads_resets_after_the_close_timeout() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(Quiet), 100);
        p.act(Who::Client, vec![Act::Pause]);
        p.act(Who::Server, vec![Act::Send(pattern(50_000)), Act::Close]);
        p.run();
        p.advance(Duration::from_secs(4));
        p.run();
        assert!(!p.server.is_closed(), "within the close timeout");
        p.advance(Duration::from_secs(2));
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("close-timeout"));
        assert_eq!(p.server.released, Some(Teardown::Reset));
        assert_closed_once(&p);
    }

    /// Half-closed both ways with output owed to a peer that stopped reading: `close`
    /// still bounds the wait by the close timeout (a half-close alone has no deadline).
    #[test]
    fn conn_closing_after_a_half_close_both_ways_is_bounded() {
        // The server's application does nothing when the peer half-closes.
        let mut p = Pair::plain(Box::new(Quiet), Box::new(Deaf), 100);
        p.act(Who::Client, vec![Act::Pause, Act::ShutdownWrite]);
        p.run();
        assert!(p.server.heard.contains(&Heard::PeerClosed));
        p.act(
            Who::Server,
            vec![Act::Send(pattern(50_000)), Act::ShutdownWrite],
        );
        p.run();
        p.act(Who::Server, vec![Act::Close]);
        p.advance(Duration::from_secs(4));
        p.run();
        assert!(
            !p.server.is_closed(),
            "within the close timeout: {:?}",
            p.server.heard
        );
        p.advance(Duration::from_secs(2));
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("close-timeout"));
        assert_eq!(p.server.released, Some(Teardown::Reset));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_closing_slow_but_steady_reader_gets_more_time() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(Quiet), 100);
        p.act(Who::Client, vec![Act::Pause]);
        let msg = pattern(2000);
        p.act(Who::Server, vec![Act::Send(msg.clone()), Act::Close]);
        p.run();
        // The client reads a little every 4 s: each close deadline finds progress, until
        // the server has sent everything and waits for the client's FIN.
        while matches!(p.server.conn.state(), State::Closing { .. }) {
            p.act(Who::Client, vec![Act::Resume]);
            p.step(Who::Client);
            p.act(Who::Client, vec![Act::Pause]);
            p.step(Who::Server);
            p.advance(Duration::from_secs(4));
        }
        p.act(Who::Client, vec![Act::Resume]);
        p.run();
        assert_bytes(&p.client.received, &msg, "received");
        assert_eq!(closed_as(&p, Who::Server), Some("done"));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_closing_lingers_reading_and_dropping_input() {
        let mut p = Pair::plain(Box::new(Deaf), Box::new(Quiet), 1024);
        p.act(Who::Server, vec![Act::Close]);
        p.run();
        assert_eq!(p.server.conn.state(), State::Lingering);
        // The client goes on sending: dropped, not delivered, and no reset.
        p.act(Who::Client, vec![Act::Send(pattern(3000))]);
        p.run();
        assert!(p.server.received.is_empty());
        assert!(!p.client.inbox.reset);
        // The peer never finishes: the close timeout ends it, cleanly (nothing was owed).
        p.advance(Duration::from_secs(6));
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("close-timeout"));
        assert_eq!(p.server.released, Some(Teardown::Drop));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_closing_tls_close_notify_both_ways() {
        let mut p = Pair::tls(Box::new(Quiet), Box::new(Quiet), 64 * 1024);
        p.run();
        p.act(
            Who::Server,
            vec![Act::Send(b"last words".to_vec()), Act::Close],
        );
        p.run();
        assert_bytes(&p.client.received, b"last words", "received");
        assert!(p.client.heard.contains(&Heard::PeerClosed));
        assert_eq!(closed_as(&p, Who::Server), Some("done"));
        assert_eq!(closed_as(&p, Who::Client), Some("done"));
        assert_closed_once(&p);
    }

    #[test]
    fn conn_closing_stop_then_stop_now() {
        let limits = Limits {
            close_timeout: Duration::from_secs(60),
            ..test_limits()
        };
        let mut p = Pair::new(
            Box::new(Quiet),
            Box::new(Quiet),
            Setup::plain(10).with_limits(limits),
        );
        p.act(Who::Client, vec![Act::Pause]);
        p.act(Who::Server, vec![Act::Send(pattern(10_000))]);
        let now = p.now;
        p.server.conn.stop(now, &limits);
        p.run();
        assert!(!p.server.is_closed(), "graceful while the grace lasts");
        p.server.conn.stop_now();
        p.act(Who::Server, Vec::new());
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("shutdown"));
        assert_eq!(p.server.released, Some(Teardown::Reset), "output was owed");
        assert_closed_once(&p);
    }
}

mod preamble {
    use super::*;

    const V1: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 7\r\n";

    #[test]
    fn conn_preamble_header_is_removed_and_names_the_client() {
        for (tls, cap) in [(false, 64 * 1024), (false, 1), (true, 64 * 1024), (true, 7)] {
            let msg = pattern(3000);
            let mut p = Pair::behind_balancer(
                Box::new(SendThenShut { msg: msg.clone() }),
                Box::new(EchoApp),
                cap,
                tls,
                V1,
            );
            p.run();
            let what = format!("tls {tls}, pipe {cap}");
            assert_eq!(
                p.server.heard.first(),
                Some(&Heard::Proxied(Some("192.0.2.7:40000".parse().unwrap()))),
                "{what}"
            );
            assert_eq!(p.server.heard.get(1), Some(&Heard::Open), "{what}");
            // The header never reaches the application, nor the echo.
            assert_bytes(&p.server.received, &msg, &what);
            assert_bytes(&p.client.received, &msg, &what);
            assert_eq!(closed_as(&p, Who::Server), Some("done"), "{what}");
            assert_closed_once(&p);
        }
    }

    #[test]
    fn conn_preamble_refuses_what_is_not_a_header() {
        for bad in [
            &b"hello, no header here\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            &[b'P'; 200],
        ] {
            let mut p = Pair::behind_balancer(Box::new(Quiet), Box::new(EchoApp), 1024, false, bad);
            p.run();
            assert_eq!(closed_as(&p, Who::Server), Some("bad-proxy-header"));
            assert!(
                p.server.received.is_empty(),
                "nothing reached the application"
            );
            assert!(!p.server.heard.contains(&Heard::Open));
            assert_closed_once(&p);
        }
    }

    /// issue 18, item 7: the PROXY header and the TLS handshake after it share one
    /// deadline, counted from the accept.
    #[test]
    fn issue_18_preamble_and_tls_handshake_share_one_deadline() {
        let (server, _) = super::pair::tls_configs();
        let limits = test_limits();
        let t0 = Instant::now();
        let session = Session::Tls(Box::new(crate::tls::TlsSession::server(server).unwrap()));
        let mut c = Connection::accepted(session, t0, &limits, true);
        // The header comes just before the timeout; the ClientHello never does.
        let late = t0 + limits.handshake_timeout - Duration::from_millis(100);
        let mut plain = Vec::new();
        c.handle_input(late, V1, &mut plain, &limits);
        assert_eq!(c.state(), State::Handshaking);
        assert_eq!(c.poll_timeout(), Some(t0 + limits.handshake_timeout));
        c.handle_timeout(t0 + limits.handshake_timeout, &limits);
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event(&[])).collect();
        assert!(
            matches!(
                events.last(),
                Some(Event::Closed(super::super::CloseReason::HandshakeTimeout))
            ),
            "{events:?}"
        );
    }

    #[test]
    fn conn_preamble_too_slow_or_cut_short_closes() {
        let mut p =
            Pair::behind_balancer(Box::new(Quiet), Box::new(Quiet), 1024, false, b"PROXY TC");
        p.run();
        assert!(!p.server.is_closed(), "waiting for the rest");
        p.advance(Duration::from_secs(11));
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("bad-proxy-header"));

        let mut p =
            Pair::behind_balancer(Box::new(Quiet), Box::new(Quiet), 1024, false, b"PROXY TC");
        p.server.inbox.fin = true;
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("bad-proxy-header"));
        assert_closed_once(&p);
    }
}

/// Cases the fuzzer found, kept by name.
mod regressions {
    use super::{Act, EchoApp, Heard, Pair, Quiet, Setup, Who, assert_closed_once, closed_as};

    /// issue 18, item 11: an idle timeout keeps its reason when the peer answers our FIN
    /// at once (the clean end of a close *we* began for idleness).
    #[test]
    fn issue_18_idle_timeout_keeps_its_reason_when_the_peer_finishes_cleanly() {
        let limits = super::super::Limits {
            idle_timeout: Some(std::time::Duration::from_secs(1)),
            ..super::test_limits()
        };
        let mut p = Pair::new(
            Box::new(Quiet),
            Box::new(EchoApp),
            Setup::plain(1024).with_limits(limits),
        );
        p.act(Who::Client, vec![Act::Send(vec![7, 7])]);
        p.run();
        assert_eq!(p.client.received, vec![7, 7]);
        p.advance(std::time::Duration::from_secs(2));
        // The server has sent its FIN; the client still sends a little, then closes.
        p.act(Who::Client, vec![Act::Send(vec![1; 10])]);
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("idle-timeout"));
        assert_closed_once(&p);
    }

    /// rustls counts its own `close_notify` as a fatal alert sent, so a bad record from the
    /// peer after we half-closed tripped a debug assertion inside rustls (rustls#959).
    /// Dependencies are built without debug assertions, as in release; this must close
    /// the connection with a TLS error, never panic.
    #[test]
    fn conn_tls_bad_record_after_our_close_notify_closes_cleanly() {
        let mut p = Pair::tls(Box::new(Quiet), Box::new(EchoApp), 1);
        p.act(Who::Client, vec![Act::Pause]);
        p.run();
        // A byte of the server's records vanishes on the way to the client.
        let keep = p.client.inbox.bytes.len().saturating_sub(1);
        p.client.inbox.bytes.truncate(keep);
        p.run();
        p.act(Who::Client, vec![Act::Resume]);
        p.act(Who::Client, vec![Act::ShutdownWrite]);
        p.run();
        assert_eq!(closed_as(&p, Who::Client), Some("tls"));
        assert_closed_once(&p);
    }

    /// A reset that arrives after the peer's FIN, while we still owe output and no longer
    /// read: the write path must notice it (a reset socket is writable; the write fails).
    #[test]
    fn conn_reset_after_peer_fin_while_output_is_owed() {
        let mut p = Pair::plain(Box::new(Quiet), Box::new(EchoApp), 1);
        p.act(Who::Client, vec![Act::Send(vec![1, 2])]);
        p.act(Who::Client, vec![Act::Pause]);
        p.run();
        p.act(Who::Server, vec![Act::ShutdownWrite]);
        p.act(Who::Client, vec![Act::ShutdownWrite]);
        p.step(Who::Server);
        assert!(p.server.heard.contains(&Heard::PeerClosed));
        p.act(Who::Client, vec![Act::Abort]);
        p.run();
        assert_eq!(closed_as(&p, Who::Server), Some("io"));
        assert_closed_once(&p);
    }
}

/// The turn's shared output ([`crate::sendbuf::Shared`]): what fan-out keeps once, and
/// the rules that keep every connection's bytes whole and in order around it.
mod shared_output {
    use super::*;
    use crate::sendbuf::{BufPool, Shared};

    fn open_plain(now: Instant, limits: &Limits) -> Connection {
        let mut c = Connection::accepted(Session::Plain, now, limits, false);
        assert!(matches!(c.poll_event(&[]), Some(Event::Open)));
        c
    }

    /// What the kernel would take: `room` bytes, then blocked.
    fn write(c: &mut Connection, pool: &mut BufPool, room: usize, now: Instant) -> Vec<u8> {
        let limits = test_limits();
        let bytes = c.poll_transmit(pool).to_vec();
        let n = bytes.len().min(room);
        c.handle_sent(now, n, n < bytes.len(), &limits, pool);
        bytes[..n].to_vec()
    }

    #[test]
    fn one_message_to_many_is_kept_once_and_each_gets_it_in_order() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut pool = BufPool::default();
        let mut conns: Vec<Connection> = (0..3).map(|_| open_plain(now, &limits)).collect();
        for msg in [&b"first|"[..], b"second|"] {
            for c in &mut conns {
                c.queue_shared(msg, &limits, &mut pool);
            }
        }
        for c in &mut conns {
            assert_eq!(c.pending_output(), 13);
            assert!(c.holds_span(), "no copy of its own");
            assert_eq!(write(c, &mut pool, usize::MAX, now), b"first|second|");
            assert_eq!(c.pending_output(), 0);
        }
        assert!(
            pool.shared.get_all().len() == 13,
            "each message stored once"
        );
    }

    #[test]
    fn bytes_that_do_not_follow_the_span_are_copied_after_it() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut pool = BufPool::default();
        let mut a = open_plain(now, &limits);
        let mut b = open_plain(now, &limits);
        a.queue_shared(b"to-a-and-b|", &limits, &mut pool);
        b.queue_shared(b"to-a-and-b|", &limits, &mut pool);
        // Only b: appended after a's span, which b's follows.
        b.queue_shared(b"only-b|", &limits, &mut pool);
        // Only a: a's span ends before "only-b|", so a copies its span, then this.
        a.queue_shared(b"only-a|", &limits, &mut pool);
        assert!(!a.holds_span() && b.holds_span());
        // Its own reply (not shared) goes after what was shared.
        b.queue(b"reply-b|", &limits, &mut pool);
        assert_eq!(
            write(&mut a, &mut pool, usize::MAX, now),
            b"to-a-and-b|only-a|"
        );
        assert_eq!(
            write(&mut b, &mut pool, usize::MAX, now),
            b"to-a-and-b|only-b|reply-b|"
        );
    }

    #[test]
    fn a_partial_write_keeps_the_rest_past_the_turn() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut pool = BufPool::default();
        let mut c = open_plain(now, &limits);
        c.queue_shared(b"0123456789", &limits, &mut pool);
        assert_eq!(write(&mut c, &mut pool, 4, now), b"0123");
        assert!(!c.holds_span(), "the rest is its own now");
        // The turn ends: the shared output is forgotten, and overwritten by the next.
        pool.shared.reset();
        let mut other = open_plain(now, &limits);
        other.queue_shared(b"XXXXXXXXXX", &limits, &mut pool);
        // Blocked: what comes now is copied behind the rest, not shared.
        c.queue_shared(b"XXXXXXXXXX", &limits, &mut pool);
        assert!(!c.holds_span());
        c.handle_writable();
        assert_eq!(
            write(&mut c, &mut pool, usize::MAX, now),
            b"456789XXXXXXXXXX"
        );
    }

    #[test]
    fn sharing_closes_while_the_turn_writes_and_refuses_what_does_not_fit() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut pool = BufPool::default();
        let mut c = open_plain(now, &limits);
        pool.shared.close();
        c.queue_shared(b"late", &limits, &mut pool);
        assert!(!c.holds_span(), "sent while the turn's spans are written");
        assert_eq!(write(&mut c, &mut pool, usize::MAX, now), b"late");
        pool.shared.reset();
        let big = vec![7u8; Shared::LIMIT + 1];
        assert!(!pool.shared.needs_room(&big), "too big to share at all");
        c.queue_shared(&big, &limits, &mut pool);
        assert!(!c.holds_span());
        assert_eq!(c.pending_output(), big.len());
        let almost = vec![1u8; Shared::LIMIT - 10];
        let mut d = open_plain(now, &limits);
        d.queue_shared(&almost, &limits, &mut pool);
        assert!(d.holds_span());
        assert!(pool.shared.needs_room(b"more than ten bytes"));
        assert!(
            !pool.shared.needs_room(&almost),
            "the same bytes again need no room"
        );
    }

    /// Issue 18, item 11: input that arrives while the connection closes is read and
    /// dropped (so the close stays clean), and counted for the close's log line.
    #[test]
    fn input_dropped_while_closing_is_counted_past_the_close() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut c = open_plain(now, &limits);
        let mut plain = Vec::new();
        assert_eq!(
            c.handle_input(now, b"echoed", &mut plain, &limits),
            b"echoed"
        );
        assert!(matches!(c.poll_event(b"echoed"), Some(Event::Data(_))));
        c.close(now, &limits).unwrap();
        assert!(
            c.handle_input(now, &[7u8; 1000], &mut plain, &limits)
                .is_empty()
        );
        assert!(
            c.handle_input(now, &[7u8; 234], &mut plain, &limits)
                .is_empty()
        );
        assert_eq!(c.discarded_input(), 1234);
        c.handle_eof(now);
        let mut pool = BufPool::default();
        // The FIN goes out; with the peer's EOF in, the close is complete.
        let _ = c.poll_transmit(&pool);
        assert!(c.poll_shutdown(now, &limits));
        c.handle_sent(now, 0, false, &limits, &mut pool);
        let mut closed = None;
        while let Some(ev) = c.poll_event(&[]) {
            if let Event::Closed(reason) = ev {
                closed = Some(reason.to_string());
            }
        }
        assert!(closed.is_some(), "closed");
        assert_eq!(
            c.discarded_input(),
            1234,
            "still known after the close event"
        );
    }

    #[test]
    fn discarding_unsent_output_forgets_the_span() {
        let (now, limits) = (Instant::now(), test_limits());
        let mut pool = BufPool::default();
        let mut c = open_plain(now, &limits);
        c.queue_shared(b"backlog", &limits, &mut pool);
        c.discard_unsent();
        assert_eq!(c.pending_output(), 0);
        c.queue(b"bye\n", &limits, &mut pool);
        assert_eq!(write(&mut c, &mut pool, usize::MAX, now), b"bye\n");
    }
}
