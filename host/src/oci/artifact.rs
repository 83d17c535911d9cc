//! The artifact format mcpg publishes plugins in: an OCI image index whose entries are one
//! image manifest per platform, each with a config blob describing the plugin (id, ABI,
//! platform, config schema) and one layer, the shared library. Only our own media types are
//! accepted, so nothing else is ever mistaken for a plugin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// `artifactType` of the index and of every manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.mcpg.plugin.v1";
/// Media type of the config blob ([`PluginInfo`]).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.mcpg.plugin.config.v1+json";
/// Media type of the layer: the plugin's shared library.
pub const LIBRARY_MEDIA_TYPE: &str = "application/vnd.mcpg.plugin.library.v1";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Index annotation carrying an entry's plugin ABI version.
pub const ABI_ANNOTATION: &str = "dev.mcpg.plugin.abi";
/// Index annotation carrying an entry's plugin id.
pub const ID_ANNOTATION: &str = "dev.mcpg.plugin.id";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// An OS and CPU architecture, in OCI's terms (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl Platform {
    /// The platform this mcpg runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
        }
    }

    /// `os/architecture`, e.g. `linux/amd64`.
    pub fn parse(s: &str) -> Option<Self> {
        let (os, architecture) = s.split_once('/')?;
        (!os.is_empty() && !architecture.is_empty() && !architecture.contains('/')).then(|| Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// The config blob of one platform's build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Format of this document.
    pub format: u32,
    pub id: String,
    /// The `mcpg-plugin-api` version the library was built against.
    pub abi: String,
    pub platform: Platform,
    /// The library's file name when it was pushed.
    pub file_name: String,
    /// The JSON Schema of the plugin's config, as the plugin reports it.
    pub config_schema: Value,
}

/// Whether a library built against plugin API `plugin` loads in a host built against `host`
/// (abi_stable's rule: same major version, and for 0.x the same minor).
pub fn abi_compatible(plugin: &str, host: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(plugin), parts(host)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (one platform's build).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index (every platform's build).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// Either kind of top-level document a reference can name.
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Why a document is not an mcpg plugin artifact.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotAPlugin(pub String);

/// Reads a document a reference named.
pub fn parse_document(bytes: &[u8]) -> Result<Document, NotAPlugin> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| NotAPlugin(format!("the manifest is not JSON: {e}")))?;
    let media = v["mediaType"].as_str().unwrap_or_default();
    let artifact = v["artifactType"].as_str().unwrap_or_default();
    if v.get("manifests").is_some() || media == INDEX_MEDIA_TYPE {
        if artifact != ARTIFACT_TYPE {
            return Err(NotAPlugin(format!(
                "it is not an mcpg plugin (artifactType `{artifact}`, expected `{ARTIFACT_TYPE}`)"
            )));
        }
        return serde_json::from_value(v)
            .map(Document::Index)
            .map_err(|e| NotAPlugin(format!("bad image index: {e}")));
    }
    parse_manifest(bytes).map(Document::Manifest)
}

/// Reads one platform's manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, NotAPlugin> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| NotAPlugin(format!("bad image manifest: {e}")))?;
    if m.config.media_type != CONFIG_MEDIA_TYPE
        || m.layers.len() != 1
        || m.layers[0].media_type != LIBRARY_MEDIA_TYPE
    {
        return Err(NotAPlugin(format!(
            "it is not an mcpg plugin (config `{}`, {} layer(s); expected config `{CONFIG_MEDIA_TYPE}` and one `{LIBRARY_MEDIA_TYPE}` layer)",
            m.config.media_type,
            m.layers.len()
        )));
    }
    Ok(m)
}

/// Picks the entry of an index for `want` whose ABI the host can load, or says what the
/// artifact has instead.
pub fn select<'a>(
    index: &'a Index,
    want: &Platform,
    host_abi: &str,
) -> Result<&'a Descriptor, String> {
    let fits = |d: &&Descriptor| {
        d.platform.as_ref() == Some(want)
            && d.annotations
                .get(ABI_ANNOTATION)
                .is_some_and(|abi| abi_compatible(abi, host_abi))
    };
    if let Some(d) = index.manifests.iter().find(fits) {
        return Ok(d);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .map(|d| {
            format!(
                "{} (ABI {})",
                d.platform
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "no platform".into()),
                d.annotations
                    .get(ABI_ANNOTATION)
                    .map(String::as_str)
                    .unwrap_or("?")
            )
        })
        .collect();
    Err(format!(
        "no build for {want} with plugin ABI {host_abi} in the artifact; it has: {}",
        if available.is_empty() {
            "nothing".to_owned()
        } else {
            available.join(", ")
        }
    ))
}

/// The manifest (and its bytes) for one platform's build, given its config and library blobs.
pub fn build_manifest(info_bytes: &[u8], library: &[u8], file_name: &str) -> Vec<u8> {
    let m = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: digest_of(info_bytes),
            size: info_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: LIBRARY_MEDIA_TYPE.into(),
            digest: digest_of(library),
            size: library.len() as u64,
            platform: None,
            annotations: BTreeMap::from([(TITLE_ANNOTATION.to_owned(), file_name.to_owned())]),
        }],
    };
    serde_json::to_vec(&m).expect("serialisable")
}

/// `index` (or a new one) with the entry for `info`'s platform and ABI replaced by `manifest`.
pub fn merge_index(index: Option<Index>, info: &PluginInfo, manifest: &[u8]) -> Vec<u8> {
    let mut index = index.unwrap_or(Index {
        schema_version: 2,
        media_type: Some(INDEX_MEDIA_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        manifests: Vec::new(),
    });
    index.manifests.retain(|d| {
        !(d.platform.as_ref() == Some(&info.platform)
            && d.annotations.get(ABI_ANNOTATION) == Some(&info.abi))
    });
    index.manifests.push(Descriptor {
        media_type: MANIFEST_MEDIA_TYPE.into(),
        digest: digest_of(manifest),
        size: manifest.len() as u64,
        platform: Some(info.platform.clone()),
        annotations: BTreeMap::from([
            (ABI_ANNOTATION.to_owned(), info.abi.clone()),
            (ID_ANNOTATION.to_owned(), info.id.clone()),
        ]),
    });
    serde_json::to_vec(&index).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(arch: &str, abi: &str) -> PluginInfo {
        PluginInfo {
            format: 1,
            id: "dev.mcpg.cluster.x".into(),
            abi: abi.into(),
            platform: Platform {
                os: "linux".into(),
                architecture: arch.into(),
            },
            file_name: "libx.so".into(),
            config_schema: Value::Null,
        }
    }

    #[test]
    fn abi_follows_abi_stable_semver() {
        assert!(abi_compatible("0.1.0", "0.1.7"));
        assert!(!abi_compatible("0.2.0", "0.1.0"));
        assert!(abi_compatible("1.2.0", "1.0.0"));
        assert!(!abi_compatible("2.0.0", "1.9.0"));
        assert!(!abi_compatible("x", "0.1.0"));
    }

    #[test]
    fn an_index_keeps_one_entry_per_platform_and_abi_and_selection_says_what_is_there() {
        let m1 = build_manifest(b"{}", b"lib-amd64", "libx.so");
        let idx = merge_index(None, &info("amd64", "0.1.0"), &m1);
        let m2 = build_manifest(b"{}", b"lib-arm64", "libx.so");
        let Document::Index(i) = parse_document(&idx).unwrap() else {
            panic!("an index")
        };
        let idx = merge_index(Some(i), &info("arm64", "0.1.0"), &m2);
        let m3 = build_manifest(b"{}", b"lib-amd64-v2", "libx.so");
        let Document::Index(i) = parse_document(&idx).unwrap() else {
            panic!("an index")
        };
        let idx = merge_index(Some(i), &info("amd64", "0.1.0"), &m3);
        let Document::Index(i) = parse_document(&idx).unwrap() else {
            panic!("an index")
        };
        assert_eq!(i.manifests.len(), 2, "the amd64 entry was replaced");
        let amd = Platform::parse("linux/amd64").unwrap();
        assert_eq!(select(&i, &amd, "0.1.3").unwrap().digest, digest_of(&m3));
        let err = select(&i, &Platform::parse("linux/riscv64").unwrap(), "0.1.0").unwrap_err();
        assert!(err.contains("no build for linux/riscv64"), "{err}");
        assert!(
            err.contains("linux/amd64 (ABI 0.1.0)") && err.contains("linux/arm64 (ABI 0.1.0)"),
            "{err}"
        );
        let err = select(&i, &amd, "0.2.0").unwrap_err();
        assert!(err.contains("ABI 0.2.0"), "{err}");
        parse_manifest(&m1).unwrap();
    }

    #[test]
    fn other_artifacts_are_not_plugins() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":2},"layers":[]}"#;
        let e = parse_document(image).err().unwrap();
        assert!(e.0.contains("not an mcpg plugin"), "{e}");
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(parse_document(index).is_err());
    }
}
