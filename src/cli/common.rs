//! What the subcommands share: the transports they speak, their error type, logging.

/// The transports `client` and `bench` speak: the library's own ([`crate::stats`]), read
/// from the command line as `tcp`, `udp`, `tls`, `unix` and `unix-dgram`.
pub use crate::stats::Transport;

impl clap::ValueEnum for Transport {
    fn value_variants<'a>() -> &'a [Self] {
        // The order `--help` lists them in.
        &[
            Transport::Tcp,
            Transport::Udp,
            Transport::Tls,
            Transport::Unix,
            Transport::UnixDgram,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
            Transport::Tls => "TLS over TCP",
            Transport::Unix => "Unix stream socket",
            Transport::UnixDgram => "Unix datagram socket",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

/// The host part of `host:port` as written: `[::1]:443` gives `[::1]` (the brackets are
/// kept, as [`crate::tls_config::server_name`] takes an IPv6 address in them), `host:443`
/// gives `host`. Without a port (`[::1]`, `host`, or a bare IPv6 address such as `::1`,
/// whose colons are its own) the whole text is the host.
pub(crate) fn host_of(addr: &str) -> &str {
    if addr.starts_with('[') {
        return addr.find(']').map_or(addr, |close| &addr[..=close]);
    }
    match addr.split_once(':') {
        // Exactly one colon: it separates the port.
        Some((host, port)) if !port.contains(':') => host,
        _ => addr,
    }
}

/// A boxed error for the command line: its Display is the one line the user sees.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Sets up logging to standard error at `level`, through the outlet that never blocks
/// the loop ([`super::outlet`]): each line queued whole, written by another thread.
pub fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    // Fails only if a logger is already set, which is harmless.
    let _ = simplelog::WriteLogger::init(level, config, super::outlet::LineWriter::new());
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

/// The TLS client options `client` and `bench` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsClientArgs {
    /// TLS: trust the CAs in this PEM file instead of the system's root store.
    #[arg(long, value_name = "CA.pem")]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// TLS: the name the server's certificate must carry (default: the host part of ADDR).
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// TLS: present this client certificate chain (for servers that require one).
    #[arg(long, value_name = "CHAIN.pem", requires = "key")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// TLS: private key of --cert.
    #[arg(long, value_name = "KEY.pem", requires = "cert")]
    pub(crate) key: Option<std::path::PathBuf>,
}

impl TlsClientArgs {
    /// The options given, by name, for "applies to tls only" checks.
    pub(crate) fn given(&self) -> Vec<&'static str> {
        [
            ("--ca", self.ca.is_some()),
            ("--server-name", self.server_name.is_some()),
            ("--cert", self.cert.is_some()),
            ("--key", self.key.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// What [`crate::tls_config::client_config`] takes.
    pub(crate) fn options(&self) -> crate::tls_config::ClientTlsOptions<'_> {
        crate::tls_config::ClientTlsOptions {
            ca: self.ca.as_deref(),
            client_cert: self.cert.as_deref().zip(self.key.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;
    use crate::tls_config::server_name;

    #[test]
    fn host_of_keeps_ipv6_brackets_and_drops_the_port() {
        for (addr, host) in [
            ("[::1]:443", "[::1]"),
            ("[::1]", "[::1]"),
            ("[fe80::1%2]:7", "[fe80::1%2]"),
            ("localhost:443", "localhost"),
            ("127.0.0.1:1", "127.0.0.1"),
            ("localhost", "localhost"),
            ("::1", "::1"),
            ("", ""),
            ("[::1", "[::1"),
        ] {
            assert_eq!(host_of(addr), host, "{addr:?}");
        }
        // What it gives is what the TLS name parser takes.
        for addr in [
            "[::1]:443",
            "[::1]",
            "localhost:443",
            "localhost",
            "127.0.0.1:1",
        ] {
            assert!(server_name(host_of(addr)).is_ok(), "{addr:?}");
        }
    }
}
