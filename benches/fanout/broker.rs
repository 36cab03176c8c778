//! The echoloop brokers, (i) and (ii): one handler type for every client, whose first
//! byte says whether it publishes or subscribes; the subscribers are in the loop's state.

use std::io::Write;
use std::net::SocketAddr;

use echoloop::{CloseReason, Config, ConnId, Ctx, Endpoint, EventLoop, Handler, ListenKind};

use super::MSG;

/// How the publisher's messages are handed to the subscribers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Style {
    /// (i) The natural code: for each message, for each subscriber, `send(msg)`.
    PerMessage,
    /// (ii) All whole messages of one callback gathered in one buffer by hand, sent once
    /// to each subscriber.
    Outbox,
}

/// The publisher stops being read while some subscriber is owed more than this...
const HIGH: usize = 1024 * 1024;
/// ...until every subscriber is owed at most this. The generator's own window keeps the
/// broker below HIGH, but a broker must not buffer without bound for a slow reader.
const LOW: usize = 256 * 1024;

/// The loop's state.
#[derive(Default)]
struct Broker {
    subscribers: Vec<ConnId>,
    /// The publisher, while its reading is paused for a slow subscriber.
    paused: Option<ConnId>,
}

enum Role {
    /// Its first byte has not arrived yet.
    New,
    Subscriber,
    Publisher,
}

struct Client {
    style: Style,
    role: Role,
    /// The start of a message whose rest has not arrived yet (a stream has no message
    /// boundaries: a read may end anywhere).
    carry: Vec<u8>,
    /// (ii) The messages of the current callback.
    outbox: Vec<u8>,
    /// The subscribers, copied out of the state: sending needs `ctx` again.
    subscribers: Vec<ConnId>,
}

pub(super) fn serve(addr: SocketAddr, style: Style) {
    let mut el = EventLoop::with_state(Config::default(), Broker::default()).expect("event loop");
    let bound = el
        .listen(&Endpoint::Inet(addr), ListenKind::Tcp, move || {
            Box::new(Client {
                style,
                role: Role::New,
                carry: Vec::with_capacity(MSG),
                outbox: Vec::new(),
                subscribers: Vec::new(),
            })
        })
        .expect("listen");
    println!("listening tcp {}", bound.addr);
    let _ = std::io::stdout().flush();
    el.run().expect("event loop");
}

impl Handler<Broker> for Client {
    fn on_data(&mut self, ctx: &mut Ctx<'_, Broker>, data: &[u8]) {
        let data = match self.role {
            Role::Publisher => data,
            // Nothing a subscriber says after its role means anything.
            Role::Subscriber => return,
            Role::New => match data.split_first() {
                Some((b'S', _)) => {
                    self.role = Role::Subscriber;
                    let me = ctx.id();
                    ctx.state().subscribers.push(me);
                    // Registered: from now on it gets every message.
                    ctx.send(b"A");
                    return;
                }
                Some((b'P', rest)) => {
                    self.role = Role::Publisher;
                    rest
                }
                _ => {
                    ctx.abort();
                    return;
                }
            },
        };
        self.relay(ctx, data);
    }

    fn on_drained(&mut self, ctx: &mut Ctx<'_, Broker>) {
        if matches!(self.role, Role::Subscriber) {
            resume_if_caught_up(ctx);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Broker>, _: &CloseReason) {
        let me = ctx.id();
        let state = ctx.state();
        state.subscribers.retain(|&s| s != me);
        if state.paused == Some(me) {
            state.paused = None;
        }
        // A slow subscriber leaving may be what the publisher waited for.
        resume_if_caught_up(ctx);
    }
}

impl Client {
    /// Sends every whole message in `data` (after what `carry` held) to every subscriber.
    fn relay(&mut self, ctx: &mut Ctx<'_, Broker>, data: &[u8]) {
        self.subscribers.clear();
        self.subscribers.extend_from_slice(&ctx.state().subscribers);
        let subscribers = &self.subscribers;
        match self.style {
            Style::PerMessage => for_each_message(&mut self.carry, data, |msg| {
                for &s in subscribers {
                    // Err(Gone): it left; its on_close has taken it out of the list.
                    let _ = ctx.conn(s).send(msg);
                }
            }),
            Style::Outbox => {
                self.outbox.clear();
                let outbox = &mut self.outbox;
                for_each_message(&mut self.carry, data, |msg| outbox.extend_from_slice(msg));
                if !outbox.is_empty() {
                    for &s in subscribers {
                        let _ = ctx.conn(s).send(&outbox[..]);
                    }
                }
            }
        }
        let behind = subscribers
            .iter()
            .any(|&s| ctx.conn(s).pending_output().is_ok_and(|n| n > HIGH));
        if behind {
            ctx.pause_reading();
            let me = ctx.id();
            ctx.state().paused = Some(me);
        }
    }
}

/// Calls `f` with each whole message of the stream: first the one `carry` completes,
/// then those in `data`; keeps an unfinished last one in `carry`.
fn for_each_message(carry: &mut Vec<u8>, mut data: &[u8], mut f: impl FnMut(&[u8])) {
    if !carry.is_empty() {
        let take = (MSG - carry.len()).min(data.len());
        carry.extend_from_slice(&data[..take]);
        data = &data[take..];
        if carry.len() < MSG {
            return;
        }
        f(carry);
        carry.clear();
    }
    let mut messages = data.chunks_exact(MSG);
    for msg in &mut messages {
        f(msg);
    }
    carry.extend_from_slice(messages.remainder());
}

/// Resumes the paused publisher once no subscriber is owed more than LOW. Every
/// subscriber owed more has a full socket, so its `on_drained` brings us back here.
fn resume_if_caught_up(ctx: &mut Ctx<'_, Broker>) {
    let Some(publisher) = ctx.state().paused else {
        return;
    };
    for i in 0..ctx.state().subscribers.len() {
        let s = ctx.state().subscribers[i];
        if ctx.conn(s).pending_output().is_ok_and(|n| n > LOW) {
            return;
        }
    }
    ctx.state().paused = None;
    // Err(Gone): it left meanwhile, and there is nothing to resume.
    let _ = ctx.conn(publisher).resume_reading();
}
