//! The one HTTP client in `auth`: fetching an issuer's JSON Web Key Set from its URL (with the
//! platform's roots and an optional custom CA). Everything else in `auth` knows neither HTTP
//! nor MCP.

use std::time::Duration;

use crate::errors::error_chain;

/// Fetches one issuer's key set.
pub struct JwksFetcher {
    url: url::Url,
    client: reqwest::Client,
}

impl JwksFetcher {
    pub fn new(url: url::Url, ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(Self {
            url,
            client: crate::tls::client_builder(ca_file)?
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// The key set document, or why it could not be fetched.
    pub async fn fetch(&self) -> Result<String, String> {
        let r = async {
            let resp = self
                .client
                .get(self.url.clone())
                .send()
                .await?
                .error_for_status()?;
            resp.text().await
        }
        .await;
        r.map_err(|e| format!("fetching {}: {}", self.url, error_chain(&e)))
    }
}
