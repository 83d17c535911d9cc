//! Plugins from OCI registries (`plugins[].source.oci`) and the tool that publishes them
//! (`mcpg plugin push|pull|inspect`).
//!
//! - [`artifact`]: the artifact format: an index of per-platform manifests, each with a
//!   config blob describing the plugin and the library as its one layer (pure).
//! - [`cache`]: the digest-keyed local cache, written atomically and verified on every read.
//! - `registry`: talking to a registry through `oci-client` (credentials, plain HTTP when
//!   asked, progress).

pub mod artifact;
pub mod cache;
mod registry;

use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde_json::{Value, json};

use crate::config::model::{PluginSource, PullPolicy};
use artifact::{Document, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Platform, PluginInfo};
use cache::{Cache, CacheError};
pub use registry::Basic;
use registry::Registry;

/// Why an OCI plugin could not be had.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("`{reference}` is not a valid OCI reference: {message}")]
    BadReference { reference: String, message: String },
    #[error("registry for {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("{reference}: {message}")]
    NotAPlugin { reference: String, message: String },
    #[error("{reference}: {message}")]
    NoPlatform { reference: String, message: String },
    #[error(
        "{reference} is not in the plugin cache {dir}, and this may not contact the registry{hint}"
    )]
    NotCached {
        reference: String,
        dir: PathBuf,
        hint: &'static str,
    },
    #[error("{reference} holds plugin `{found}`, not `{expected}`")]
    IdMismatch {
        reference: String,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Push(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// An `oci` plugin source, as the config gives it.
#[derive(Debug, Clone)]
pub struct Source {
    pub reference: String,
    pub policy: PullPolicy,
    pub plain_http: bool,
    pub basic: Basic,
    pub cache_dir: PathBuf,
}

impl Source {
    /// The source of a plugin whose config names `oci`.
    pub fn from_config(s: &PluginSource) -> Option<Self> {
        let reference = s.oci.clone()?;
        let pinned = reference.contains("@sha256:");
        Some(Self {
            policy: s.pull_policy.unwrap_or(if pinned {
                PullPolicy::IfNotPresent
            } else {
                PullPolicy::Always
            }),
            plain_http: s.plain_http,
            basic: s
                .auth
                .as_ref()
                .map(|a| (a.username.clone(), a.password.clone())),
            cache_dir: s.cache_dir.clone().unwrap_or_else(cache::default_dir),
            reference,
        })
    }
}

/// A plugin library found in the cache (pulled now, or earlier), verified.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The library to load (a verified cache blob).
    pub library: PathBuf,
    pub info: PluginInfo,
    /// The digest the reference resolved to (the index, or a single manifest).
    pub digest: String,
}

/// Parses a reference that names its registry. A name without one (`redis:1`, `mcpg/x`) is
/// refused rather than taken to mean Docker Hub, as container tools would: a plugin is a
/// shared library mcpg loads into itself, so where it comes from is written out. Docker Hub is
/// still reachable as `docker.io/…`. The rule is the config checker's: the first component
/// is a registry when it has a `.` or a `:`, or is `localhost`.
fn parse_reference(r: &str) -> Result<Reference, OciError> {
    let bad = |message: String| OciError::BadReference {
        reference: r.to_owned(),
        message,
    };
    let name = r.split('@').next().unwrap_or_default();
    let registry = name.split_once('/').map(|(first, _)| first);
    match registry {
        Some(h) if h.contains('.') || h.contains(':') || h == "localhost" => {}
        _ => {
            return Err(bad(format!(
                "it names no registry, and mcpg does not assume Docker Hub; write the registry \
                 host first, e.g. `localhost:5000/{name}` or `registry.example.com/{name}` \
                 (Docker Hub: `docker.io/{name}`)"
            )));
        }
    }
    r.parse::<Reference>().map_err(|e| bad(e.to_string()))
}

impl Source {
    /// The `mcpg plugin pull` command that puts this source's plugin into the cache it reads
    /// (with `--plain-http`, `--cache-dir` and `--username` as the source needs; the password
    /// goes in `$MCPG_REGISTRY_PASSWORD`).
    pub fn pull_command(&self) -> String {
        let mut c = String::from("mcpg plugin pull");
        if self.plain_http {
            c.push_str(" --plain-http");
        }
        if self.cache_dir != cache::default_dir() {
            c.push_str(&format!(
                " --cache-dir {}",
                shell_word(&self.cache_dir.to_string_lossy())
            ));
        }
        if let Some((user, _)) = &self.basic {
            c.push_str(&format!(" --username {}", shell_word(user)));
        }
        c.push(' ');
        c.push_str(&shell_word(&self.reference));
        c
    }
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Where the blobs an artifact needs come from: the cache only, or the registry for what the
/// cache lacks.
enum Fill<'a> {
    Offline,
    Online(&'a Registry, &'a Reference),
}

/// Gets the plugin a source names for `want`, honouring its pull policy: from the cache when
/// allowed and present, else from the registry (every digest verified, each blob written to
/// the cache atomically). `expected_id` is the id the config declares.
pub async fn fetch(
    src: &Source,
    want: &Platform,
    expected_id: Option<&str>,
) -> Result<Resolved, OciError> {
    let reference = parse_reference(&src.reference)?;
    let cache = Cache::new(src.cache_dir.clone());
    if src.policy == PullPolicy::IfNotPresent
        && let Some(r) = cached_with(&cache, &reference, &src.reference, want).await?
    {
        tracing::info!(reference = %src.reference, digest = %r.digest, "plugin found in the cache");
        return check_id(r, &src.reference, expected_id);
    }
    let registry = Registry::new(&reference, src.plain_http, src.basic.clone());
    let (bytes, digest) = registry.manifest(&reference).await?;
    if reference.digest().is_none() {
        tracing::info!(reference = %src.reference, digest = %digest, "resolved the plugin's tag");
    }
    cache.write(&digest, &bytes, "the artifact's manifest")?;
    let r = walk(
        &cache,
        &src.reference,
        &digest,
        want,
        Fill::Online(&registry, &reference),
    )
    .await?
    .expect("online walks fetch what is missing");
    cache.remember(&src.reference, &digest)?;
    check_id(r, &src.reference, expected_id)
}

/// The plugin a source names for `want`, from the cache only (never the network): `None`
/// when it is not cached.
pub fn cached(src: &Source, want: &Platform) -> Result<Option<Resolved>, OciError> {
    let reference = parse_reference(&src.reference)?;
    let cache = Cache::new(src.cache_dir.clone());
    futures::executor::block_on(cached_with(&cache, &reference, &src.reference, want))
}

async fn cached_with(
    cache: &Cache,
    reference: &Reference,
    name: &str,
    want: &Platform,
) -> Result<Option<Resolved>, OciError> {
    let digest = match reference.digest() {
        Some(d) => d.to_owned(),
        None => match cache.resolved(name) {
            Some(d) => d,
            None => return Ok(None),
        },
    };
    walk(cache, name, &digest, want, Fill::Offline).await
}

fn check_id(r: Resolved, reference: &str, expected: Option<&str>) -> Result<Resolved, OciError> {
    match expected {
        Some(id) if id != r.info.id => Err(OciError::IdMismatch {
            reference: reference.to_owned(),
            expected: id.to_owned(),
            found: r.info.id,
        }),
        _ => Ok(r),
    }
}

/// Gets a manifest or config blob: from the cache (verified), or from the registry into the
/// cache; `None` offline when it is not cached.
async fn small_blob(
    cache: &Cache,
    fill: &Fill<'_>,
    digest: &str,
    what: &str,
    manifest: bool,
) -> Result<Option<Vec<u8>>, OciError> {
    if let Some(b) = cache.read(digest)? {
        return Ok(Some(b));
    }
    let Fill::Online(registry, reference) = fill else {
        return Ok(None);
    };
    if manifest {
        let by_digest = reference.clone_with_digest(digest.to_owned());
        let (bytes, actual) = registry.manifest(&by_digest).await?;
        cache.write(&actual, &bytes, what)?;
        return Ok(Some(bytes));
    }
    let d = artifact::Descriptor {
        media_type: artifact::CONFIG_MEDIA_TYPE.into(),
        digest: digest.to_owned(),
        size: 0,
        platform: None,
        annotations: Default::default(),
    };
    let path = registry.blob_into(reference, &d, cache, what).await?;
    Ok(Some(std::fs::read(path).map_err(|e| CacheError::Io {
        dir: cache.dir().to_path_buf(),
        source: e,
    })?))
}

/// From the top-level document to a verified library for `want`.
async fn walk(
    cache: &Cache,
    name: &str,
    top: &str,
    want: &Platform,
    fill: Fill<'_>,
) -> Result<Option<Resolved>, OciError> {
    let not_plugin = |e: artifact::NotAPlugin| OciError::NotAPlugin {
        reference: name.to_owned(),
        message: e.0,
    };
    let host_abi = mcpg_plugin_api::remote::host_abi_version();
    let Some(top_bytes) = small_blob(cache, &fill, top, "the artifact's manifest", true).await?
    else {
        return Ok(None);
    };
    let manifest = match artifact::parse_document(&top_bytes).map_err(not_plugin)? {
        Document::Manifest(m) => m,
        Document::Index(index) => {
            let entry = artifact::select(&index, want, &host_abi).map_err(|message| {
                OciError::NoPlatform {
                    reference: name.to_owned(),
                    message,
                }
            })?;
            let what = format!("the {want} manifest");
            let Some(bytes) = small_blob(cache, &fill, &entry.digest, &what, true).await? else {
                return Ok(None);
            };
            artifact::parse_manifest(&bytes).map_err(not_plugin)?
        }
    };
    let Some(info_bytes) = small_blob(
        cache,
        &fill,
        &manifest.config.digest,
        "the plugin description",
        false,
    )
    .await?
    else {
        return Ok(None);
    };
    let info: PluginInfo =
        serde_json::from_slice(&info_bytes).map_err(|e| OciError::NotAPlugin {
            reference: name.to_owned(),
            message: format!("bad plugin description: {e}"),
        })?;
    if info.platform != *want || !artifact::abi_compatible(&info.abi, &host_abi) {
        return Err(OciError::NoPlatform {
            reference: name.to_owned(),
            message: format!(
                "the artifact is a build for {} (ABI {}); this mcpg needs {want} (ABI {host_abi})",
                info.platform, info.abi
            ),
        });
    }
    let layer = &manifest.layers[0];
    let library = match cache.verified_path(&layer.digest)? {
        Some(p) => p,
        None => match &fill {
            Fill::Offline => return Ok(None),
            Fill::Online(registry, reference) => {
                let what = format!("{} ({})", info.file_name, info.platform);
                registry.blob_into(reference, layer, cache, &what).await?
            }
        },
    };
    Ok(Some(Resolved {
        library,
        info,
        digest: top.to_owned(),
    }))
}

/// What `mcpg plugin push` published.
#[derive(Debug)]
pub struct Pushed {
    pub info: PluginInfo,
    pub manifest_digest: String,
    pub index_digest: String,
}

/// Packs the plugin library at `file` (loaded here to read its id, ABI and config schema;
/// its platform is this machine's) as one platform's build and pushes it to `reference` (a
/// tag), adding to the platforms already published there.
pub async fn push(
    file: &Path,
    reference: &str,
    plain_http: bool,
    basic: Basic,
) -> Result<Pushed, OciError> {
    let r = parse_reference(reference)?;
    if r.digest().is_some() {
        return Err(OciError::Push(format!(
            "push to a tag, not a digest: `{reference}` (the digest is computed from what is pushed)"
        )));
    }
    let plugin = mcpg_plugin_api::remote::LoadedPlugin::load(file, None).map_err(|e| {
        OciError::Push(format!(
            "{} is not a loadable mcpg plugin: {e}",
            file.display()
        ))
    })?;
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin.so".into());
    let info = PluginInfo {
        format: 1,
        id: plugin.id().to_owned(),
        abi: plugin.abi_version().to_owned(),
        platform: Platform::host(),
        file_name: file_name.clone(),
        config_schema: plugin.config_schema(),
    };
    let info_bytes = serde_json::to_vec(&info).expect("serialisable");
    let library = std::fs::read(file)
        .map_err(|e| OciError::Push(format!("cannot read {}: {e}", file.display())))?;
    let manifest = artifact::build_manifest(&info_bytes, &library, &file_name);
    let registry = Registry::new(&r, plain_http, basic);
    registry.push_blob(&r, info_bytes).await?;
    registry.push_blob(&r, library).await?;
    let manifest_digest = artifact::digest_of(&manifest);
    registry
        .push_manifest(
            &r.clone_with_digest(manifest_digest.clone()),
            manifest.clone(),
            MANIFEST_MEDIA_TYPE,
        )
        .await?;
    // Whatever the tag holds already: other platforms' builds of the same plugin are kept.
    let existing = match registry.manifest(&r).await {
        Ok((bytes, _)) => match artifact::parse_document(&bytes) {
            Ok(Document::Index(i)) => {
                if let Some(other) = i.manifests.iter().find_map(|d| {
                    d.annotations
                        .get(artifact::ID_ANNOTATION)
                        .filter(|id| **id != info.id)
                }) {
                    return Err(OciError::Push(format!(
                        "{reference} holds plugin `{other}`; refusing to add `{}` to it",
                        info.id
                    )));
                }
                Some(i)
            }
            Ok(Document::Manifest(_)) => None,
            Err(e) => {
                return Err(OciError::Push(format!(
                    "{reference} holds something that is not an mcpg plugin ({}); refusing to overwrite it",
                    e.0
                )));
            }
        },
        Err(_) => None,
    };
    let index = artifact::merge_index(existing, &info, &manifest);
    let index_digest = artifact::digest_of(&index);
    registry.push_manifest(&r, index, INDEX_MEDIA_TYPE).await?;
    Ok(Pushed {
        info,
        manifest_digest,
        index_digest,
    })
}

/// What `mcpg plugin inspect` shows: the digest the reference resolves to and, per platform,
/// the plugin's id, ABI, file name, sizes and config schema.
pub async fn inspect(reference: &str, plain_http: bool, basic: Basic) -> Result<Value, OciError> {
    let r = parse_reference(reference)?;
    let registry = Registry::new(&r, plain_http, basic);
    let (bytes, digest) = registry.manifest(&r).await?;
    let not_plugin = |e: artifact::NotAPlugin| OciError::NotAPlugin {
        reference: reference.to_owned(),
        message: e.0,
    };
    let entries: Vec<(Option<Platform>, Vec<u8>)> =
        match artifact::parse_document(&bytes).map_err(not_plugin)? {
            Document::Manifest(_) => vec![(None, bytes.clone())],
            Document::Index(i) => {
                let mut out = Vec::new();
                for d in &i.manifests {
                    let (m, _) = registry
                        .manifest(&r.clone_with_digest(d.digest.clone()))
                        .await?;
                    out.push((d.platform.clone(), m));
                }
                out
            }
        };
    let tmp = Cache::new(
        std::env::temp_dir().join(format!("mcpg-inspect-{}", uuid::Uuid::new_v4().simple())),
    );
    let mut builds = Vec::new();
    for (_, m) in entries {
        let manifest = artifact::parse_manifest(&m).map_err(not_plugin)?;
        let path = registry
            .blob_into(&r, &manifest.config, &tmp, "the plugin description")
            .await?;
        let info: PluginInfo = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default())
            .map_err(|e| OciError::NotAPlugin {
                reference: reference.to_owned(),
                message: format!("bad plugin description: {e}"),
            })?;
        builds.push(json!({
            "platform": info.platform.to_string(),
            "id": info.id,
            "abi": info.abi,
            "file_name": info.file_name,
            "manifest_digest": artifact::digest_of(&m),
            "library_digest": manifest.layers[0].digest,
            "library_size": manifest.layers[0].size,
            "config_schema": info.config_schema,
        }));
    }
    let _ = std::fs::remove_dir_all(tmp.dir());
    Ok(json!({"reference": reference, "digest": digest, "builds": builds}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_its_registry() {
        for bare in [
            "x",
            "redis:1",
            "mcpg/cluster-redis:1.0",
            "library/redis@sha256:00",
        ] {
            let e = parse_reference(bare).unwrap_err().to_string();
            assert!(e.contains("names no registry"), "{bare}: {e}");
            assert!(e.contains("docker.io/"), "{bare}: {e}");
        }
        for ok in [
            "docker.io/library/redis:1",
            "localhost/x:1",
            "localhost:5000/x:1",
            "127.0.0.1:5000/mcpg/cluster-redis:1.0",
            "ghcr.io/acme/plugin:2",
        ] {
            let r = parse_reference(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(r.whole().split('/').next(), ok.split('/').next(), "{ok}");
        }
    }

    #[test]
    fn the_pull_command_carries_what_the_source_needs() {
        let mut src = Source {
            reference: "127.0.0.1:5000/mcpg/cluster-redis:1.0".into(),
            policy: PullPolicy::Always,
            plain_http: true,
            basic: None,
            cache_dir: PathBuf::from("/var/cache/mcpg plugins"),
        };
        assert_eq!(
            src.pull_command(),
            "mcpg plugin pull --plain-http --cache-dir '/var/cache/mcpg plugins' 127.0.0.1:5000/mcpg/cluster-redis:1.0"
        );
        src.plain_http = false;
        src.cache_dir = cache::default_dir();
        src.basic = Some(("ci".into(), "secret".into()));
        assert_eq!(
            src.pull_command(),
            "mcpg plugin pull --username ci 127.0.0.1:5000/mcpg/cluster-redis:1.0"
        );
    }
}
