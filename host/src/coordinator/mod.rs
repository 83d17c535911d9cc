//! Choosing, loading, validating and booting the cluster coordinator: the built-in
//! `single_node`, or the plugin `dev.mcpg.cluster.<kind>` from `plugins[]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::export::{HostInfo, Severity as PluginSeverity};
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use mcpg_plugin_api::remote::{BootError, LoadError, LoadedPlugin};
use serde_json::Value;

use crate::config::{ClusterPlan, Diagnostic, KeyPath, PluginTarget, SourceMap, ValidatedConfig};

mod instrumented;
pub use instrumented::{Instrumented, instrument};

/// Why the coordinator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("plugin {id}: {source}")]
    Oci {
        id: String,
        #[source]
        source: crate::oci::OciError,
    },
    #[error("plugin {id}: its validation failed: {message}")]
    ValidatePanicked { id: String, message: String },
    #[error("plugin {id}: the cluster config is invalid ({count} errors)")]
    Invalid { id: String, count: usize },
    #[error("{0}")]
    Boot(#[from] BootError),
}

/// Where a configured plugin's library comes from.
pub enum PluginLocation {
    Path(PathBuf),
    Oci(crate::oci::Source),
}

/// The plugin entry `cluster.kind` selects, and where its library is.
pub fn selected_plugin(cfg: &ValidatedConfig) -> Option<(String, PluginLocation)> {
    let ClusterPlan::Plugin {
        plugin_id,
        plugin_index,
        ..
    } = &cfg.cluster
    else {
        return None;
    };
    let source = &cfg.config.plugins[*plugin_index].source;
    let location = match (&source.path, &source.oci) {
        (Some(p), _) => PluginLocation::Path(p.clone()),
        (None, Some(_)) => {
            PluginLocation::Oci(crate::oci::Source::from_config(source).expect("has oci"))
        }
        (None, None) => unreachable!("the loader rejects a source without path or oci"),
    };
    Some((plugin_id.clone(), location))
}

/// Loads the selected plugin's library, pulling it first when it comes from a registry. Runs
/// on the process's one Tokio runtime (the one `mcpg` builds at start).
pub async fn load_selected(
    cfg: &ValidatedConfig,
) -> Result<Option<LoadedPlugin>, CoordinatorError> {
    match selected_plugin(cfg) {
        None => Ok(None),
        Some((id, PluginLocation::Oci(src))) => {
            let resolved =
                crate::oci::fetch(&src, &crate::oci::artifact::Platform::host(), Some(&id))
                    .await
                    .map_err(|source| CoordinatorError::Oci {
                        id: id.clone(),
                        source,
                    })?;
            tracing::info!(
                plugin = %id,
                reference = %src.reference,
                digest = %resolved.digest,
                library = %resolved.library.display(),
                "plugin library from the OCI cache"
            );
            Ok(Some(LoadedPlugin::load(&resolved.library, Some(&id))?))
        }
        Some((id, PluginLocation::Path(path))) => Ok(Some(LoadedPlugin::load(&path, Some(&id))?)),
    }
}

/// Runs the plugin's own validation of its config and positions each finding in the YAML file.
/// `Err` if the plugin's validation panicked.
pub fn plugin_diagnostics(
    cfg: &ValidatedConfig,
    plugin: &LoadedPlugin,
) -> Result<Vec<Diagnostic>, CoordinatorError> {
    target_diagnostics(&cfg.cluster, &cfg.document, &cfg.source_map, plugin)
}

/// The plugin's own findings on the config `plan` hands it, positioned in the file.
fn target_diagnostics(
    plan: &ClusterPlan,
    document: &Value,
    source_map: &SourceMap,
    plugin: &LoadedPlugin,
) -> Result<Vec<Diagnostic>, CoordinatorError> {
    let ClusterPlan::Plugin {
        config,
        config_pointer,
        ..
    } = plan
    else {
        return Ok(Vec::new());
    };
    let found = plugin
        .validate(&Value::Object(config.clone()))
        .map_err(|message| CoordinatorError::ValidatePanicked {
            id: plugin.id().to_owned(),
            message,
        })?;
    Ok(found
        .into_iter()
        .map(|d| {
            let pointer = format!("{config_pointer}{}", d.pointer);
            let path = KeyPath::from_pointer(&pointer, document);
            let message = redact(
                document,
                source_map,
                &pointer,
                &format!("{} (plugin {})", d.message, plugin.id()),
            );
            // A missing key is reported where its object is; an unknown key at the key.
            let pos = if document.pointer(&pointer).is_some() {
                source_map.key_pos(&pointer)
            } else {
                source_map.value_pos(&pointer)
            };
            match d.severity {
                PluginSeverity::Error => Diagnostic::error(pos, path, message),
                PluginSeverity::Warning => Diagnostic::warning(pos, path, message),
            }
        })
        .collect())
}

fn redact(document: &Value, source_map: &SourceMap, pointer: &str, message: &str) -> String {
    if !source_map.is_secret(pointer) {
        return message.to_owned();
    }
    let Some(value) = document.pointer(pointer) else {
        return message.to_owned();
    };
    let mut out = message.replace(&value.to_string(), "<the value from the environment>");
    if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
        out = out.replace(s, "<the value from the environment>");
    }
    out
}

/// A running coordinator and what it is.
pub struct Booted {
    pub coordinator: Arc<dyn Coordinator>,
    /// `single_node` or the plugin's kind.
    pub kind: String,
    pub plugin: Option<LoadedPlugin>,
}

/// The timing of the built-in `single_node` coordinator.
pub fn single_node_config() -> MemoryConfig {
    MemoryConfig {
        lease_ttl: Duration::from_secs(15),
        peer_ttl: Duration::from_secs(15),
        renew_percent: 50,
    }
}

/// The built-in in-process coordinator.
pub fn single_node(node_id: &str) -> Arc<dyn Coordinator> {
    Arc::new(MemoryStore::new(single_node_config()).handle(node_id))
}

/// Boots the coordinator `cfg` selects. `plugin` is the library [`load_selected`] returned,
/// already validated.
pub async fn boot(
    cfg: &ValidatedConfig,
    plugin: Option<LoadedPlugin>,
    node_id_flag: Option<&str>,
) -> Result<Booted, CoordinatorError> {
    match &cfg.cluster {
        ClusterPlan::Plugin {
            kind,
            config,
            plugin_id,
            ..
        } => {
            let Some(plugin) = plugin else {
                return Err(BootError {
                    id: plugin_id.clone(),
                    message: "the plugin library was not loaded".into(),
                }
                .into());
            };
            let host = HostInfo {
                node_id: node_id_flag.map(str::to_owned),
                host_version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            let (p, config) = (plugin.clone(), Value::Object(config.clone()));
            let coordinator = tokio::task::spawn_blocking(move || p.boot(&config, &host))
                .await
                .map_err(|e| BootError {
                    id: plugin.id().to_owned(),
                    message: e.to_string(),
                })??;
            Ok(Booted {
                coordinator: instrument(coordinator),
                kind: kind.clone(),
                plugin: Some(plugin),
            })
        }
        ClusterPlan::SingleNode => {
            let node_id = crate::identity::single_node_id(node_id_flag);
            Ok(Booted {
                coordinator: instrument(single_node(&node_id)),
                kind: crate::config::model::SINGLE_NODE.into(),
                plugin: None,
            })
        }
    }
}

/// `mcpg-config-check`'s plugin phase: loads the selected plugin when its library is at hand
/// and returns its positioned findings. Runs on any file whose `cluster` and plugin entry are
/// usable, whatever else is wrong in it. A library path that does not exist is an error when
/// the file is checked `here` (where it will run: `mcpg` would exit at start), a warning
/// otherwise; an `oci:` source not in the cache is a warning (`mcpg` pulls it at start); a
/// library that exists but is broken is an error.
pub fn check_plugin(target: &PluginTarget, here: bool) -> Vec<Diagnostic> {
    let ClusterPlan::Plugin {
        plugin_id: id,
        plugin_index,
        ..
    } = &target.plan
    else {
        return Vec::new();
    };
    let source = KeyPath::root()
        .key("plugins")
        .index(*plugin_index)
        .key("source");
    let at = |key: &str| {
        let path = source.clone().key(key);
        (target.source_map.value_pos(&path.pointer()), path)
    };
    let check =
        |library: &std::path::Path, pos, path: KeyPath| match LoadedPlugin::load(library, Some(id))
        {
            Err(e) => vec![Diagnostic::error(pos, path, e.to_string())],
            Ok(plugin) => match target_diagnostics(
                &target.plan,
                &target.document,
                &target.source_map,
                &plugin,
            ) {
                Ok(diags) => diags,
                Err(e) => vec![Diagnostic::error(pos, path, e.to_string())],
            },
        };
    match (
        &target.source.path,
        crate::oci::Source::from_config(&target.source),
    ) {
        (Some(p), _) if !p.exists() => {
            let (pos, path) = at("path");
            if here {
                vec![Diagnostic::error(
                    pos,
                    path,
                    format!(
                        "plugin library {} not found, so mcpg would not start with this file; build or copy the library there, or correct the path (a relative path is resolved against the config file's directory). Checking a file that runs on another machine? Pass --not-here",
                        p.display()
                    ),
                )]
            } else {
                vec![Diagnostic::warning(
                    pos,
                    path,
                    format!(
                        "plugin library {} not found here (--not-here); its `cluster.*` keys were not checked",
                        p.display()
                    ),
                )]
            }
        }
        (Some(p), _) => {
            let (pos, path) = at("path");
            check(p, pos, path)
        }
        (None, Some(src)) => {
            // Only what is cached already: checking a config never contacts a registry.
            let (pos, path) = at("oci");
            match crate::oci::cached(&src, &crate::oci::artifact::Platform::host()) {
                Ok(None) => vec![Diagnostic::warning(
                    pos,
                    path,
                    format!(
                        "plugin {id} ({}) is not in the plugin cache {}; its `cluster.*` keys were not checked (`{}` caches it)",
                        src.reference,
                        src.cache_dir.display(),
                        src.pull_command()
                    ),
                )],
                Err(e) => vec![Diagnostic::error(pos, path, e.to_string())],
                Ok(Some(r)) if r.info.id != *id => vec![Diagnostic::error(
                    pos,
                    path,
                    format!("{} holds plugin `{}`, not `{id}`", src.reference, r.info.id),
                )],
                Ok(Some(r)) => check(&r.library, pos, path),
            }
        }
        (None, None) => Vec::new(),
    }
}
