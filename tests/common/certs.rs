//! Throwaway PKI for integration tests: CAs, server and client certificates
//! written as PEM files into a private temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths to a freshly generated set of certificates and keys (all PEM).
///
/// * `ca_pem` issued `server_chain` (for `localhost`, `127.0.0.1` and `::1`)
///   and `client_chain`.
/// * `other_ca_pem` is an unrelated CA that issued `other_client_chain`, for
///   testing that peers from the wrong CA are refused.
///
/// The directory is removed when the value is dropped.
#[allow(dead_code)]
#[derive(Debug)]
pub struct TestPki {
    /// The temporary directory holding every file below.
    pub dir: PathBuf,
    /// Certificate of the CA that issued the server and client certificates.
    pub ca_pem: PathBuf,
    /// Server certificate chain (just the leaf; the CA is the trust anchor).
    pub server_chain: PathBuf,
    /// PKCS#8 private key for `server_chain`.
    pub server_key: PathBuf,
    /// Client certificate chain issued by `ca_pem`.
    pub client_chain: PathBuf,
    /// PKCS#8 private key for `client_chain`.
    pub client_key: PathBuf,
    /// Certificate of a second, unrelated CA.
    pub other_ca_pem: PathBuf,
    /// Client certificate chain issued by `other_ca_pem`.
    pub other_client_chain: PathBuf,
    /// PKCS#8 private key for `other_client_chain`.
    pub other_client_key: PathBuf,
}

impl TestPki {
    /// Generates both CAs and all certificates into a new temporary directory.
    ///
    /// Panics on failure: this is test setup, and a panic with the reason is
    /// the most useful outcome.
    #[allow(dead_code)]
    pub fn generate() -> TestPki {
        let dir = fresh_dir();

        let ca = new_ca("echoloop test CA");
        let server_key = new_key();
        let server_cert = issue(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &server_key,
        );
        let client_key = new_key();
        let client_cert = issue(
            &ca,
            "echoloop test client",
            &["client.echoloop.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_key,
        );

        let other_ca = new_ca("echoloop unrelated test CA");
        let other_client_key = new_key();
        let other_client_cert = issue(
            &other_ca,
            "echoloop foreign client",
            &["other-client.echoloop.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_client_key,
        );

        TestPki {
            ca_pem: write(&dir, "ca.pem", &ca.pem()),
            server_chain: write(&dir, "server.pem", &server_cert),
            server_key: write(&dir, "server.key", &server_key.serialize_pem()),
            client_chain: write(&dir, "client.pem", &client_cert),
            client_key: write(&dir, "client.key", &client_key.serialize_pem()),
            other_ca_pem: write(&dir, "other-ca.pem", &other_ca.pem()),
            other_client_chain: write(&dir, "other-client.pem", &other_client_cert),
            other_client_key: write(&dir, "other-client.key", &other_client_key.serialize_pem()),
            dir,
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir must not turn a passing test into a panic.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a directory no other test (or concurrent test binary) uses.
fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("echoloop-pki-{}-{n}", std::process::id()));
        // create_dir (not _all) refuses to reuse a leftover directory from an
        // earlier run that happened to have the same pid.
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => panic!("cannot create test PKI dir {}: {err}", dir.display()),
        }
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    path
}

/// An ECDSA P-256 key, the cheapest key every TLS stack accepts.
fn new_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate test key")
}

fn new_ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, new_key()).expect("self-sign test CA")
}

/// Issues an end-entity certificate for `key`, returned as PEM.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    subject_alt_names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    key: &KeyPair,
) -> String {
    // rcgen turns entries that parse as IP addresses into IP SANs.
    let names: Vec<String> = subject_alt_names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params
        .signed_by(key, ca)
        .expect("sign test certificate")
        .pem()
}
