//! Talking to a registry through `oci-client`: credentials (explicit, the container tools'
//! credentials file, or anonymous), plain HTTP only when asked, manifests fetched raw (so their
//! digests are checked on the exact bytes), blobs streamed into the cache with progress.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::OciError;
use super::artifact::{Descriptor, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, digest_of};
use super::cache::Cache;

/// How to reach one registry.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    plain_http: bool,
}

/// Credentials given explicitly (config `auth`, or the CLI's).
pub type Basic = Option<(String, String)>;

impl Registry {
    pub fn new(reference: &Reference, plain_http: bool, basic: Basic) -> Self {
        let client = Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let auth = match basic {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => {
                docker_config_auth(reference.resolve_registry()).unwrap_or(RegistryAuth::Anonymous)
            }
        };
        Self {
            client,
            auth,
            plain_http,
        }
    }

    fn err(&self, reference: &Reference, e: oci_client::errors::OciDistributionError) -> OciError {
        OciError::Registry {
            reference: reference.whole(),
            message: explain(&e, reference.resolve_registry(), self.plain_http),
        }
    }

    /// The manifest or index `reference` names, its bytes and digest (checked against the
    /// bytes, and against the reference's own digest when it has one).
    pub async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), OciError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(
                reference,
                &self.auth,
                &[INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE],
            )
            .await
            .map_err(|e| self.err(reference, e))?;
        let actual = digest_of(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual
        {
            return Err(OciError::Cache(super::cache::CacheError::Mismatch {
                what: format!("the manifest of {}", reference.whole()),
                expected: expected.to_owned(),
                actual,
            }));
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Streams a blob into the cache (verified before it becomes visible), showing progress.
    pub async fn blob_into(
        &self,
        reference: &Reference,
        d: &Descriptor,
        cache: &Cache,
        what: &str,
    ) -> Result<PathBuf, OciError> {
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size as i64,
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(reference, &desc)
            .await
            .map_err(|e| self.err(reference, e))?;
        let mut pending = cache.pending(&d.digest, what)?;
        let mut progress = Progress::new(what, d.size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| OciError::Registry {
                reference: reference.whole(),
                message: format!("reading {what}: {e}"),
            })?;
            pending.write(&chunk)?;
            progress.advance(chunk.len() as u64);
        }
        progress.done();
        Ok(pending.commit()?)
    }

    pub async fn push_blob(&self, reference: &Reference, bytes: Vec<u8>) -> Result<(), OciError> {
        let digest = digest_of(&bytes);
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        self.client
            .push_blob(reference, bytes, &digest)
            .await
            .map(|_| ())
            .map_err(|e| self.err(reference, e))
    }

    pub async fn push_manifest(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
        media_type: &'static str,
    ) -> Result<(), OciError> {
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        self.client
            .push_manifest_raw(
                reference,
                bytes,
                reqwest::header::HeaderValue::from_static(media_type),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.err(reference, e))
    }
}

/// Why a registry could not be reached, as far as the error's chain of causes tells.
#[derive(Debug, PartialEq)]
enum Cause {
    /// Nothing accepted the TCP connection.
    Refused,
    /// The TLS handshake failed (with rustls' reason).
    Tls(String),
    /// Something else (name resolution, timeout, an HTTP error, …).
    Other,
}

fn cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(c) = todo.pop() {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Cause::Tls(t.to_string());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Cause::Refused;
            }
            // An I/O error's `source` skips the error it wraps; look at that one too.
            if let Some(inner) = io.get_ref() {
                todo.push(inner);
            }
        }
        if let Some(next) = c.source() {
            todo.push(next);
        }
    }
    Cause::Other
}

/// Whether `registry` (`host[:port]`) is on this machine or a private network: a loopback,
/// private, link-local or unique-local address, `localhost`, or a name without a dot (a
/// compose or cluster service). Such registries often speak plain HTTP.
pub(super) fn is_local(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
        Err(_) => host == "localhost" || host.ends_with(".localhost") || !host.contains('.'),
    }
}

/// A registry error as a person can act on it: refused or a failed TLS handshake said in
/// words, with `--plain-http` suggested for a local registry that does not speak TLS.
fn explain(
    e: &oci_client::errors::OciDistributionError,
    registry: &str,
    plain_http: bool,
) -> String {
    const PLAIN: &str = "if this registry speaks plain HTTP (as a local one often does), pass \
        `--plain-http` (in a config: `plain_http: true` in the plugin's `source`)";
    let scheme = if plain_http { "http" } else { "https" };
    match cause(e) {
        Cause::Refused => format!(
            "connection refused by {registry} ({scheme}): nothing listens there; check the \
             registry is running and the host and port are right"
        ),
        Cause::Tls(why) if !plain_http && is_local(registry) => {
            format!("the TLS handshake with {registry} failed ({why}); {PLAIN}")
        }
        Cause::Tls(why) => format!("the TLS handshake with {registry} failed ({why})"),
        Cause::Other => {
            let mut m = e.to_string();
            let mut cur = std::error::Error::source(e);
            while let Some(c) = cur {
                let s = c.to_string();
                if !m.contains(&s) {
                    m.push_str(": ");
                    m.push_str(&s);
                }
                cur = c.source();
            }
            if plain_http && m.contains("HTTP request to an HTTPS server") {
                m.push_str("; this registry speaks HTTPS: drop `--plain-http` (`plain_http`)");
            }
            m
        }
    }
}

/// The credentials the container tools' file holds for `registry`:
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, entry `auths.<registry>` with
/// `auth` (base64 `user:password`) or `username` and `password`. Credential helpers
/// (`credsStore`, `credHelpers`) are not run.
fn docker_config_auth(registry: &str) -> Option<RegistryAuth> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
    };
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths.iter().find_map(|(k, e)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        (host == registry).then_some(e)
    })?;
    if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(a).ok()?;
        let (u, p) = String::from_utf8(decoded)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
        return Some(RegistryAuth::Basic(u, p));
    }
    let u = entry.get("username")?.as_str()?;
    let p = entry.get("password")?.as_str()?;
    Some(RegistryAuth::Basic(u.to_owned(), p.to_owned()))
}

/// Progress of one download: a line redrawn on a terminal, a log line every quarter
/// otherwise (only for downloads of a megabyte or more).
struct Progress {
    what: String,
    total: u64,
    seen: u64,
    tty: bool,
    last_draw: Instant,
    next_quarter: u64,
}

const SHOW_FROM: u64 = 1 << 20;

impl Progress {
    fn new(what: &str, total: u64) -> Self {
        Self {
            what: what.to_owned(),
            total,
            seen: 0,
            tty: std::io::stderr().is_terminal(),
            last_draw: Instant::now(),
            next_quarter: 1,
        }
    }

    fn mib(n: u64) -> f64 {
        n as f64 / (1024.0 * 1024.0)
    }

    fn advance(&mut self, n: u64) {
        self.seen += n;
        if self.total < SHOW_FROM {
            return;
        }
        if self.tty {
            if self.last_draw.elapsed() > Duration::from_millis(100) {
                self.last_draw = Instant::now();
                eprint!(
                    "\rpulling {}: {:.1} / {:.1} MiB",
                    self.what,
                    Self::mib(self.seen),
                    Self::mib(self.total)
                );
            }
        } else {
            while self.next_quarter < 4 && self.seen * 4 >= self.total * self.next_quarter {
                tracing::info!(
                    what = %self.what,
                    percent = self.next_quarter * 25,
                    mib = format!("{:.1}", Self::mib(self.seen)),
                    "pulling"
                );
                self.next_quarter += 1;
            }
        }
    }

    fn done(&self) {
        if self.total < SHOW_FROM {
            return;
        }
        if self.tty {
            eprintln!(
                "\rpulled {}: {:.1} MiB                ",
                self.what,
                Self::mib(self.seen)
            );
        } else {
            tracing::info!(what = %self.what, mib = format!("{:.1}", Self::mib(self.seen)), "pulled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_registries_are_told_apart() {
        for local in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "10.1.2.3",
            "192.168.1.20:5000",
            "172.20.0.5:443",
            "[::1]:5000",
            "[fd00::1]:5000",
            "registry:5000",
            "registry.localhost",
        ] {
            assert!(is_local(local), "{local}");
        }
        for public in [
            "ghcr.io",
            "registry.example.com:5000",
            "8.8.8.8",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_local(public), "{public}");
        }
    }

    #[test]
    fn refused_and_tls_causes_are_found_through_io_errors() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(cause(&refused), Cause::Refused);
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        ));
        assert!(matches!(cause(&tls), Cause::Tls(_)), "{:?}", cause(&tls));
        assert_eq!(cause(&std::io::Error::other("dns")), Cause::Other);
    }
}
