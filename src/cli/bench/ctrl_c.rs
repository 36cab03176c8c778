//! Ctrl-C while a benchmark runs: the first ends the measured window at once and the
//! report of what was measured still comes; the second exits at once.
//!
//! Signals are taken by a thread of their own (signal-hook's iterator), never by a
//! handler inside a load thread's loop: it tells the run being measured, if any, with a
//! message on that run's channel, and remembers that it came, for a search between two
//! runs.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use super::thread::Msg;

/// The exit status after Ctrl-C, as shells give a process killed by SIGINT (128 + 2).
pub(super) const INTERRUPTED: u8 = 130;

/// What the signal thread shares with the runs.
#[derive(Clone)]
pub(super) struct CtrlC {
    pressed: Arc<AtomicBool>,
    /// The channel of the run being measured, if one is.
    current: Arc<Mutex<Option<mpsc::Sender<Msg>>>>,
}

impl CtrlC {
    /// Starts taking SIGINT.
    pub(super) fn install() -> io::Result<CtrlC> {
        let ctrl = CtrlC {
            pressed: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
        };
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
        let shared = ctrl.clone();
        std::thread::Builder::new()
            .name("echoloop-bench-sigint".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if shared.pressed.swap(true, Ordering::SeqCst) {
                        std::process::exit(i32::from(INTERRUPTED));
                    }
                    let current = shared
                        .current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(tx) = current.as_ref() {
                        let _ = tx.send(Msg::Interrupted);
                    }
                }
            })?;
        Ok(ctrl)
    }

    /// Whether Ctrl-C was pressed.
    pub(super) fn pressed(&self) -> bool {
        self.pressed.load(Ordering::SeqCst)
    }

    /// Tells the run whose channel `tx` is about Ctrl-C until the guard is dropped. A
    /// press that came before is told at once.
    pub(super) fn watch(&self, tx: mpsc::Sender<Msg>) -> Watch<'_> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if self.pressed() {
            let _ = tx.send(Msg::Interrupted);
        }
        *current = Some(tx);
        Watch(self)
    }
}

/// While alive, Ctrl-C reaches one run.
pub(super) struct Watch<'a>(&'a CtrlC);

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        // The run's channel is dropped with it, so the run's receiver sees its end.
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}
