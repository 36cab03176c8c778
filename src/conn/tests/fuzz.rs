//! Property tests of the connection state machine through the `Pair`: random
//! interleavings of the two sides' steps, pipe capacities, application actions, clock
//! jumps, and (for TLS) garbage and truncated records in the pipe.
//!
//! Invariants checked after every operation and at the end: no panic; `on_close` at most
//! once per side, exactly once once closed, and nothing after it; the echo neither loses
//! nor duplicates nor invents a byte (what each side received is a prefix of what was
//! sent, and all of it when both ended cleanly and nothing was dropped on purpose); no
//! send buffer grows past its bound; and every connection ends once both sides stop.
//!
//! A short run is part of `cargo test` (64 cases); a long one:
//! `PROPTEST_CASES=20000 cargo test --release --lib conn::tests::fuzz`.

use std::time::Duration;

use proptest::prelude::{Just, Strategy, any, prop, prop_assert, prop_assert_eq, prop_oneof};
use proptest::test_runner::TestCaseError;

use super::pair::{Act, EchoApp, Heard, Pair, Quiet, Setup, Who, Wire};

#[derive(Debug, Clone)]
enum Op {
    /// The client sends this many bytes of the pattern.
    Send(usize),
    Client(Act),
    Server(Act),
    Step(Who),
    Run,
    Advance(u64),
    /// Bytes thrown into the pipe toward a side (TLS only: plain bytes are just data).
    Garbage(Who, Vec<u8>),
    /// The last bytes in flight toward a side vanish (TLS only).
    Truncate(Who, usize),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        Just(Act::ShutdownWrite),
        Just(Act::Close),
        Just(Act::Abort),
        Just(Act::Pause),
        Just(Act::Resume),
        Just(Act::Send(b"x".to_vec())),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![Just(Who::Client), Just(Who::Server)]
}

fn op(tls: bool) -> impl Strategy<Value = Op> {
    let common = prop_oneof![
        6 => (0usize..6000).prop_map(Op::Send),
        2 => act().prop_map(Op::Client),
        1 => prop_oneof![Just(Act::Pause), Just(Act::Resume), Just(Act::ShutdownWrite)]
            .prop_map(Op::Server),
        6 => who().prop_map(Op::Step),
        2 => Just(Op::Run),
        1 => (0u64..8000).prop_map(Op::Advance),
    ];
    if tls {
        prop_oneof![
            20 => common,
            1 => (who(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(w, g)| Op::Garbage(w, g)),
            1 => (who(), 1usize..64).prop_map(|(w, n)| Op::Truncate(w, n)),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

/// Pipe capacities from one byte up, small ones often.
fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..8, 8usize..512, 512usize..65_536]
}

fn pattern_at(start: usize, n: usize) -> Vec<u8> {
    (start..start + n).map(|i| (i % 251) as u8).collect()
}

fn check_always(p: &Pair, sent: &[u8], clean_data: bool) -> Result<(), TestCaseError> {
    for side in [&p.client, &p.server] {
        prop_assert!(side.closes.len() <= 1, "on_close twice: {:?}", side.heard);
        prop_assert_eq!(side.closes.len(), usize::from(side.is_closed()));
        if let Some(i) = side
            .heard
            .iter()
            .position(|h| matches!(h, Heard::Closed(_)))
        {
            prop_assert_eq!(i + 1, side.heard.len(), "events after Closed");
        }
    }
    // One read's worth of echo (64 KiB) may land above the mark before reading pauses,
    // plus TLS record overhead.
    let bound = p.limits.high_water + 64 * 1024 + 4096;
    prop_assert!(
        p.server.max_owed <= bound,
        "server owed {}",
        p.server.max_owed
    );
    if clean_data {
        prop_assert!(
            sent.starts_with(&p.server.received),
            "server got bytes never sent"
        );
        prop_assert!(
            sent.starts_with(&p.client.received),
            "echo lost, duplicated or invented bytes"
        );
    }
    Ok(())
}

fn run_case(tls: bool, cap: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut p = Pair::new(
        Box::new(Quiet),
        Box::new(EchoApp),
        Setup {
            wire: if tls { Wire::Tls } else { Wire::Plain },
            ..Setup::plain(cap)
        },
    );
    let mut sent = Vec::new();
    // Bytes tampered with: then only the "no panic, closes once, bounded" invariants hold.
    let mut tampered = false;
    // The client dropped input on purpose (close, abort) or was cut off.
    let mut dropped = false;
    for op in ops {
        match op {
            Op::Send(n) => {
                if p.client.conn.can_send().is_ok() {
                    let data = pattern_at(sent.len(), n);
                    sent.extend_from_slice(&data);
                    p.act(Who::Client, vec![Act::Send(data)]);
                }
            }
            Op::Client(Act::Send(_)) => {}
            Op::Client(a) => {
                dropped |= matches!(a, Act::Close | Act::Abort);
                p.act(Who::Client, vec![a]);
            }
            Op::Server(a) => {
                dropped |= a == Act::ShutdownWrite;
                p.act(Who::Server, vec![a]);
            }
            Op::Step(w) => {
                p.step(w);
            }
            Op::Run => p.run(),
            Op::Advance(ms) => {
                // A jump past a deadline may close with a reset: data can be cut.
                dropped = true;
                p.advance(Duration::from_millis(ms));
            }
            Op::Garbage(w, g) => {
                tampered = true;
                p.side(w).inbox.bytes.extend(g);
            }
            Op::Truncate(w, n) => {
                tampered = true;
                let pipe = &mut p.side(w).inbox.bytes;
                let keep = pipe.len().saturating_sub(n);
                pipe.truncate(keep);
            }
        }
        check_always(&p, &sent, !tampered)?;
    }
    // Wind down: the handshake finishes, both read again, the client finishes its side,
    // deadlines pass.
    p.run();
    p.act(Who::Client, vec![Act::Resume]);
    p.act(Who::Server, vec![Act::Resume]);
    p.act(Who::Client, vec![Act::ShutdownWrite]);
    p.run();
    for _ in 0..4 {
        p.advance(Duration::from_secs(30));
        p.run();
    }
    check_always(&p, &sent, !tampered)?;
    prop_assert!(
        p.client.is_closed(),
        "client never ended: {:?}",
        p.client.heard
    );
    prop_assert!(
        p.server.is_closed(),
        "server never ended: {:?}",
        p.server.heard
    );
    let done = |s: &super::pair::Side| s.closes.first().map(String::as_str) == Some("done");
    if !tampered && !dropped && done(&p.client) && done(&p.server) {
        prop_assert_eq!(
            p.client.received.len(),
            sent.len(),
            "a clean end lost bytes"
        );
    }
    Ok(())
}

proptest::proptest! {
    // Failures found are kept as named tests (see the `regressions` module of the state
    // tests), not in a persistence file.
    #![proptest_config(crate::test_support::fuzz_config(64))]

    #[test]
    fn conn_fuzz_plain_pair(cap in capacity(), ops in prop::collection::vec(op(false), 0..60)) {
        run_case(false, cap, ops)?;
    }

    #[test]
    fn conn_fuzz_tls_pair(cap in capacity(), ops in prop::collection::vec(op(true), 0..40)) {
        run_case(true, cap, ops)?;
    }
}
