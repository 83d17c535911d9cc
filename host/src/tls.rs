//! TLS: listener certificates reloaded on change, and client trust roots with custom CAs.
//!
//! A listener's [`ServerCert`] resolves every handshake to the certificate loaded last; a
//! background task re-reads the files when they change and swaps the certificate in only if
//! the new pair loads, so a half-written renewal never takes the listener down. Outgoing TLS
//! (HTTP upstreams, forwarding between replicas, the JWKS fetcher) trusts the platform's roots
//! plus an optional PEM file of CAs ([`client_tls`]). Everything uses the `ring` provider
//! explicitly, as the rest of the crate does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::model::{AppConfig, ServerTlsConfig};

/// A certificate, key or CA file that cannot be used; `key` is the config key naming it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}: {problem}", path.display())]
pub struct LoadError {
    pub key: String,
    pub path: PathBuf,
    pub problem: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate of one listener, reloaded from its files when they change.
#[derive(Clone)]
pub struct ServerCert {
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_file", &self.current.files.cert)
            .field("key_file", &self.current.files.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Files {
    /// The config key of the block, e.g. `server.tls`, for messages.
    key: String,
    cert: PathBuf,
    key_file: PathBuf,
    interval: Duration,
}

#[derive(Debug)]
struct Current {
    files: Files,
    key: RwLock<Arc<CertifiedKey>>,
    /// What the files looked like when the first pair was read, for the reloader to start from.
    initial: (Option<(Stamp, Stamp)>, [u8; 32]),
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl ServerCert {
    /// Loads the certificate chain and key named by the block at `key` (e.g. `server.tls`).
    /// Fails with the config key and file of the first problem.
    pub fn load(key: &str, cfg: &ServerTlsConfig) -> Result<Self, LoadError> {
        let files = Files {
            key: key.to_owned(),
            cert: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            interval: Duration::from_millis(cfg.reload_interval_ms.max(1)),
        };
        // Stamped before reading: a write racing the read leaves a newer stamp, so the
        // reloader looks again.
        let stamps = files.stamps();
        let (cert, key) = files.read()?;
        let loaded = files.parse(&cert, &key)?;
        let current = Arc::new(Current {
            files,
            key: RwLock::new(loaded.key),
            initial: (stamps, hash(&cert, &key)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            current,
            config: Arc::new(config),
        })
    }

    /// The rustls configuration to accept connections with; it always presents the
    /// certificate loaded last.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// Checks the files every `reload_interval_ms` and swaps in a changed certificate. The
    /// task ends once every clone of this `ServerCert` (and the listener's config) is gone.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.current);
        let interval = self.current.files.interval;
        let seen = Seen {
            stamps: self.current.initial.0.clone(),
            hash: Some(self.current.initial.1),
        };
        tokio::spawn(reload_loop(weak, interval, seen))
    }
}

/// What the reloader last saw of both files: cheap metadata first, the contents' hash to tell
/// a real change from a touch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct Seen {
    stamps: Option<(Stamp, Stamp)>,
    hash: Option<[u8; 32]>,
}

fn hash(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

async fn reload_loop(current: Weak<Current>, interval: Duration, mut seen: Seen) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(cur) = current.upgrade() else { return };
        // File reads and key parsing are blocking work; keep them off the async workers.
        let (cur, s) = match tokio::task::spawn_blocking(move || {
            check(&cur, &mut seen);
            (cur, seen)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return,
        };
        seen = s;
        drop(cur);
    }
}

/// One reload check: reload when either file changed since the last attempt; a change that
/// does not load is reported once and the previous certificate stays.
fn check(cur: &Current, seen: &mut Seen) {
    let files = &cur.files;
    let stamps = files.stamps();
    // A file that stays missing compares equal too (None), so it is reported once, not on
    // every check.
    if stamps == seen.stamps {
        return;
    }
    seen.stamps = stamps;
    let (cert, key) = match files.read() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "TLS certificate not reloaded; still serving the previous one");
            seen.hash = None;
            return;
        }
    };
    let h = hash(&cert, &key);
    if seen.hash == Some(h) {
        return;
    }
    seen.hash = Some(h);
    match files.parse(&cert, &key) {
        Ok(loaded) => {
            *cur.key.write().unwrap_or_else(|e| e.into_inner()) = loaded.key;
            tracing::info!(
                tls = %files.key,
                cert_file = %files.cert.display(),
                serial = %loaded.summary.serial,
                not_after = %loaded.summary.not_after,
                "TLS certificate reloaded"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "TLS certificate not reloaded; still serving the previous one")
        }
    }
}

struct Loaded {
    key: Arc<CertifiedKey>,
    summary: Summary,
}

impl Files {
    fn cert_key(&self) -> String {
        format!("{}.cert_file", self.key)
    }

    fn key_key(&self) -> String {
        format!("{}.key_file", self.key)
    }

    fn stamps(&self) -> Option<(Stamp, Stamp)> {
        let stamp = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
            })
        };
        Some((stamp(&self.cert)?, stamp(&self.key_file)?))
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
        let read = |key: String, path: &Path| {
            std::fs::read(path).map_err(|e| LoadError {
                key,
                path: path.to_owned(),
                problem: format!("cannot read: {e}"),
            })
        };
        Ok((
            read(self.cert_key(), &self.cert)?,
            read(self.key_key(), &self.key_file)?,
        ))
    }

    fn parse(&self, cert: &[u8], key: &[u8]) -> Result<Loaded, LoadError> {
        let cert_err = |problem: String| LoadError {
            key: self.cert_key(),
            path: self.cert.clone(),
            problem,
        };
        let key_err = |problem: String| LoadError {
            key: self.key_key(),
            path: self.key_file.clone(),
            problem,
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(cert_err("no CERTIFICATE block found".into()));
        }
        // The key's own parse errors are not echoed: they could quote key material.
        let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            key_err(match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no private key (PKCS#8, PKCS#1 or SEC1 PEM block) found".into()
                }
                _ => "not a readable PEM private key".into(),
            })
        })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&private)
            .map_err(|e| key_err(format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signer);
        if let Err(e) = certified.keys_match() {
            return Err(key_err(format!(
                "does not match the certificate in {} ({e})",
                self.cert_key()
            )));
        }
        let summary = Summary::of(&certified.cert[0]);
        Ok(Loaded {
            key: Arc::new(certified),
            summary,
        })
    }
}

/// The serial and expiry of a leaf certificate, for logs. Unknown fields read `?`: a
/// certificate that rustls accepts is served even if this small reader does not follow it.
struct Summary {
    serial: String,
    not_after: String,
}

impl Summary {
    fn of(cert: &CertificateDer<'_>) -> Self {
        leaf_fields(cert.as_ref()).unwrap_or_else(|| Self {
            serial: "?".into(),
            not_after: "?".into(),
        })
    }
}

/// One DER TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// Certificate → tbsCertificate → [version] serialNumber signature issuer validity.
fn leaf_fields(der: &[u8]) -> Option<Summary> {
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    let (_, serial, rest) = tlv(tbs)?;
    let (_, _signature, rest) = tlv(rest)?;
    let (_, _issuer, rest) = tlv(rest)?;
    let (_, validity, _) = tlv(rest)?;
    let (_, _not_before, rest) = tlv(validity)?;
    let (tag, not_after, _) = tlv(rest)?;
    let t = std::str::from_utf8(not_after).ok()?;
    // UTCTime is YYMMDDHHMMSSZ (years 1950–2049), GeneralizedTime YYYYMMDDHHMMSSZ.
    let full = match tag {
        0x17 if t.len() == 13 => {
            let century = if t[..2].parse::<u8>().ok()? >= 50 {
                "19"
            } else {
                "20"
            };
            format!("{century}{t}")
        }
        0x18 if t.len() == 15 => t.to_owned(),
        _ => return None,
    };
    let not_after = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    );
    let serial = serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Some(Summary { serial, not_after })
}

/// The certificates of a PEM CA file; fails naming `key` when it cannot be read or holds none.
pub fn load_ca_file(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let err = |problem: String| LoadError {
        key: key.to_owned(),
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The client TLS configuration for outgoing HTTPS: the platform's trust roots (what reqwest
/// uses by default) plus the certificates in `ca_file`. Pass it to
/// `reqwest::ClientBuilder::use_preconfigured_tls`.
///
/// ALPN offers only `http/1.1`, because the crate's reqwest is built without HTTP/2; a
/// preconfigured config is used as is, so offering `h2` would let a server pick a protocol the
/// client cannot speak.
pub fn client_tls(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = match ca_file {
        Some(path) => {
            let extra = load_ca_file("ca_file", path)?;
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        }
        None => rustls_platform_verifier::Verifier::new(provider.clone()),
    }
    .map_err(|e| anyhow::anyhow!("cannot build the TLS trust roots: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A reqwest client builder trusting `ca_file` in addition to the platform roots; without a
/// file, reqwest's own default TLS (the same platform roots).
pub fn client_builder(ca_file: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let builder = reqwest::Client::builder();
    Ok(match ca_file {
        Some(_) => builder.use_preconfigured_tls(client_tls(ca_file)?),
        None => builder,
    })
}

/// Reads every CA file the config names (HTTP upstreams, forwarding, JWKS), so that a missing
/// or unreadable one stops start-up with its key rather than surfacing at the first request.
pub fn check_ca_files(config: &AppConfig) -> Result<(), LoadError> {
    if let Some(p) = &config.server.forwarding_ca_file {
        load_ca_file("server.forwarding_ca_file", p)?;
    }
    for (i, b) in config.bindings.iter().enumerate() {
        if let Some(p) = b
            .auth
            .as_ref()
            .and_then(|a| a.jwt.as_ref()?.ca_file.as_ref())
        {
            load_ca_file(&format!("bindings[{i}].auth.jwt.ca_file"), p)?;
        }
        for (j, u) in b.upstreams.iter().enumerate() {
            if let Some(p) = u.http.as_ref().and_then(|h| h.ca_file.as_ref()) {
                load_ca_file(&format!("bindings[{i}].upstreams[{j}].http.ca_file"), p)?;
            }
            for (k, e) in u.endpoints.iter().enumerate() {
                if let Some(p) = e.http.as_ref().and_then(|h| h.ca_file.as_ref()) {
                    load_ca_file(
                        &format!("bindings[{i}].upstreams[{j}].endpoints[{k}].http.ca_file"),
                        p,
                    )?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and leaf certificates it signs, written as PEM files in a temp dir.
    pub(crate) struct Pki {
        pub dir: PathBuf,
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        pub fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "mcpg-tls-{name}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("mcpg test CA {name}"));
            let ca =
                rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                    .unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            Self { dir, ca }
        }

        pub fn ca_file(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        /// A leaf for `localhost`/127.0.0.1 with this serial: (cert PEM, key PEM).
        pub fn leaf(&self, serial: u64) -> (String, String) {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("leaf {serial}"));
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &*self.ca).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// Writes a leaf into `cert.pem`/`key.pem` and returns the matching config block.
        pub fn write_leaf(&self, serial: u64, interval_ms: u64) -> ServerTlsConfig {
            let (c, k) = self.leaf(serial);
            std::fs::write(self.dir.join("cert.pem"), c).unwrap();
            std::fs::write(self.dir.join("key.pem"), k).unwrap();
            ServerTlsConfig {
                cert_file: self.dir.join("cert.pem"),
                key_file: self.dir.join("key.pem"),
                reload_interval_ms: interval_ms,
            }
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn serial_of(c: &ServerCert) -> String {
        let key = c.current.key.read().unwrap().clone();
        serial(&key.cert[0])
    }

    /// The serial (hex) of a certificate.
    pub(crate) fn serial(cert: &CertificateDer<'_>) -> String {
        Summary::of(cert).serial
    }

    #[test]
    fn loads_a_pair_and_reads_its_serial_and_expiry() {
        let pki = Pki::new("load");
        let cfg = pki.write_leaf(0x1234, 1000);
        let c = ServerCert::load("server.tls", &cfg).unwrap();
        assert_eq!(serial_of(&c), "1234");
        let key = c.current.key.read().unwrap().clone();
        let s = Summary::of(&key.cert[0]);
        // rcgen's default not_after is 4096-01-01.
        assert_eq!(s.not_after, "4096-01-01T00:00:00Z");
        assert_eq!(
            c.server_config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn start_up_errors_name_the_key_and_file() {
        let pki = Pki::new("errors");
        let mut cfg = pki.write_leaf(1, 1000);
        cfg.key_file = pki.dir.join("missing-key.pem");
        let e = ServerCert::load("server.tls", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("server.tls.key_file: "), "{e}");
        assert!(e.contains("missing-key.pem: cannot read"), "{e}");

        let mut cfg = pki.write_leaf(1, 1000);
        std::fs::write(pki.dir.join("garbage.pem"), "not pem at all\n").unwrap();
        cfg.cert_file = pki.dir.join("garbage.pem");
        let e = ServerCert::load("server.admin_tls", &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server.admin_tls.cert_file: ") && e.contains("no CERTIFICATE"),
            "{e}"
        );

        // A key from another pair is refused, naming the key file.
        let cfg = pki.write_leaf(1, 1000);
        let (_, other_key) = pki.leaf(2);
        std::fs::write(&cfg.key_file, other_key).unwrap();
        let e = ServerCert::load("server.tls", &cfg)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server.tls.key_file: ") && e.contains("does not match"),
            "{e}"
        );

        // The certificate itself as the key: no key block, and nothing of the file echoed.
        let cfg = pki.write_leaf(1, 1000);
        std::fs::copy(&cfg.cert_file, &cfg.key_file).unwrap();
        let e = ServerCert::load("server.tls", &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no private key"), "{e}");
        assert!(!e.contains("BEGIN"), "{e}");
    }

    #[test]
    fn a_sec1_key_loads_as_well_as_pkcs8() {
        let pki = Pki::new("formats");
        let cfg = pki.write_leaf(7, 1000);
        // rcgen writes PKCS#8; rewrap the same EC key as SEC1 ("EC PRIVATE KEY").
        let pem = std::fs::read(&cfg.key_file).unwrap();
        let der = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let PrivateKeyDer::Pkcs8(p8) = der else {
            panic!("rcgen writes PKCS#8")
        };
        let sec1 = sec1_from_pkcs8(p8.secret_pkcs8_der());
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sec1)
        );
        std::fs::write(&cfg.key_file, pem).unwrap();
        let c = ServerCert::load("server.tls", &cfg).unwrap();
        assert_eq!(serial_of(&c), "07");
    }

    /// PKCS#8 → OneAsymmetricKey { version, algorithm, OCTET STRING privateKey (the SEC1 key) }.
    fn sec1_from_pkcs8(p8: &[u8]) -> Vec<u8> {
        let (_, body, _) = tlv(p8).unwrap();
        let (_, _, rest) = tlv(body).unwrap();
        let (_, _, rest) = tlv(rest).unwrap();
        let (tag, key, _) = tlv(rest).unwrap();
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    #[tokio::test]
    async fn the_reloader_swaps_in_a_new_pair_and_keeps_the_old_one_on_garbage() {
        let pki = Pki::new("reload");
        let cfg = pki.write_leaf(0x10, 100);
        let c = ServerCert::load("server.tls", &cfg).unwrap();
        let task = c.spawn_reloader();
        assert_eq!(serial_of(&c), "10");

        std::fs::write(&cfg.cert_file, "garbage").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(serial_of(&c), "10");
        // A file gone for a while is no reason to stop serving either.
        std::fs::remove_file(&cfg.key_file).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(serial_of(&c), "10");

        pki.write_leaf(0x11, 100);
        let mut waited = 0;
        while serial_of(&c) != "11" {
            assert!(waited < 100, "the new certificate was never loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += 1;
        }

        // The task ends with the certificate.
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the reloader stops once the certificate is dropped")
            .unwrap();
    }

    #[test]
    fn ca_files_are_read_and_checked() {
        let pki = Pki::new("ca");
        let certs = load_ca_file("server.forwarding_ca_file", &pki.ca_file()).unwrap();
        assert_eq!(certs.len(), 1);
        assert!(client_tls(Some(&pki.ca_file())).is_ok());
        let e = client_tls(Some(&pki.dir.join("nope.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.pem: cannot read"), "{e}");

        let mut config = AppConfig::default();
        config.server.forwarding_ca_file = Some(pki.dir.join("nope.pem"));
        let e = check_ca_files(&config).unwrap_err().to_string();
        assert!(e.starts_with("server.forwarding_ca_file: "), "{e}");
        std::fs::write(pki.dir.join("empty.pem"), "").unwrap();
        config.server.forwarding_ca_file = Some(pki.dir.join("empty.pem"));
        let e = check_ca_files(&config).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
    }
}
