//! JWT validation against an issuer's JSON Web Key Set (from a URL or a file): signature,
//! algorithm allowlist, `iss`, `aud`, `exp`/`nbf` with clock skew, required scopes; the key set
//! kept fresh in the background and fetched again when a token names a key id it lacks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks_http::JwksFetcher;
use super::{AuthError, Identity};
use crate::config::model::{JwtAlgorithm, JwtConfig};

/// A token naming an unknown key id makes the key set be fetched again, at most this often
/// (so a flood of forged key ids cannot hammer the issuer).
const REFETCH_MIN: Duration = Duration::from_secs(10);

enum Source {
    Url(JwksFetcher),
    File(PathBuf),
}

#[derive(Default)]
struct Keys {
    /// By key id; keys without one are under "".
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    loaded: bool,
    last_error: Option<String>,
    fetched_at: Option<Instant>,
    file_stamp: Option<(SystemTime, u64)>,
}

pub struct Verifier {
    source: Source,
    keys: RwLock<Keys>,
    refetch: tokio::sync::Mutex<()>,
    validation: Validation,
    algorithms: Vec<Algorithm>,
    identity_claim: String,
    required_scopes: Vec<String>,
    binding: String,
    /// Tokens already verified, by SHA-256, with the identity they carry and until when that
    /// answer may be reused: a client presents the same token on every request, and checking
    /// its signature each time would dominate the cost of a small request (measured in
    /// `bench/run-security-overhead`).
    verified: std::sync::Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

/// How long a verified token is trusted without checking it again (so a key removed from the
/// set stops being accepted within this time), and how many are remembered.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
const VERIFIED_MAX: usize = 10_000;

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl Verifier {
    /// Builds the verifier and starts keeping its key set fresh.
    pub fn start(
        cfg: &JwtConfig,
        binding: &str,
        jwks_url: Option<&url::Url>,
    ) -> anyhow::Result<Arc<Self>> {
        let source = match (jwks_url, &cfg.jwks_file) {
            (Some(url), _) => Source::Url(JwksFetcher::new(url.clone(), cfg.ca_file.as_deref())?),
            (None, Some(p)) => Source::File(p.clone()),
            (None, None) => anyhow::bail!("jwt needs `jwks_url` or `jwks_file`"),
        };
        let algorithms: Vec<Algorithm> = cfg.algorithms.iter().copied().map(algorithm).collect();
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&cfg.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = cfg.clock_skew_ms.div_ceil(1000);
        validation.validate_nbf = true;
        let v = Arc::new(Self {
            source,
            keys: RwLock::new(Keys::default()),
            refetch: tokio::sync::Mutex::new(()),
            validation,
            algorithms,
            identity_claim: cfg.identity_claim.clone(),
            required_scopes: cfg.required_scopes.clone(),
            binding: binding.to_owned(),
            verified: std::sync::Mutex::new(HashMap::new()),
        });
        let every = match v.source {
            Source::Url(_) => Duration::from_millis(cfg.jwks_refresh_ms),
            // A file is cheap to look at: notice a rotated key set within a second.
            Source::File(_) => Duration::from_secs(1),
        };
        let weak = Arc::downgrade(&v);
        tokio::spawn(async move {
            loop {
                let Some(v) = weak.upgrade() else { return };
                v.reload().await;
                drop(v);
                tokio::time::sleep(every).await;
            }
        });
        Ok(v)
    }

    /// Fetches or reads the key set again; keeps the old keys when that fails.
    async fn reload(&self) {
        let text = match &self.source {
            Source::Url(fetcher) => fetcher.fetch().await,
            Source::File(p) => {
                let stamp = std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                if stamp.is_some() && stamp == self.keys.read().expect("lock").file_stamp {
                    return;
                }
                self.keys.write().expect("lock").file_stamp = stamp;
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
            }
        };
        let parsed = text.and_then(|t| {
            let set: JwkSet =
                serde_json::from_str(&t).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
            let mut by_kid = HashMap::new();
            for jwk in &set.keys {
                // Keys of kinds this build cannot use (e.g. symmetric) are skipped, not fatal.
                if let Ok(key) = DecodingKey::from_jwk(jwk) {
                    let alg = jwk
                        .common
                        .key_algorithm
                        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                    by_kid.insert(jwk.common.key_id.clone().unwrap_or_default(), (key, alg));
                }
            }
            Ok(by_kid)
        });
        let mut keys = self.keys.write().expect("lock");
        keys.fetched_at = Some(Instant::now());
        match parsed {
            Ok(by_kid) => {
                if !keys.loaded || keys.by_kid.len() != by_kid.len() {
                    tracing::info!(binding = %self.binding, keys = by_kid.len(), "JWT signing keys loaded");
                }
                keys.by_kid = by_kid;
                keys.loaded = true;
                keys.last_error = None;
            }
            Err(e) => {
                tracing::warn!(binding = %self.binding, error = %e, "cannot load the JWT signing keys; keeping the previous ones");
                keys.last_error = Some(e);
            }
        }
    }

    fn key_for(&self, kid: &str) -> Option<(DecodingKey, Option<Algorithm>)> {
        self.keys.read().expect("lock").by_kid.get(kid).cloned()
    }

    /// Checks a token and names its holder.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((who, until)) = self.verified.lock().expect("lock").get(&digest)
            && Instant::now() < *until
        {
            return Ok(who.clone());
        }
        let who = self.verify_anew(token).await?;
        // Reusable until the token expires (with the configured skew) or VERIFIED_FOR passes.
        let exp = who.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(u64::MAX);
        let left = Duration::from_secs((exp + self.validation.leeway).saturating_sub(now));
        let mut cache = self.verified.lock().expect("lock");
        if cache.len() >= VERIFIED_MAX {
            cache.clear();
        }
        cache.insert(
            digest,
            (who.clone(), Instant::now() + left.min(VERIFIED_FOR)),
        );
        Ok(who)
    }

    async fn verify_anew(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("not a JWT".into()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let mut key = self.key_for(&kid);
        if key.is_none() {
            // A rotated key set: look again, at most every REFETCH_MIN across all callers.
            let _guard = self.refetch.lock().await;
            key = self.key_for(&kid);
            let stale = self
                .keys
                .read()
                .expect("lock")
                .fetched_at
                .is_none_or(|t| t.elapsed() >= REFETCH_MIN);
            if key.is_none() && stale {
                self.reload().await;
                key = self.key_for(&kid);
            }
        }
        let Some((key, key_alg)) = key else {
            let keys = self.keys.read().expect("lock");
            return Err(match (&keys.last_error, keys.loaded) {
                (Some(e), false) => AuthError::KeysUnavailable(e.clone()),
                _ => AuthError::Invalid("signed with an unknown key".into()),
            });
        };
        if key_alg.is_some_and(|a| a != header.alg) {
            return Err(AuthError::Invalid(
                "the token's algorithm does not match its key".into(),
            ));
        }
        // The algorithm was checked against the allowlist above; the library wants exactly
        // the ones of the key's family.
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                    ErrorKind::ImmatureSignature => {
                        AuthError::Invalid("not valid yet (nbf)".into())
                    }
                    ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        AuthError::Invalid(format!("the `{c}` claim is missing"))
                    }
                    other => AuthError::Invalid(format!("malformed ({other:?})")),
                }
            })?;
        let claims = data.claims;
        let subject = match claims.get(&self.identity_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(AuthError::Invalid(format!(
                    "the `{}` claim is missing",
                    self.identity_claim
                )));
            }
        };
        let scopes = scopes(&claims);
        if !self
            .required_scopes
            .iter()
            .all(|s| scopes.iter().any(|t| t == s))
        {
            return Err(AuthError::InsufficientScope);
        }
        Ok(Identity {
            key: format!("jwt:{subject}"),
            token: None,
            subject: Some(subject),
            claims,
        })
    }
}

/// The scopes a token carries: `scope` (space-separated, RFC 8693) or `scp` (a list or a
/// string, as some issuers write it).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    out
}
