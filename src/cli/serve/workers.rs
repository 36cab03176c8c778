//! `echoloop serve --workers N`: starting N loops on N threads, taking the signals for all
//! of them and joining them at the end. Kept apart because it is the only part of the
//! server that manages threads.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use echoloop::event_loop::{HANDLED_SIGNALS, SignalAction, SignalPolicy};
use echoloop::{Bound, Config, EventLoop, StopHandle};

use super::listeners::{Spec, announce, bind_all};
use super::live::{Board, Sampler};
use super::metrics::RenderCache;
use super::server_loop::{Report, ServeState, serve_loop};
use crate::cli::common::CliError;

/// `--workers N`: N reactors on N threads. The first binds (choosing ports where 0 was
/// asked); the others bind the same addresses through SO_REUSEPORT. The main thread takes
/// the signals (SIGINT/SIGTERM/SIGHUP stop them all, SIGUSR1 prints the whole server's
/// statistics) and, with `--stats-interval`, a printer thread reports on the whole server.
pub(crate) fn run_workers(
    workers: usize,
    grace: Duration,
    config: Config,
    specs: Vec<Spec>,
    tls: Option<Arc<rustls::ServerConfig>>,
    board: Arc<Board>,
    report: Report,
) -> Result<ExitCode, CliError> {
    // Block the signals' default action before any thread starts.
    let mut signals = signal_hook::iterator::Signals::new(HANDLED_SIGNALS)?;
    let mut handles = Vec::new();
    let mut stops: Vec<StopHandle> = Vec::new();
    let mut specs = specs;
    let mut first_bound = Vec::new();
    let proxy = report.proxy;
    for w in 0..workers {
        let (tx, rx) = mpsc::channel::<Result<(Vec<Option<Bound>>, StopHandle), String>>();
        let config = config.clone();
        let worker_specs = specs.clone();
        let tls = tls.clone();
        let state = ServeState {
            board: Arc::clone(&board),
            worker: w,
            sampler: Sampler::new(report.json, board.started),
            proxy,
            metrics_page: RenderCache::default(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("echoloop-worker-{w}"))
            .spawn(move || -> Result<echoloop::Stats, String> {
                let setup = EventLoop::with_state(config, state)
                    .map_err(|e| e.to_string())
                    .and_then(|mut el| {
                        let b = bind_all(&mut el, &worker_specs, tls.as_ref(), w == 0)
                            .map_err(|e| e.to_string())?;
                        Ok((el, b))
                    });
                match setup {
                    Ok((mut el, b)) => {
                        let _ = tx.send(Ok((b, el.stop_handle())));
                        serve_loop(&mut el, None).map_err(|e| e.to_string())?;
                        Ok(el.stats())
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        Err(e)
                    }
                }
            })?;
        handles.push(handle);
        let (bound, stop) = match rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                stop_all(&stops, Duration::ZERO);
                return Err(e.into());
            }
            Err(_) => {
                stop_all(&stops, Duration::ZERO);
                return Err("worker thread failed to start".into());
            }
        };
        stops.push(stop);
        if w == 0 {
            // Later workers bind the real addresses (the ports chosen for port 0).
            for (s, b) in specs.iter_mut().zip(&bound) {
                if let (Some(b), None) = (b, &s.fd) {
                    s.addr = b.addr.clone();
                }
            }
            first_bound = bound;
        }
    }
    // Only now is every worker's socket in the kernel's SO_REUSEPORT group: a client
    // that connects on reading these lines can reach any of them.
    announce(&specs, &first_bound)?;
    log::info!("{workers} workers running");
    let printer = report.interval.map(|every| {
        let board = Arc::clone(&board);
        let (quit, quit_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut sampler = Sampler::new(report.json, board.started);
            let mut next = Instant::now() + every;
            // A message or a hang-up on `quit_rx` ends it; a timeout is the next line.
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                quit_rx.recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                errln!("{}", sampler.interval(&board.total(None)));
                next += every;
            }
        });
        (quit, thread)
    });
    let summary = Sampler::new(report.json, board.started);
    // The workers are joined on a thread of their own, which then ends the signal loop
    // below: signals keep their meaning during the grace period (a second one stops at
    // once, SIGUSR1 still reports), and workers that end on their own end the server.
    let closer = signals.handle();
    let joiner = std::thread::spawn(move || {
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        closer.close();
        results
    });
    let mut policy = SignalPolicy::new(grace);
    for sig in signals.forever() {
        match policy.on_signal(sig) {
            SignalAction::Report => errln!("{}", summary.summary(&board.total(None))),
            SignalAction::Stop(grace) => stop_all(&stops, grace),
            _ => {}
        }
    }
    let results = joiner
        .join()
        .map_err(|_| CliError::from("the thread joining the workers failed"))?;
    let mut failed = false;
    let mut total = echoloop::Stats::default();
    for (w, h) in results.into_iter().enumerate() {
        match h {
            // One line per worker, so an operator (and the tests) can see the kernel
            // spread the load across the reactors.
            Ok(Ok(st)) => {
                log::info!(
                    "worker {w}: {} connections accepted, {} datagrams received",
                    st.accepted,
                    st.datagrams_in
                );
                total = total.merged(&st);
            }
            Ok(Err(e)) => {
                log::error!("worker: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    if let Some((quit, thread)) = printer {
        drop(quit);
        let _ = thread.join();
        errln!("{}", summary.final_summary(&total));
    }
    log::info!("stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn stop_all(stops: &[StopHandle], grace: Duration) {
    for s in stops {
        s.stop(grace);
    }
}
