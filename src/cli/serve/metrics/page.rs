//! The metrics page: the whole server's counters in Prometheus's text format. Kept apart
//! from the HTTP side, which only decides when a page is rendered and sends it.

use std::fmt::Write as _;
use std::time::Instant;

use echoloop::stats::Stats;

/// The Prometheus text exposition (format 0.0.4) of `s`.
pub(crate) fn render(s: &Stats, started: Instant) -> String {
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "echoloop_connections_open",
        "gauge",
        "Stream connections open now.",
        &one(s.connections_open),
    );
    metric(
        "echoloop_connections_accepted_total",
        "counter",
        "Stream connections accepted.",
        &one(s.accepted),
    );
    metric(
        "echoloop_connections_proxied_total",
        "counter",
        "Connections whose PROXY protocol header was read (--proxy-protocol).",
        &one(s.proxied),
    );
    metric(
        "echoloop_connections_rejected_total",
        "counter",
        "Connections accepted and closed at once because --max-connections was reached.",
        &one(s.rejected),
    );
    let closed: Vec<(String, u64)> = s
        .closed_by
        .iter()
        .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), *v))
        .collect();
    metric(
        "echoloop_connections_closed_total",
        "counter",
        "Stream connections closed, by reason.",
        &closed,
    );
    let per = |f: fn(&echoloop::stats::Traffic) -> u64| -> Vec<(String, u64)> {
        s.traffic
            .iter()
            .map(|(t, tr)| (format!("{{transport=\"{}\"}}", t.name()), f(tr)))
            .collect()
    };
    metric(
        "echoloop_received_bytes_total",
        "counter",
        "Bytes read from sockets (ciphertext for TLS), by transport.",
        &per(|t| t.bytes_in),
    );
    metric(
        "echoloop_sent_bytes_total",
        "counter",
        "Bytes written to sockets (ciphertext for TLS), by transport.",
        &per(|t| t.bytes_out),
    );
    let dgram = |f: fn(&echoloop::stats::Traffic) -> u64| -> Vec<(String, u64)> {
        s.traffic
            .iter()
            .filter(|(t, _)| {
                matches!(
                    t,
                    echoloop::stats::Transport::Udp | echoloop::stats::Transport::UnixDgram
                )
            })
            .map(|(t, tr)| (format!("{{transport=\"{}\"}}", t.name()), f(tr)))
            .collect()
    };
    metric(
        "echoloop_datagrams_received_total",
        "counter",
        "Datagrams received, by transport.",
        &dgram(|t| t.datagrams_in),
    );
    metric(
        "echoloop_datagrams_sent_total",
        "counter",
        "Datagrams sent, by transport.",
        &dgram(|t| t.datagrams_out),
    );
    metric(
        "echoloop_datagrams_dropped_total",
        "counter",
        "Datagrams dropped: a full send queue, a send error, or a sender with no address.",
        &one(s.datagrams_dropped),
    );
    metric(
        "echoloop_datagrams_refused_total",
        "counter",
        "UDP datagrams dropped unanswered because their source port is loop-prone (--udp-drop-ports).",
        &one(s.datagrams_refused),
    );
    metric(
        "echoloop_tls_handshakes_total",
        "counter",
        "TLS handshakes, by result.",
        &[
            ("{result=\"ok\"}".into(), s.tls_handshakes_ok),
            ("{result=\"failed\"}".into(), s.tls_handshakes_failed),
        ],
    );
    metric(
        "echoloop_accept_errors_total",
        "counter",
        "accept() calls that failed (out of descriptors, aborted connections...).",
        &one(s.accept_errors),
    );
    metric(
        "echoloop_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        &one(started.elapsed().as_secs()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use echoloop::stats::Stats;

    #[test]
    fn metrics_exposition_has_help_and_type_for_every_sample() {
        let mut s = Stats::default();
        s.accepted = 3;
        let text = render(&s, std::time::Instant::now());
        assert!(
            text.contains("echoloop_connections_accepted_total 3\n"),
            "{text}"
        );
        assert!(text.contains("echoloop_connections_closed_total{reason=\"done\"} 0\n"));
        assert!(text.contains("echoloop_received_bytes_total{transport=\"tcp\"} 0\n"));
        let mut named = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                named.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(named.contains(name), "sample before its TYPE: {line}");
            }
        }
    }
}
