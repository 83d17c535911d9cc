//! The `requestState` mcpg hands to 2026-07-28 clients: which upstream an input-required
//! exchange belongs to, the upstream's own state or the exchange parked for the retry and the
//! replica holding it, signed with a key every replica shares through the `pipelines`
//! capability, so a retry verifies wherever it lands.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::capabilities::Capability;
use crate::mcp::wire::jsonrpc::{RpcError, code};

/// The key signing `requestState`: shared by every replica through the `pipelines` store
/// (created once), so a retry verifies wherever it lands.
pub struct StateKey {
    pipelines: Capability,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

impl StateKey {
    pub fn new(pipelines: Capability) -> Self {
        Self {
            pipelines,
            key: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<&[u8], RpcError> {
        self.key
            .get_or_try_init(|| async {
                let store = &self.pipelines.store;
                let fresh: Vec<u8> = (0..4)
                    .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
                    .collect();
                let err = |e: mcpg_plugin_api::coordinator::CoordError| {
                    RpcError::new(
                        code::INTERNAL_ERROR,
                        format!("cannot read the state key: {e}"),
                    )
                };
                if store
                    .create("state-key", fresh.clone(), None)
                    .await
                    .map_err(err)?
                    .is_some()
                {
                    return Ok(fresh);
                }
                Ok(store
                    .get("state-key")
                    .await
                    .map_err(err)?
                    .map(|e| e.value)
                    .unwrap_or(fresh))
            })
            .await
            .map(Vec::as_slice)
    }
}

/// What mcpg's own `requestState` carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub v: u32,
    /// The upstream (by name) the exchange belongs to.
    pub u: String,
    /// The upstream's own `requestState`, for upstreams that speak 2026-07-28.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    /// The parked upstream exchange, for bridged legacy upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// The replica the exchange is parked on (a retry reaching another replica is forwarded
    /// there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
}

const STATE_PREFIX: &str = "mcpg1.";

impl StateKey {
    /// Signs `st` into the `requestState` handed to a client.
    pub async fn seal(&self, st: &State) -> Result<String, RpcError> {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(st).expect("serialisable"));
        let mut mac = Hmac::<Sha256>::new_from_slice(self.get().await?).expect("any key length");
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok(format!("{STATE_PREFIX}{body}.{tag}"))
    }

    /// The state a client's `requestState` carries, if this gateway signed it unaltered.
    pub async fn open(&self, s: &str) -> Result<State, RpcError> {
        let bad = || {
            RpcError::invalid_params("requestState was not issued by this gateway or was altered")
        };
        let rest = s.strip_prefix(STATE_PREFIX).ok_or_else(bad)?;
        let (body, tag) = rest.split_once('.').ok_or_else(bad)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.get().await?).expect("any key length");
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| bad())?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}
