//! What the subcommands share: the transports they speak, their error type, logging.

/// The transports `client` and `bench` speak: the library's own ([`echoloop::stats`]), read
/// from the command line as `tcp`, `udp`, `tls`, `unix` and `unix-dgram`.
pub use echoloop::stats::Transport;

/// The transports in the order `--help` lists them, with their help.
const TRANSPORTS: [(Transport, &str); 5] = [
    (Transport::Tcp, "TCP"),
    (Transport::Udp, "UDP"),
    (Transport::Tls, "TLS over TCP"),
    (Transport::Unix, "Unix stream socket"),
    (Transport::UnixDgram, "Unix datagram socket"),
];

/// Reads a [`Transport`] from the command line by its name, and lists the names in
/// `--help` and in the error for a wrong one (the library's type, so the command line
/// cannot derive clap's `ValueEnum` for it).
#[derive(Debug, Clone, Copy)]
pub struct TransportArg;

impl TransportArg {
    fn values() -> impl Iterator<Item = clap::builder::PossibleValue> {
        TRANSPORTS
            .iter()
            .map(|(t, help)| clap::builder::PossibleValue::new(t.name()).help(*help))
    }
}

impl clap::builder::TypedValueParser for TransportArg {
    type Value = Transport;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Transport, clap::Error> {
        // clap's own parser for a closed list gives the usual error, values listed.
        let name =
            clap::builder::PossibleValuesParser::new(Self::values()).parse_ref(cmd, arg, value)?;
        TRANSPORTS
            .iter()
            .find(|(t, _)| t.name() == name)
            .map(|(t, _)| *t)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(Self::values()))
    }
}

/// The host part of `host:port` as written: `[::1]:443` gives `[::1]` (the brackets are
/// kept, as [`echoloop::tls_config::server_name`] takes an IPv6 address in them), `host:443`
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

/// `--trace`: every decision of the loop as a line on stderr (`trace: …`), through the
/// outlet, so a slow terminal costs dropped lines (counted), never a stalled loop.
pub fn tracer() -> echoloop::trace::Tracer {
    echoloop::trace::Tracer::new(|ev| super::outlet::line(format!("trace: {ev}")))
}

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

    /// What [`echoloop::tls_config::client_config`] takes.
    pub(crate) fn options(&self) -> echoloop::tls_config::ClientTlsOptions<'_> {
        echoloop::tls_config::ClientTlsOptions {
            ca: self.ca.as_deref(),
            client_cert: self.cert.as_deref().zip(self.key.as_deref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;
    use echoloop::tls_config::server_name;

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
