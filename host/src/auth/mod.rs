//! Downstream access control: who a request comes from (static bearer tokens, JWTs checked
//! against an issuer's keys) and what each caller may use (per-identity access rules). HTTP
//! statuses and MCP messages are not known here: `mcp/http.rs` turns an [`AuthError`] into a
//! `401`/`403` and `mcp/access.rs` applies a [`Policy`] to MCP messages.

pub mod jwks_http;
pub mod jwt;
pub mod policy;

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::model::AuthConfig;

pub use policy::{Kind, Policy};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `token:<name>` or `jwt:<identity claim>`: what sessions are bound to, and what logs and
    /// the audit log show. Never a secret.
    pub key: String,
    /// The static token's name, for a token.
    pub token: Option<String>,
    /// The identity claim's value, for a JWT.
    pub subject: Option<String>,
    /// The JWT's claims (empty for a static token).
    pub claims: Map<String, Value>,
}

impl Identity {
    pub(crate) fn token(name: &str) -> Self {
        Self {
            key: format!("token:{name}"),
            token: Some(name.to_owned()),
            subject: None,
            claims: Map::new(),
        }
    }
}

/// Why a request was not authenticated. Messages name what was wrong with the token, never
/// the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("an `Authorization: Bearer <token>` header is required")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    NotBearer,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued for another resource (audience)")]
    WrongAudience,
    #[error("the token lacks a required scope")]
    InsufficientScope,
    #[error("the issuer's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The OAuth error code of the `WWW-Authenticate` challenge (RFC 6750 §3.1), if any.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing | AuthError::NotBearer => None,
            AuthError::InsufficientScope => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::NotBearer => "not_bearer",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// One binding's authentication: its static tokens and JWT verifier.
pub struct Authenticator {
    /// Name and SHA-256 of each static token: compared digest to digest in constant time, so
    /// neither a token's content nor its length leaks through timing.
    tokens: Vec<(String, [u8; 32])>,
    jwt: Option<Arc<jwt::Verifier>>,
    pub config: AuthConfig,
}

impl Authenticator {
    /// Builds the authenticator; with a `jwks_url`, starts fetching the key set in the
    /// background (a failure is logged and retried; tokens are refused until keys arrive).
    pub fn new(
        config: &AuthConfig,
        binding: &str,
        jwks_url: Option<&url::Url>,
    ) -> anyhow::Result<Self> {
        let tokens = config
            .tokens
            .iter()
            .map(|t| (t.name.clone(), Sha256::digest(t.token.as_bytes()).into()))
            .collect();
        let jwt = match &config.jwt {
            Some(j) => Some(jwt::Verifier::start(j, binding, jwks_url)?),
            None => None,
        };
        Ok(Self {
            tokens,
            jwt,
            config: config.clone(),
        })
    }

    /// Who sent a request with these headers' `Authorization`.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = bearer(value).ok_or(AuthError::NotBearer)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, d) in &self.tokens {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        if let Some(name) = found {
            return Ok(Identity::token(name));
        }
        match &self.jwt {
            Some(v) => v.verify(token).await,
            None => Err(AuthError::Invalid("unknown token".into())),
        }
    }

    /// The scopes to name in a challenge.
    pub fn challenge_scopes(&self) -> Vec<String> {
        let mut s = self
            .config
            .jwt
            .as_ref()
            .map(|j| j.required_scopes.clone())
            .unwrap_or_default();
        if s.is_empty() {
            s = self.config.scopes_supported.clone();
        }
        s
    }

    /// The authorization servers a client may get a token from: `authorization_servers` as
    /// configured, else the JWT issuer. Empty for a binding that takes static tokens only.
    pub fn authorization_servers(&self) -> Vec<String> {
        let mut servers = self.config.authorization_servers.clone();
        if servers.is_empty()
            && let Some(j) = &self.config.jwt
        {
            servers.push(j.issuer.clone());
        }
        servers
    }

    /// The `WWW-Authenticate` value for a refusal (RFC 6750 §3, RFC 9728 §5.1). Only a binding
    /// with an authorization server points at its protected-resource metadata: MCP clients
    /// treat that pointer as an invitation to run OAuth, which a static token cannot satisfy.
    pub fn challenge(&self, err: &AuthError, metadata_url: &str) -> String {
        let mut v = if self.authorization_servers().is_empty() {
            "Bearer realm=\"mcpg\"".to_owned()
        } else {
            format!("Bearer resource_metadata=\"{metadata_url}\"")
        };
        let scopes = self.challenge_scopes();
        if !scopes.is_empty() {
            v.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
        }
        if let Some(code) = err.oauth_error() {
            v.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                err.to_string().replace(['"', '\\'], "'")
            ));
        }
        v
    }

    /// The protected-resource metadata document (RFC 9728) for `resource`; `None` for a
    /// binding without an authorization server (static tokens only). The MCP authorization
    /// specification requires the document to name at least one authorization server, and
    /// clients that find an empty list fall back to treating the MCP endpoint itself as one
    /// (and fail at Dynamic Client Registration), so such a binding serves no document.
    pub fn metadata(&self, resource: &str) -> Option<Value> {
        let servers = self.authorization_servers();
        if servers.is_empty() {
            return None;
        }
        let mut doc = Map::new();
        doc.insert("resource".into(), Value::String(resource.to_owned()));
        doc.insert("authorization_servers".into(), servers.into());
        doc.insert("bearer_methods_supported".into(), vec!["header"].into());
        if !self.config.scopes_supported.is_empty() {
            doc.insert(
                "scopes_supported".into(),
                self.config.scopes_supported.clone().into(),
            );
        }
        Some(Value::Object(doc))
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::StaticToken;

    fn auth() -> Authenticator {
        auth_with(vec!["https://idp.example".into()])
    }

    fn auth_with(authorization_servers: Vec<String>) -> Authenticator {
        let config = AuthConfig {
            tokens: vec![
                StaticToken {
                    name: "ci".into(),
                    token: "0123456789abcdef-ci".into(),
                },
                StaticToken {
                    name: "ops".into(),
                    token: "0123456789abcdef-ops".into(),
                },
            ],
            jwt: None,
            resource: None,
            authorization_servers,
            scopes_supported: vec!["mcp:tools".into()],
        };
        Authenticator::new(&config, "b", None).unwrap()
    }

    #[tokio::test]
    async fn static_tokens_name_their_holder() {
        let a = auth();
        let id = a
            .authenticate(Some("Bearer 0123456789abcdef-ops"))
            .await
            .unwrap();
        assert_eq!(id.key, "token:ops");
        let id = a
            .authenticate(Some("bearer  0123456789abcdef-ci "))
            .await
            .unwrap();
        assert_eq!(id.key, "token:ci");
        assert_eq!(a.authenticate(None).await, Err(AuthError::Missing));
        assert_eq!(
            a.authenticate(Some("Basic dXNlcjpwYXNz")).await,
            Err(AuthError::NotBearer)
        );
        assert!(matches!(
            a.authenticate(Some("Bearer 0123456789abcdef-c")).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn challenges_point_at_the_metadata() {
        let a = auth();
        let c = a.challenge(
            &AuthError::Missing,
            "https://h/.well-known/oauth-protected-resource/mcp",
        );
        assert_eq!(
            c,
            "Bearer resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
        );
        let c = a.challenge(&AuthError::Expired, "u");
        assert!(c.contains("error=\"invalid_token\""), "{c}");
        let m = a.metadata("https://h/mcp").unwrap();
        assert_eq!(m["resource"], "https://h/mcp");
        assert_eq!(m["authorization_servers"][0], "https://idp.example");
    }

    #[test]
    fn static_tokens_alone_serve_no_oauth_metadata() {
        let a = auth_with(vec![]);
        assert!(a.authorization_servers().is_empty());
        assert_eq!(a.metadata("https://h/mcp"), None);
        let c = a.challenge(&AuthError::Missing, "https://h/.well-known/x");
        assert_eq!(c, "Bearer realm=\"mcpg\", scope=\"mcp:tools\"");
        assert!(!c.contains("resource_metadata"), "{c}");
    }
}
