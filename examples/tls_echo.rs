//! cargo run --example tls_echo -- [--trace]
//! cargo run --example tls_echo -- --wrong-name [--trace]
//!
//! TLS done right, server and client in one loop. The example makes its own tiny PKI (a
//! CA and a certificate for `localhost`), then:
//! - the server loads the certificate chain and key into a secure default context
//!   (TLS 1.2/1.3 only) and wraps only the sockets it accepts, never the listener;
//! - the client trusts that CA and checks that the certificate names `localhost`, the
//!   name it meant to reach. There is no switch to skip that check.
//!
//! `--wrong-name` shows the check at work: the client asks for `wrong.example`, a name
//! the certificate does not carry, though it is signed by the CA the client trusts. The
//! handshake fails, `on_open` never runs, and `on_close` receives rustls's error, which
//! says why; the example prints it and exits 1.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use echoloop::tls_config::{
    ClientTlsOptions, ServerTlsOptions, client_config, server_config, server_name,
};
use echoloop::trace::Tracer;
use echoloop::{
    CloseReason, Config, ConnectOptions, Ctx, Echo, Endpoint, EventLoop, Handler, ListenKind,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Sends one message over TLS and reports what came back.
struct Client {
    /// The name the client expects the server's certificate to carry.
    name: &'static str,
    message: Vec<u8>,
    received: Vec<u8>,
    report: mpsc::Sender<Result<Vec<u8>, String>>,
}

impl Handler for Client {
    fn on_open(&mut self, ctx: &mut Ctx<'_>) {
        // on_open comes after the handshake: the server is verified by now.
        println!(
            "handshake done: server certificate verified for {}",
            self.name
        );
        ctx.send(&self.message);
        // Half-close: close_notify, then FIN. The server echoes and closes its side.
        ctx.shutdown_write();
    }

    fn on_data(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) {
        self.received.extend_from_slice(data);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, reason: &CloseReason) {
        let result = match reason {
            CloseReason::Done => Ok(std::mem::take(&mut self.received)),
            // The handshake stopped at the check: rustls's error says what failed.
            CloseReason::Tls(e @ rustls::Error::InvalidCertificate(_)) => Err(format!(
                "certificate verification failed (the client asked for {}): {e}",
                self.name
            )),
            other => Err(other.to_string()),
        };
        let _ = self.report.send(result);
        ctx.stop_loop(Duration::from_secs(1));
    }
}

fn main() -> ExitCode {
    let (args, trace) = common::setup();
    let name = match args.as_slice() {
        [] => "localhost",
        [flag] if flag == "--wrong-name" => "wrong.example",
        _ => {
            eprintln!("tls_echo: usage: tls_echo [--wrong-name] [--trace]");
            return ExitCode::FAILURE;
        }
    };
    match run(name, trace) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(name: &'static str, trace: Option<Tracer>) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("echoloop-tls-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, name, trace);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &Path,
    name: &'static str,
    trace: Option<Tracer>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (ca, chain, key) = make_pki(dir)?;
    let server_cfg = server_config(&ServerTlsOptions {
        cert_chain: &chain,
        key: &key,
        client_ca: None,
    })?;
    let client_cfg = client_config(&ClientTlsOptions {
        ca: Some(&ca),
        client_cert: None,
    })?;

    let mut config = Config::default();
    config.trace = trace;
    let mut el = EventLoop::new(config)?;
    let bound = el.listen(
        &Endpoint::Inet("127.0.0.1:0".parse()?),
        ListenKind::Tls(server_cfg),
        || Box::new(Echo),
    )?;
    println!("listening tls {}", bound.addr);
    let (tx, rx) = mpsc::channel();
    let message = b"hello over TLS".to_vec();
    let client = Client {
        name,
        message: message.clone(),
        received: Vec::new(),
        report: tx,
    };
    let opts = ConnectOptions::new()
        .timeout(Duration::from_secs(5))
        .tls(client_cfg, server_name(name)?);
    el.connect(&bound.addr, opts, Box::new(client));
    el.run()?;
    let echoed = rx.try_recv().map_err(|_| "client reported nothing")??;
    if echoed != message {
        return Err(format!("echo mismatch: {:?}", String::from_utf8_lossy(&echoed)).into());
    }
    println!("RCVD {}", String::from_utf8_lossy(&echoed));
    Ok(())
}

/// Writes a CA certificate, a server chain for `localhost` and its key; returns their paths.
fn make_pki(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &ca)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, server_cert.pem())?;
    std::fs::write(&paths.2, server_key.serialize_pem())?;
    Ok(paths)
}
