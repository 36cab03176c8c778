//! Building rustls configurations from PEM files.
//!
//! The echo server and client speak TLS through [`rustls`]. This module turns
//! the files named on the command line (certificate chain, private key, CA
//! bundle) into a ready [`rustls::ServerConfig`] or [`rustls::ClientConfig`],
//! and turns every way those files can be wrong into a one-line
//! [`TlsConfigError`] that names the file and says what to fix.
//!
//! It is also the place to learn the handful of TLS ideas the crate relies on:
//!
//! * **A default secure context.** Both configurations start from the `ring`
//!   crypto provider's defaults and [`with_safe_default_protocol_versions`]:
//!   TLS 1.2 and 1.3 only, forward-secret key exchange, AEAD ciphers only, no
//!   renegotiation, no compression. Nothing here weakens those defaults; the
//!   only knobs are *which* certificates to present and *which* CAs to trust.
//!
//! * **Certificates on the server.** A server proves who it is by presenting
//!   a certificate chain (its own certificate first, then any intermediates)
//!   and by signing the handshake with the private key that belongs to the
//!   first certificate. [`server_config`] checks that pairing up front, so a
//!   swapped or stale key file is reported at start-up as
//!   [`TlsConfigError::KeyMismatch`] instead of as a mysterious handshake
//!   failure on the first connection. The names a client may use to reach the
//!   server must be in the certificate's *subjectAltName*; the legacy
//!   *commonName* is ignored. With [`ServerTlsOptions::client_ca`] the server
//!   additionally demands a client certificate issued by that CA (mutual TLS).
//!
//! * **Hostname verification on the client.** A valid chain only proves that
//!   *some* CA vouched for *some* name. The client must also check that the
//!   certificate names the host it meant to reach, otherwise any certificate
//!   from the same CA would be accepted. rustls always does both checks against
//!   the [`ServerName`] given when a connection is created; build one with
//!   [`server_name`]. The trusted CAs come from [`ClientTlsOptions::ca`] or,
//!   when that is absent, from the operating system's certificate store.
//!
//! * **Why there is no "skip verification" switch.** Without verification TLS
//!   still encrypts, but against nobody in particular: an active
//!   man-in-the-middle simply presents its own certificate and reads
//!   everything. Such switches also tend to escape from tests into
//!   production. For private or self-signed setups the right tool is to trust
//!   exactly the CA that issued the server's certificate with `--ca FILE`,
//!   which is just as easy and keeps the protection.
//!
//! Session resumption is on for both sides: the server issues TLS 1.3 session
//! tickets (and keeps rustls' default in-memory session cache for TLS 1.2),
//! and the client keeps rustls' default resumption store, so reconnecting to
//! the same server skips the certificate exchange.
//!
//! [`with_safe_default_protocol_versions`]: rustls::ConfigBuilder::with_safe_default_protocol_versions

use std::fmt;
use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};

/// What a file was supposed to contain; used to word [`TlsConfigError::Read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileRole {
    /// A certificate chain (server certificate or client certificate).
    Certificate,
    /// A private key belonging to a certificate.
    PrivateKey,
    /// CA certificates to trust when verifying the peer.
    Ca,
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::Certificate => "certificate",
            FileRole::PrivateKey => "private key",
            FileRole::Ca => "CA certificate",
        })
    }
}

/// Errors loading TLS material.
///
/// Each message is one line, names the file involved and says what is wrong
/// with it, so it can be shown to the user as is.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read (missing, unreadable, a directory, ...).
    Read {
        /// What the file was supposed to contain.
        role: FileRole,
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A certificate file contains no PEM `CERTIFICATE` block.
    NoCertificates {
        /// The file that was searched.
        path: PathBuf,
    },
    /// A key file contains no PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM private key.
    NoPrivateKey {
        /// The file that was searched.
        path: PathBuf,
    },
    /// A file is not well-formed PEM, or a certificate in it is not valid DER.
    BadPem {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A private key was found but the crypto provider cannot use it
    /// (unsupported algorithm or curve, RSA key too small, or corrupt DER).
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key does not belong to the first certificate of the chain.
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A CA file cannot be used as a set of trust anchors.
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No CA file was given and the system certificate store yielded no
    /// usable root certificates.
    NoRootCertificates,
    /// A string is neither a valid DNS name nor an IP address.
    InvalidServerName {
        /// The rejected input.
        name: String,
    },
    /// Any other error reported by rustls.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { role, path, source } => {
                write!(f, "cannot read {role} file {}: {source}", path.display())
            }
            Self::NoCertificates { path } => write!(
                f,
                "no certificate found in {}: expected PEM blocks starting with \
                 '-----BEGIN CERTIFICATE-----' (DER files must be converted to PEM)",
                path.display()
            ),
            Self::NoPrivateKey { path } => write!(
                f,
                "no private key found in {}: expected an unencrypted PEM key \
                 ('BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY' or 'BEGIN EC PRIVATE KEY')",
                path.display()
            ),
            Self::BadPem { path, detail } => {
                write!(f, "invalid PEM file {}: {detail}", path.display())
            }
            Self::UnsupportedKey { path } => write!(
                f,
                "unusable private key in {}: expected an RSA (2048 bits or more), \
                 ECDSA P-256/P-384 or Ed25519 key",
                path.display()
            ),
            Self::KeyMismatch { cert, key } => write!(
                f,
                "private key {} does not match certificate {}: use the key the certificate \
                 was issued for, and put that certificate first in the chain file",
                key.display(),
                cert.display()
            ),
            Self::BadCa { path, detail } => {
                write!(f, "unusable CA file {}: {detail}", path.display())
            }
            Self::NoRootCertificates => f.write_str(
                "no trusted root certificates: the system certificate store is empty or \
                 unreadable; pass --ca FILE with the CA certificate(s) to trust",
            ),
            Self::InvalidServerName { name } => write!(
                f,
                "invalid server name {name:?}: expected a DNS name (example.com) or an IP address"
            ),
            Self::Rustls(err) => write!(f, "TLS configuration error: {err}"),
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Rustls(err) => Some(err),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsConfigError {
    fn from(err: rustls::Error) -> Self {
        Self::Rustls(err)
    }
}

/// Files that make up a server's TLS identity, plus optional client authentication.
#[derive(Debug, Clone, Copy)]
pub struct ServerTlsOptions<'a> {
    /// PEM file with the server certificate first, followed by any intermediates.
    pub cert_chain: &'a Path,
    /// PEM file with the private key of the first certificate in `cert_chain`.
    pub key: &'a Path,
    /// PEM file with CA certificates; when set, every client must present a
    /// certificate issued by one of them (mutual TLS).
    pub client_ca: Option<&'a Path>,
}

/// Which servers a client trusts, and optionally the client's own identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTlsOptions<'a> {
    /// PEM file with the CA certificates to trust. `None` means the operating
    /// system's certificate store.
    pub ca: Option<&'a Path>,
    /// `(certificate chain, private key)` PEM files to present when the server
    /// asks for a client certificate.
    pub client_cert: Option<(&'a Path, &'a Path)>,
}

/// The cryptography rustls runs on: *ring*, which builds without a C toolchain beyond the
/// system's (aws-lc-rs needs cmake). rustls 0.23.48 deprecates *ring*'s default provider
/// because it offers no post-quantum key exchange; until the crate moves to a provider that
/// does, the warning is silenced here, once, instead of in every embedder's build.
#[allow(deprecated)]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    ring::default_provider()
}

/// Builds the server configuration described by `opts`.
///
/// Loads and cross-checks the certificate chain and key, and, if
/// [`ServerTlsOptions::client_ca`] is set, requires client certificates issued
/// by that CA. TLS 1.3 session tickets are enabled so clients can resume.
pub fn server_config(opts: &ServerTlsOptions<'_>) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(crypto_provider());
    let identity = load_certified_key(&provider, opts.cert_chain, opts.key)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match opts.client_ca {
        Some(ca) => {
            let roots = Arc::new(load_ca_store(ca)?);
            // The builder's default policy rejects clients without a certificate.
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|err| TlsConfigError::BadCa {
                    path: ca.to_path_buf(),
                    detail: err.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };

    // `with_single_cert` would check the key too, but would only report a bare
    // rustls error; the pair was already checked above with file names at hand.
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(identity)));
    // Without a ticketer the server never issues TLS 1.3 tickets, and TLS 1.3
    // clients (rustls included) only resume with tickets.
    config.ticketer = ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Builds the client configuration described by `opts`.
///
/// Server certificates are always verified, including the host name; see the
/// module documentation for why that cannot be turned off. Without
/// [`ClientTlsOptions::ca`] the system certificate store is used.
pub fn client_config(opts: &ClientTlsOptions<'_>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(crypto_provider());
    let roots = match opts.ca {
        Some(ca) => load_ca_store(ca)?,
        None => native_roots()?,
    };

    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match opts.client_cert {
        Some((chain, key)) => {
            let identity = load_certified_key(&provider, chain, key)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity)))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Reads every PEM `CERTIFICATE` block from `path`, in file order.
///
/// Other PEM blocks (such as a private key in a combined file) are skipped.
/// Fails with [`TlsConfigError::NoCertificates`] if there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path, FileRole::Certificate)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsConfigError::BadPem {
            path: path.to_path_buf(),
            detail: describe_pem_error(&err),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key from `path`.
///
/// Accepts unencrypted PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 RSA
/// (`BEGIN RSA PRIVATE KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`) keys. The
/// key is only decoded here; whether the crypto provider supports it is
/// checked when a configuration is built.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let mut pem = read_file(path, FileRole::PrivateKey)?;
    let key = PrivateKeyDer::pem_slice_iter(&pem).next();
    // Best effort: don't leave a second copy of the key in freed heap memory.
    pem.fill(0);
    std::hint::black_box(&pem);
    match key {
        Some(Ok(key)) => Ok(key),
        Some(Err(err)) => Err(TlsConfigError::BadPem {
            path: path.to_path_buf(),
            detail: describe_pem_error(&err),
        }),
        None => Err(TlsConfigError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
    }
}

/// Parses the name a client verifies the server's certificate against.
///
/// Accepts a DNS name (`localhost`, `example.com`) or an IP address
/// (`127.0.0.1`, `::1`, or `[::1]` as written in URLs).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsConfigError> {
    let invalid = || TlsConfigError::InvalidServerName {
        name: name.to_owned(),
    };
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        // Brackets only make sense around an IPv6 address.
        return inner
            .parse::<Ipv6Addr>()
            .map(ServerName::from)
            .map_err(|_| invalid());
    }
    ServerName::try_from(name)
        .map(|parsed| parsed.to_owned())
        .map_err(|_| invalid())
}

/// Reads a whole file, tagging failures with what the file was for.
fn read_file(path: &Path, role: FileRole) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a certificate chain and its key, and checks that they belong together.
fn load_certified_key(
    provider: &CryptoProvider,
    chain_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsConfigError> {
    let chain = load_certs(chain_path)?;
    let key = load_private_key(key_path)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|_| {
        TlsConfigError::UnsupportedKey {
            path: key_path.to_path_buf(),
        }
    })?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key cannot report its public half; rustls accepts
        // such keys too (ring's keys always can, so this is for completeness).
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsConfigError::KeyMismatch {
            cert: chain_path.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
        // keys_match parses the end-entity certificate, so garbage DER shows up here.
        Err(rustls::Error::InvalidCertificate(err)) => Err(TlsConfigError::BadPem {
            path: chain_path.to_path_buf(),
            detail: format!("the first certificate is not a valid X.509 certificate ({err:?})"),
        }),
        Err(err) => Err(err.into()),
    }
}

/// Loads every certificate in a CA file as a trust anchor.
///
/// Unlike the system store, a file the user named explicitly must be usable
/// in full: one bad certificate is an error rather than silently skipped.
fn load_ca_store(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let bad_ca = |detail: String| TlsConfigError::BadCa {
        path: path.to_path_buf(),
        detail,
    };
    let pem = read_file(path, FileRole::Ca)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|err| bad_ca(describe_pem_error(&err)))?;
        roots.add(cert).map_err(|err| {
            bad_ca(format!(
                "certificate #{} cannot be used as a trust anchor: {err}",
                index + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(bad_ca(
            "it contains no PEM certificate (expected '-----BEGIN CERTIFICATE-----' blocks)"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// Loads the operating system's trusted root certificates.
///
/// A partly broken system store is common (one unreadable bundle, a few odd
/// certificates), so problems are logged and whatever loads is used; only an
/// empty result is an error.
fn native_roots() -> Result<RootCertStore, TlsConfigError> {
    let rustls_native_certs::CertificateResult { certs, errors, .. } =
        rustls_native_certs::load_native_certs();
    for err in &errors {
        log::warn!("loading system root certificates: {err}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        log::warn!("ignored {ignored} unparsable certificate(s) in the system certificate store");
    }
    log::debug!("loaded {added} root certificate(s) from the system certificate store");
    if roots.is_empty() {
        return Err(TlsConfigError::NoRootCertificates);
    }
    Ok(roots)
}

/// Words a PEM parse error for a user: pki-types prints offending lines as
/// byte arrays, which is unreadable.
fn describe_pem_error(err: &pem::Error) -> String {
    match err {
        // `end_marker` holds just the label, e.g. `CERTIFICATE`.
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is missing its '-----END {}-----' line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed PEM begin line {:?}",
            String::from_utf8_lossy(line).trim_end()
        ),
        pem::Error::Base64Decode(detail) => format!("invalid base64 in a PEM block: {detail}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::{ClientConnection, HandshakeKind, ServerConnection};

    use super::{
        Arc, ClientConfig, ClientTlsOptions, FileRole, PathBuf, PemObject, PrivateKeyDer,
        ServerConfig, ServerName, ServerTlsOptions, TlsConfigError, client_config, io, load_certs,
        load_private_key, server_config, server_name,
    };

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            loop {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = std::env::temp_dir()
                    .join(format!("echoloop-tls-config-{}-{n}", std::process::id()));
                // create_dir (not _all) fails on leftovers from an earlier run
                // that had the same pid; just try the next name.
                match std::fs::create_dir(&dir) {
                    Ok(()) => return Self(dir),
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(err) => panic!("cannot create {}: {err}", dir.display()),
                }
            }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).expect("write test file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("generate CA key");
        CertifiedIssuer::self_signed(params, key).expect("self-sign CA")
    }

    /// Issues a certificate for `key` from `ca`; returns it as PEM.
    fn issue(
        ca: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        key: &KeyPair,
    ) -> String {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, "echoloop test");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        params.signed_by(key, ca).expect("sign certificate").pem()
    }

    /// A CA plus a server certificate/key for localhost and a client
    /// certificate/key, all written to `dir`.
    struct Files {
        ca: PathBuf,
        server_chain: PathBuf,
        server_key: PathBuf,
        client_chain: PathBuf,
        client_key: PathBuf,
    }

    fn write_pki(dir: &TempDir) -> Files {
        let ca = new_ca("echoloop unit test CA");
        let server_key = KeyPair::generate().expect("server key");
        let client_key = KeyPair::generate().expect("client key");
        let server_cert = issue(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_key,
        );
        let client_cert = issue(
            &ca,
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_key,
        );
        Files {
            ca: dir.write("ca.pem", ca.pem()),
            server_chain: dir.write("server.pem", server_cert),
            server_key: dir.write("server.key", server_key.serialize_pem()),
            client_chain: dir.write("client.pem", client_cert),
            client_key: dir.write("client.key", client_key.serialize_pem()),
        }
    }

    fn server_opts(files: &Files) -> ServerTlsOptions<'_> {
        ServerTlsOptions {
            cert_chain: &files.server_chain,
            key: &files.server_key,
            client_ca: None,
        }
    }

    /// Splits one DER TLV off `input`: (tag, contents, rest).
    fn der_next(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = if input[1] < 0x80 {
            (usize::from(input[1]), 2)
        } else {
            let n = usize::from(input[1] & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        (tag, &input[header..header + len], &input[header + len..])
    }

    /// Unwraps the algorithm-specific key (PKCS#1 for RSA, SEC1 for EC) from
    /// a PKCS#8 `PrivateKeyInfo`, since rcgen and ring only export PKCS#8.
    fn pkcs8_inner_key(pkcs8: &[u8]) -> Vec<u8> {
        let (tag, info, _) = der_next(pkcs8);
        assert_eq!(tag, 0x30, "PrivateKeyInfo SEQUENCE");
        let (tag, _, rest) = der_next(info);
        assert_eq!(tag, 0x02, "version INTEGER");
        let (tag, _, rest) = der_next(rest);
        assert_eq!(tag, 0x30, "AlgorithmIdentifier SEQUENCE");
        let (tag, key, _) = der_next(rest);
        assert_eq!(tag, 0x04, "privateKey OCTET STRING");
        key.to_vec()
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[((bits >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// A throwaway 2048-bit RSA key (PKCS#8 DER, base64), generated with
    /// `openssl genpkey` for these tests only: ring cannot generate RSA keys,
    /// and the PKCS#1 test needs one. Kept without PEM armour so secret
    /// scanners don't flag it.
    const TEST_RSA_PKCS8_B64: &str = concat!(
        "MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQCw4Ryn4ap/mJZa\n",
        "T3OV56UstDF9E4oj8nezO2JaEgql1tnQKg+DoC6lyNZWW9QhBiMHflGWvoiDX44u\n",
        "kPI/g3gLuMS0MQyDCMKSSRtHLWFRY/hlVMhjKLOHw5O/P761NH1oDHutjw6+4TTe\n",
        "XhhrEcjixeeqXmz4ntFPbfiFrJ/su8javdQhkuhl2br9yMAxxD1PLzyPdu5PXtGk\n",
        "NQ5W1eb8V/UBMSYUVCc8tKo9vhnp/+7Al+HpOi+8nkg7fxIFD4qW+9sCOe10AL/5\n",
        "57UVm724LKwHmdNrWa8rXglNrJV4ZiJeibxaQtjFt1OidX1v27/D4XSZbcaCjU+g\n",
        "uQmQgwkvAgMBAAECggEAGkKxwHMOnzcGS440OPNVYJe4KTu3bLLY9rFAXuMC1bBa\n",
        "Uj+MYhxsEI0K1XN4wRZqKPimIF1VYzvSnjNC5A8eyY67FY2ar/GjAZj9BcpFApJ3\n",
        "FIRL4/zs+qEc1G4gYELUw5fm3NO6erhw4vrRYUQYsSJ0zKSMRTU/Gi3XkfEZJUpU\n",
        "d5tvJsWQ78JTv9NdYBlMYEvm4dNGL/ZCUh2robsFL4xyZ6Eo71QdoDK9ZEHWN6Pf\n",
        "HyisEQZPgt4HQilhlgEseoN0kJQV8YHUZA2VjkvIL9qGaayozHQeg2DIsbLDkWeA\n",
        "eAmPxtviEycyYhdJ6PyZHX6ea3IIsMEimiA4LamXYQKBgQDr9lmjJMh1ygFjHAS0\n",
        "hP73Mw0/kFjQC4C2P9amfn1J/AxctuW1UwiKT9gugJ5nriFoieR7Bu69ae3xDbg1\n",
        "cAmbJOj7Qywh5V7IzmxIqcqRkhG3vYfQ8q74P6XLKy7QFRG1svkr0CaWA5/L53Yy\n",
        "boHjxJwFxuKBDEtGAOZDcT7YCQKBgQC/5ldHgPSNTiTC9gxQn0gui+RWnexJOUdy\n",
        "QlLIePrsmfUj5B3bJDHbOE9QCYypTVZE4lrqBds+uUJBLaecjw6a5Gud6rZF6UBo\n",
        "x/oXjAnVEjInKxnj7Ao/lxJGYi06XAo7iNWOKRYvUFhRjMCRqu8xxDzbo/Z0zMVl\n",
        "XJrh9iz1dwKBgQDmOg9rptAQXXDNCuFsYPeEqkMa6fQ9yXtkVxVQjcohDdPiAnJO\n",
        "YR3MFeuQM95auwPNw/0yLKl0Fo8ay5AYU6CLx4+q2PeOewXoV8A/hasoLaUr6blC\n",
        "ngcqIK/bc97RGD2XU3Da1tVPOWoIwWYJ/titK4AwAsWttBkdzHLfCveOQQKBgQCu\n",
        "sPWLNi1p5VU51droGdgP53F6GFFdZzNPJGlP7jIe6RhsD+HN+Gkac2xgJBFUnf6G\n",
        "vricibBIrUVPKEyJDQHypzYAkAZWJjxoJoPYo7bfrKzTUz1Ca0H5GYGdaQpbMiZu\n",
        "g+ZEf8qeT7nWoxc6hC0zVL1CBUT6lt6ro12rjfrniQKBgQDXg6og/ozLbAJCkER7\n",
        "VhkOlF0Exq52dvSRKBVSSZFoNfeAE3+uTI/rJnBWpAZZfFb3irycOHI2+QTOtmT3\n",
        "nKhIvrUFwcFMgKHukAW3WjipUHVb7PtUeBFI9eHWX+Kt2MOWz/Ry22ECy8d5DeWY\n",
        "zZgS02TvEgo6MM3qTiGDd//o8Q==\n"
    );

    /// Drives a handshake between two in-memory connections until neither
    /// has anything left to send. Returns the first error either side hits.
    fn pump(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        loop {
            let mut progressed = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("write to Vec");
            }
            if !buf.is_empty() {
                progressed = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd).expect("read from slice");
                }
                server.process_new_packets()?;
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("write to Vec");
            }
            if !buf.is_empty() {
                progressed = true;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).expect("read from slice");
                }
                client.process_new_packets()?;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn connect(
        client_config: &Arc<ClientConfig>,
        server_config: &Arc<ServerConfig>,
        name: &str,
    ) -> Result<ClientConnection, rustls::Error> {
        let mut client = ClientConnection::new(
            client_config.clone(),
            server_name(name).expect("server name"),
        )?;
        let mut server = ServerConnection::new(server_config.clone())?;
        pump(&mut client, &mut server)?;
        assert!(!client.is_handshaking() && !server.is_handshaking());
        Ok(client)
    }

    #[test]
    fn good_server_config_builds() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let config = server_config(&server_opts(&files)).expect("server config");
        assert!(config.ticketer.enabled(), "TLS 1.3 tickets must be on");
    }

    #[test]
    fn missing_cert_file_names_path_and_role() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let missing = dir.0.join("nope.pem");
        let opts = ServerTlsOptions {
            cert_chain: &missing,
            ..server_opts(&files)
        };
        let err = server_config(&opts).expect_err("missing file");
        assert!(
            matches!(&err, TlsConfigError::Read { role: FileRole::Certificate, path, .. } if path == &missing),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");
        assert!(msg.contains("certificate"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn missing_key_file_names_role() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let missing = dir.0.join("nope.key");
        let err = load_private_key(&missing).expect_err("missing file");
        let msg = err.to_string();
        assert!(
            msg.contains("private key") && msg.contains(&*missing.to_string_lossy()),
            "{msg}"
        );
        // The same through server_config.
        let opts = ServerTlsOptions {
            key: &missing,
            ..server_opts(&files)
        };
        assert!(matches!(
            server_config(&opts),
            Err(TlsConfigError::Read {
                role: FileRole::PrivateKey,
                ..
            })
        ));
    }

    #[test]
    fn file_without_certificate_is_rejected() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        // A key file passed as the certificate: the classic swapped-arguments mistake.
        let err = load_certs(&files.server_key).expect_err("no certificate");
        assert!(
            matches!(&err, TlsConfigError::NoCertificates { path } if path == &files.server_key),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&*files.server_key.to_string_lossy())
        );

        let empty = dir.write("empty.pem", "");
        assert!(matches!(
            load_certs(&empty),
            Err(TlsConfigError::NoCertificates { .. })
        ));
    }

    #[test]
    fn file_without_key_is_rejected() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let err = load_private_key(&files.server_chain).expect_err("no key");
        assert!(
            matches!(err, TlsConfigError::NoPrivateKey { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_pem_is_reported() {
        let dir = TempDir::new();
        let bad = dir.write(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certs(&bad).expect_err("bad base64");
        assert!(matches!(err, TlsConfigError::BadPem { .. }), "{err:?}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");

        let unterminated = dir.write("unterminated.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let err = load_certs(&unterminated).expect_err("no end line");
        assert!(err.to_string().contains("END CERTIFICATE"), "{err}");
    }

    #[test]
    fn garbage_certificate_der_is_reported_against_the_chain_file() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let garbage = dir.write(
            "garbage.pem",
            pem_encode("CERTIFICATE", b"not a certificate"),
        );
        let opts = ServerTlsOptions {
            cert_chain: &garbage,
            ..server_opts(&files)
        };
        let err = server_config(&opts).expect_err("garbage DER");
        assert!(
            matches!(&err, TlsConfigError::BadPem { path, .. } if path == &garbage),
            "{err:?}"
        );
    }

    #[test]
    fn key_mismatch_names_both_files() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        // The client's key is a perfectly good key, just not the server certificate's.
        let opts = ServerTlsOptions {
            key: &files.client_key,
            ..server_opts(&files)
        };
        let err = server_config(&opts).expect_err("mismatch");
        match &err {
            TlsConfigError::KeyMismatch { cert, key } => {
                assert_eq!(cert, &files.server_chain);
                assert_eq!(key, &files.client_key);
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&*files.server_chain.to_string_lossy()),
            "{msg}"
        );
        assert!(msg.contains(&*files.client_key.to_string_lossy()), "{msg}");

        // The client side checks its certificate/key pair the same way.
        let err = client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: Some((&files.client_chain, &files.server_key)),
        })
        .expect_err("client mismatch");
        assert!(matches!(err, TlsConfigError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn unsupported_key_is_reported() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let junk = dir.write("junk.key", pem_encode("PRIVATE KEY", b"not a key"));
        let opts = ServerTlsOptions {
            key: &junk,
            ..server_opts(&files)
        };
        let err = server_config(&opts).expect_err("junk key");
        assert!(
            matches!(&err, TlsConfigError::UnsupportedKey { path } if path == &junk),
            "{err:?}"
        );
    }

    #[test]
    fn pkcs8_ec_keys_are_accepted() {
        let dir = TempDir::new();
        let ca = new_ca("echoloop unit test CA");
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = KeyPair::generate_for(alg).expect("EC key");
            let chain = dir.write(
                "ec.pem",
                issue(
                    &ca,
                    &["localhost"],
                    ExtendedKeyUsagePurpose::ServerAuth,
                    &key,
                ),
            );
            let key_path = dir.write("ec.key", key.serialize_pem());
            assert!(matches!(
                load_private_key(&key_path),
                Ok(PrivateKeyDer::Pkcs8(_))
            ));
            server_config(&ServerTlsOptions {
                cert_chain: &chain,
                key: &key_path,
                client_ca: None,
            })
            .expect("PKCS#8 EC key");
        }
    }

    #[test]
    fn sec1_ec_key_is_accepted() {
        let dir = TempDir::new();
        let ca = new_ca("echoloop unit test CA");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
        let chain = dir.write(
            "ec.pem",
            issue(
                &ca,
                &["localhost"],
                ExtendedKeyUsagePurpose::ServerAuth,
                &key,
            ),
        );
        let sec1 = pkcs8_inner_key(key.serialized_der());
        let key_path = dir.write("ec.key", pem_encode("EC PRIVATE KEY", &sec1));
        assert!(matches!(
            load_private_key(&key_path),
            Ok(PrivateKeyDer::Sec1(_))
        ));
        server_config(&ServerTlsOptions {
            cert_chain: &chain,
            key: &key_path,
            client_ca: None,
        })
        .expect("SEC1 key");
    }

    #[test]
    fn pkcs1_rsa_key_is_accepted() {
        let dir = TempDir::new();
        let ca = new_ca("echoloop unit test CA");
        let armoured =
            format!("-----BEGIN PRIVATE KEY-----\n{TEST_RSA_PKCS8_B64}-----END PRIVATE KEY-----\n");
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(armoured.as_bytes()).expect("test key PEM");
        let key = KeyPair::try_from(&pkcs8).expect("RSA test key");
        let chain = dir.write(
            "rsa.pem",
            issue(
                &ca,
                &["localhost"],
                ExtendedKeyUsagePurpose::ServerAuth,
                &key,
            ),
        );
        let pkcs1 = pkcs8_inner_key(pkcs8.secret_pkcs8_der());
        let key_path = dir.write("rsa.key", pem_encode("RSA PRIVATE KEY", &pkcs1));
        assert!(matches!(
            load_private_key(&key_path),
            Ok(PrivateKeyDer::Pkcs1(_))
        ));
        server_config(&ServerTlsOptions {
            cert_chain: &chain,
            key: &key_path,
            client_ca: None,
        })
        .expect("PKCS#1 key");
    }

    #[test]
    fn client_config_with_ca_file_builds() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: None,
        })
        .expect("client config");
        client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: Some((&files.client_chain, &files.client_key)),
        })
        .expect("client config with certificate");
    }

    #[test]
    fn garbage_ca_file_is_rejected() {
        let dir = TempDir::new();
        let garbage = dir.write("ca.pem", "this is not a CA bundle\n");
        let err = client_config(&ClientTlsOptions {
            ca: Some(&garbage),
            client_cert: None,
        })
        .expect_err("garbage CA");
        assert!(
            matches!(&err, TlsConfigError::BadCa { path, .. } if path == &garbage),
            "{err:?}"
        );
        assert!(err.to_string().contains("CA"), "{err}");

        let bad_der = dir.write("ca2.pem", pem_encode("CERTIFICATE", b"garbage"));
        let err = client_config(&ClientTlsOptions {
            ca: Some(&bad_der),
            client_cert: None,
        })
        .expect_err("undecodable CA");
        assert!(matches!(err, TlsConfigError::BadCa { .. }), "{err:?}");

        let missing = dir.0.join("missing-ca.pem");
        let err = client_config(&ClientTlsOptions {
            ca: Some(&missing),
            client_cert: None,
        })
        .expect_err("missing CA");
        assert!(
            matches!(
                err,
                TlsConfigError::Read {
                    role: FileRole::Ca,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("cannot read CA certificate file"),
            "{err}"
        );
    }

    #[test]
    fn system_roots_load_or_fail_cleanly() {
        // The build machine may or may not have a CA store; either outcome
        // is fine as long as it is not a panic or an unexpected error.
        match client_config(&ClientTlsOptions::default()) {
            Ok(_) => {}
            Err(err @ TlsConfigError::NoRootCertificates) => {
                assert!(err.to_string().contains("--ca"), "{err}");
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn mtls_server_config_builds() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        server_config(&ServerTlsOptions {
            client_ca: Some(&files.ca),
            ..server_opts(&files)
        })
        .expect("mTLS server config");

        let garbage = dir.write("garbage-ca.pem", "nothing here");
        let err = server_config(&ServerTlsOptions {
            client_ca: Some(&garbage),
            ..server_opts(&files)
        })
        .expect_err("garbage client CA");
        assert!(matches!(err, TlsConfigError::BadCa { .. }), "{err:?}");
    }

    #[test]
    fn server_names() {
        for ok in ["localhost", "example.com", "127.0.0.1", "::1", "[::1]"] {
            server_name(ok).unwrap_or_else(|err| panic!("{ok}: {err}"));
        }
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        for bad in ["", "not a name", "[localhost]", "exa_mple..com"] {
            let err = server_name(bad).expect_err(bad);
            assert!(
                matches!(&err, TlsConfigError::InvalidServerName { name } if name == bad),
                "{err:?}"
            );
        }
    }

    #[test]
    fn handshake_verifies_hostname_and_resumes() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let server = server_config(&server_opts(&files)).expect("server config");
        let client = client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: None,
        })
        .expect("client config");

        let first = connect(&client, &server, "localhost").expect("handshake");
        assert_eq!(first.handshake_kind(), Some(HandshakeKind::Full));
        let second = connect(&client, &server, "localhost").expect("second handshake");
        assert_eq!(second.handshake_kind(), Some(HandshakeKind::Resumed));

        connect(&client, &server, "127.0.0.1").expect("IP SAN");
        let err = connect(&client, &server, "example.com").expect_err("wrong name");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "hostname verification: {err:?}"
        );

        // A client trusting a different CA must refuse the server.
        let other_dir = TempDir::new();
        let other = write_pki(&other_dir);
        let stranger = client_config(&ClientTlsOptions {
            ca: Some(&other.ca),
            client_cert: None,
        })
        .expect("client config");
        assert!(connect(&stranger, &server, "localhost").is_err());
    }

    #[test]
    fn mtls_handshake_requires_a_client_certificate() {
        let dir = TempDir::new();
        let files = write_pki(&dir);
        let server = server_config(&ServerTlsOptions {
            client_ca: Some(&files.ca),
            ..server_opts(&files)
        })
        .expect("mTLS server config");

        let with_cert = client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: Some((&files.client_chain, &files.client_key)),
        })
        .expect("client config");
        connect(&with_cert, &server, "localhost").expect("mTLS handshake");

        let without_cert = client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: None,
        })
        .expect("client config");
        assert!(connect(&without_cert, &server, "localhost").is_err());

        // A certificate from an unrelated CA is refused as well.
        let other_dir = TempDir::new();
        let other = write_pki(&other_dir);
        let foreign = client_config(&ClientTlsOptions {
            ca: Some(&files.ca),
            client_cert: Some((&other.client_chain, &other.client_key)),
        })
        .expect("client config");
        assert!(connect(&foreign, &server, "localhost").is_err());
    }
}
