//! One serving worker: the state its loop carries (where the whole server's numbers are,
//! how to report them) and the loop it runs. Kept apart so that a server of one worker
//! and one of `--workers N` (`workers`) run the very same loop.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use echoloop::EventLoop;

use super::live::{Board, Sampler};
use super::metrics::{RenderCache, StatsSource};

/// How often each worker publishes its counters for the whole-server views (the stats
/// line and the metrics of `--workers`).
const PUBLISH: Duration = Duration::from_millis(200);

/// The loop state of a serving worker: where the whole server's numbers are, and how to
/// report them.
#[derive(Debug)]
pub(crate) struct ServeState {
    pub(crate) board: Arc<Board>,
    pub(crate) worker: usize,
    pub(crate) sampler: Sampler,
    /// `--proxy-protocol`.
    pub(crate) proxy: bool,
    /// The metrics page of this turn, for every scrape in it.
    pub(crate) metrics_page: RenderCache,
}

impl StatsSource for ServeState {
    fn server_stats(&self, own: echoloop::Stats) -> echoloop::Stats {
        self.board.total(Some((self.worker, own)))
    }
    fn started(&self) -> Instant {
        self.board.started
    }
    fn render_cache(&mut self) -> &mut RenderCache {
        &mut self.metrics_page
    }
}

/// What `--stats-interval` and `--stats-json` ask for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) interval: Option<Duration>,
    pub(crate) json: bool,
    pub(crate) proxy: bool,
}

/// Runs a worker's loop until it stops, publishing its counters for the whole-server
/// views and, with one worker and `--stats-interval`, printing the interval lines.
pub(crate) fn serve_loop(
    el: &mut EventLoop<ServeState>,
    print_every: Option<Duration>,
) -> io::Result<()> {
    let start = Instant::now();
    let mut next_publish = start + PUBLISH;
    let mut next_print = print_every.map(|d| start + d);
    // No clock read of our own: the loop's (read once per turn) stands for the time
    // between turns; a busy-polling loop turns every microsecond or so.
    loop {
        let until = next_print.map_or(next_publish, |p| p.min(next_publish));
        if !el.run_once(Some(until.saturating_duration_since(el.now())))? {
            break;
        }
        let now = el.now();
        if now >= next_publish {
            let (w, s) = (el.state().worker, el.stats());
            el.state().board.publish(w, s);
            next_publish = now + PUBLISH;
        }
        if let (Some(at), Some(every)) = (next_print, print_every) {
            if now >= at {
                let s = el.stats();
                let line = el.state_mut().sampler.interval(&s);
                errln!("{line}");
                // From the planned time, so the lines keep their rhythm.
                next_print = Some(at + every).filter(|t| *t > now).or(Some(now + every));
            }
        }
    }
    let (w, s) = (el.state().worker, el.stats());
    el.state().board.publish(w, s);
    Ok(())
}
