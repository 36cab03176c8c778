//! What the subcommands share: the transports they speak, their error type, logging.

/// The transports `client` and `bench` speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// TLS over TCP.
    Tls,
    /// Unix stream socket.
    Unix,
    /// Unix datagram socket.
    #[value(name = "unix-dgram")]
    UnixDgram,
}

impl Transport {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Tls => "tls",
            Transport::Unix => "unix",
            Transport::UnixDgram => "unix-dgram",
        }
    }

    /// A byte stream (TCP, TLS, Unix stream) rather than datagrams.
    pub fn is_stream(self) -> bool {
        !self.is_datagram()
    }

    /// Datagrams (UDP, Unix datagram).
    pub fn is_datagram(self) -> bool {
        matches!(self, Transport::Udp | Transport::UnixDgram)
    }

    /// Addressed by IP and port (not a Unix socket name).
    pub fn is_ip(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls | Transport::Udp)
    }
}

/// A boxed error for the command line: its Display is the one line the user sees.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Sets up logging to standard error at `level`.
pub fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    // Fails only if a logger is already set, which is harmless.
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}

/// Parses a log level name for clap.
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse::<log::LevelFilter>()
        .map_err(|_| format!("invalid log level {s:?}: use off, error, warn, info, debug or trace"))
}

/// The `--busy-poll` help shared by `serve` and `bench`.
pub(super) const BUSY_POLL_HELP: &str = "Idle strategy: after the last event, keep polling without sleeping for this long \
(50us, 1ms, 2s) before blocking in epoll_wait. Trades a core for latency: it helps with few \
connections whose messages come closer together than the window. 0 (the default) blocks at once.";

/// How a loop with this busy-poll window waits, as reports name it.
pub fn idle_strategy(busy_poll: Option<std::time::Duration>) -> String {
    match busy_poll.filter(|d| !d.is_zero()) {
        Some(d) => format!("busy-poll {d:?}"),
        None => "block".to_string(),
    }
}
