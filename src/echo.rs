//! Echo: the protocol the whole toolkit is named for, as a [`Handler`] like any other.
//!
//! Teaches: how little a protocol needs to know when the reactor handles the socket rules.
//! Backpressure, partial writes and half-close all happen below this code.

use crate::handler::{Ctx, DatagramHandler, DgramCtx, Handler};
use crate::net::PeerAddr;

/// Stream echo: every byte received is sent back, in order. When the peer half-closes, the
/// default [`Handler::on_peer_closed`] finishes sending and closes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl<S> Handler<S> for Echo {
    fn on_data(&mut self, ctx: &mut Ctx<'_, S>, data: &[u8]) {
        ctx.send(data);
    }

    fn is_plain_echo(&self) -> bool {
        true
    }
}

/// Datagram echo: every datagram goes back to its sender unchanged, empty ones included.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoDatagram;

impl<S> DatagramHandler<S> for EchoDatagram {
    fn on_datagram(&mut self, ctx: &mut DgramCtx<'_, S>, data: &[u8], from: &PeerAddr) {
        if let Err(e) = ctx.send_to(data, from) {
            // A sender with no name (an unbound Unix socket) cannot be answered; the loop
            // counts it as dropped.
            log::debug!("udp echo to {from}: {e}");
        }
    }
}
