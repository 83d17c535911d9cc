//! TLS for backends' clients (feature `tls`): the rustls client config every shipped backend
//! builds the same way — the public web roots plus a PEM file of private CAs, ring as the
//! crypto provider — and the `ca_cert` key that names that file.

use rustls::pki_types::{CertificateDer, pem::PemObject};
use schemars::JsonSchema;
use serde::Deserialize;

pub use rustls;

/// The TLS key a backend's config shares with the others; `#[serde(flatten)]` it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct TlsKeys {
    /// PEM file of CA certificates trusted for TLS besides the public web roots.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

impl TlsKeys {
    /// The client config for these keys ([`client_config`]).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        client_config(self.ca_cert.as_deref())
    }
}

/// Installs ring as the process's rustls crypto provider, unless one is installed already.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The CA certificates a client trusts: the public web roots plus every certificate in the
/// PEM file `ca_cert`. The error names the file and what is wrong with it.
pub fn root_store(ca_cert: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.to_vec());
    if let Some(path) = ca_cert {
        let bad = |e: &dyn std::fmt::Display| format!("ca_cert {path}: {e}");
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    Ok(roots)
}

/// A client config that verifies servers against [`root_store`], without client
/// certificates, with the provider [`install_provider`] installs.
pub fn client_config(ca_cert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    install_provider();
    let roots = root_store(ca_cert)?;
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_bad_ca_file_is_named() {
        let e = client_config(Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.starts_with("ca_cert /nonexistent/ca.pem: "), "{e}");
        let dir = std::env::temp_dir().join(format!("mcpg-tls-{}", std::process::id()));
        std::fs::write(
            &dir,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(dir.to_str()).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(e.starts_with("ca_cert "), "{e}");
    }

    #[test]
    fn without_a_file_the_web_roots_are_trusted() {
        assert!(!root_store(None).unwrap().is_empty());
        assert!(client_config(None).is_ok());
    }
}
