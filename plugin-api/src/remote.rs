//! The host side of the boundary: a booted plugin's FFI objects presented as a
//! [`Coordinator`], and the typed errors of loading a plugin library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use abi_stable::std_types::{ROption, RResult, RString};
use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::abi::*;
use crate::coordinator::*;
use crate::export::{HostInfo, PluginDiagnostic, Severity};

/// Why a plugin library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin library {path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path} is not an mcpg plugin: {detail}")]
    NotAPlugin { path: PathBuf, detail: String },
    #[error(
        "plugin {path} was built against mcpg-plugin-api {plugin_version}, but this mcpg has {host_version}; rebuild the plugin against a compatible mcpg-plugin-api"
    )]
    IncompatibleVersion {
        path: PathBuf,
        plugin_version: String,
        host_version: String,
    },
    #[error(
        "plugin {path} has a different ABI layout than this mcpg expects (plugin built against mcpg-plugin-api {plugin_version}, host has {host_version}); rebuild the plugin:\n{detail}"
    )]
    LayoutMismatch {
        path: PathBuf,
        plugin_version: String,
        host_version: String,
        detail: String,
    },
    #[error("plugin {path} reports id `{found}`, but the config declares it as `{expected}`")]
    IdMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("plugin {path} failed to initialise: {detail}")]
    Init { path: PathBuf, detail: String },
}

/// Why booting a plugin failed.
#[derive(Debug, thiserror::Error)]
#[error("plugin {id}: boot failed: {message}")]
pub struct BootError {
    pub id: String,
    pub message: String,
}

/// A plugin library, loaded and checked. Libraries are never unloaded.
#[derive(Clone)]
pub struct LoadedPlugin {
    module: PluginModRef,
    id: String,
    origin: String,
    abi: String,
}

fn host_version() -> String {
    PluginModRef::VERSION_STRINGS.version.to_string()
}

/// The plugin ABI version of this host: the `mcpg-plugin-api` version it was built against.
/// A library loads when it was built against a compatible one (same major; for 0.x, same
/// minor).
pub fn host_abi_version() -> String {
    host_version()
}

impl LoadedPlugin {
    /// Loads the library at `path` through its own library header (so that two plugins are
    /// never confused for one), checks its ABI version and layout, and, when `expected_id` is
    /// given, that it is that plugin.
    pub fn load(path: &Path, expected_id: Option<&str>) -> Result<Self, LoadError> {
        if !path.exists() {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let p = path.to_path_buf();
        let header = lib_header_from_path(path).map_err(|e| LoadError::NotAPlugin {
            path: p.clone(),
            detail: first_line(&e.to_string()),
        })?;
        let plugin_version = header.version_strings().version.to_string();
        let module = header
            .init_root_module::<PluginModRef>()
            .map_err(|e| match e {
                LibraryError::IncompatibleVersionNumber { .. }
                | LibraryError::ParseVersionError(_) => LoadError::IncompatibleVersion {
                    path: p.clone(),
                    plugin_version: plugin_version.clone(),
                    host_version: host_version(),
                },
                LibraryError::AbiInstability(detail) => LoadError::LayoutMismatch {
                    path: p.clone(),
                    plugin_version: plugin_version.clone(),
                    host_version: host_version(),
                    detail: summarize(&detail.to_string()),
                },
                other => LoadError::Init {
                    path: p.clone(),
                    detail: first_line(&other.to_string()),
                },
            })?;
        let mut plugin = Self::from_module(module, path.display().to_string());
        plugin.abi = plugin_version;
        if let Some(expected) = expected_id
            && plugin.id != expected
        {
            return Err(LoadError::IdMismatch {
                path: p,
                expected: expected.to_owned(),
                found: plugin.id,
            });
        }
        Ok(plugin)
    }

    /// Wraps a root module obtained in-process (a plugin linked as an `rlib`), so tests take the
    /// same path through the boundary as a loaded library.
    pub fn from_module(module: PluginModRef, origin: String) -> Self {
        let id = module.plugin_id()().into_string();
        Self {
            module,
            id,
            origin,
            abi: host_version(),
        }
    }

    /// The `mcpg-plugin-api` version the library was built against.
    pub fn abi_version(&self) -> &str {
        &self.abi
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the plugin came from (its path), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The plugin's config JSON Schema.
    pub fn config_schema(&self) -> serde_json::Value {
        serde_json::from_str(self.module.config_schema()().as_str())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Runs the plugin's pure validation. `Err` if the plugin panicked.
    pub fn validate(&self, config: &serde_json::Value) -> Result<Vec<PluginDiagnostic>, String> {
        let text = config.to_string();
        match self.module.validate()(text.as_str().into()) {
            RResult::ROk(diags) => Ok(diags
                .into_iter()
                .map(|d| PluginDiagnostic {
                    severity: if d.severity == 0 {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    pointer: d.pointer.into_string(),
                    message: d.message.into_string(),
                })
                .collect()),
            RResult::RErr(e) => Err(e.into_string()),
        }
    }

    /// Boots a coordinator. Blocks until the plugin has connected or failed, so call it off
    /// the async workers (`spawn_blocking`).
    pub fn boot(
        &self,
        config: &serde_json::Value,
        host: &HostInfo,
    ) -> Result<Arc<dyn Coordinator>, BootError> {
        let text = config.to_string();
        let info = FfiHostInfo {
            node_id: host.node_id.clone().map(RString::from).into(),
            host_version: host.host_version.clone().into(),
        };
        match self.module.boot()(text.as_str().into(), info) {
            RResult::ROk(ffi) => Ok(Arc::new(RemoteCoordinator { ffi })),
            RResult::RErr(e) => Err(BootError {
                id: self.id.clone(),
                message: e.into_string(),
            }),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

/// abi_stable's layout report is long; keep the lines that say what differs.
fn summarize(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let keep: Vec<&str> = lines.iter().copied().take(12).collect();
    let mut out = keep.join("\n");
    if lines.len() > keep.len() {
        out.push_str(&format!("\n… ({} more lines)", lines.len() - keep.len()));
    }
    out
}

fn coord_error(e: FfiError) -> CoordError {
    CoordError::new(ErrorKind::from_code(e.kind), e.message.into_string())
}

fn result<T, U>(r: RResult<T, FfiError>, f: impl FnOnce(T) -> U) -> CoordResult<U> {
    match r {
        RResult::ROk(v) => Ok(f(v)),
        RResult::RErr(e) => Err(coord_error(e)),
    }
}

fn entry(e: FfiEntry) -> Entry {
    Entry {
        key: e.key.into_string(),
        value: e.value.into_vec(),
        revision: e.revision,
    }
}

fn ms(d: Option<Duration>) -> ROption<u64> {
    d.map(|d| d.as_millis() as u64).into()
}

fn events(s: FfiStreamBox) -> BoxStream<'static, FfiEvent> {
    futures::stream::unfold(s, |s| async move {
        let next = s.next().await.into_option();
        next.map(|ev| (ev, s))
    })
    .boxed()
}

/// A plugin's coordinator, called across the boundary.
struct RemoteCoordinator {
    ffi: FfiCoordinatorBox,
}

#[async_trait]
impl Coordinator for RemoteCoordinator {
    fn node_id(&self) -> String {
        self.ffi.node_id().into_string()
    }

    async fn health(&self) -> Health {
        let h = self.ffi.health().await;
        Health {
            ok: h.ok,
            detail: h.detail.into_string(),
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        result(self.ffi.get(key.into()).await, |o| {
            o.into_option().map(entry)
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        result(self.ffi.put(key.into(), value.into(), ms(ttl)).await, |r| r)
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        result(
            self.ffi.create(key.into(), value.into(), ms(ttl)).await,
            ROption::into_option,
        )
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        result(
            self.ffi
                .compare_and_swap(key.into(), expected, value.into(), ms(ttl))
                .await,
            |c| match c {
                FfiCas::Swapped(r) => CasOutcome::Swapped(r),
                FfiCas::Mismatch(e) => CasOutcome::Mismatch(e.into_option().map(entry)),
            },
        )
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        result(self.ffi.delete(key.into(), expected.into()).await, |b| b)
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        result(self.ffi.list(prefix.into()).await, |v| {
            v.into_iter().map(entry).collect()
        })
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        result(
            self.ffi.publish(subject.into(), payload.into()).await,
            |r| r,
        )
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let s = result(self.ffi.subscribe(pattern.into()).await, |s| s)?;
        Ok(events(s)
            .filter_map(|e| async move {
                match e {
                    FfiEvent::Message { subject, payload } => Some(Message {
                        subject: subject.into_string(),
                        payload: payload.into_vec(),
                    }),
                    _ => None,
                }
            })
            .boxed())
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let l = result(
            self.ffi
                .acquire(name.into(), ms(ttl), wait.as_millis() as u64)
                .await,
            ROption::into_option,
        )?;
        Ok(l.map(|ffi| {
            Box::new(RemoteLease {
                name: ffi.name().into_string(),
                token: ffi.token(),
                ttl: Duration::from_millis(ffi.ttl_ms()),
                ffi,
            }) as Box<dyn Lease>
        }))
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let p = result(self.ffi.register(meta.into()).await, |p| p)?;
        Ok(Box::new(RemotePresence(p)))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        result(self.ffi.peers().await, |v| {
            v.into_iter()
                .map(|p| Peer {
                    node_id: p.node_id.into_string(),
                    meta: p.meta.into_string(),
                })
                .collect()
        })
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let s = result(self.ffi.watch_peers().await, |s| s)?;
        Ok(events(s)
            .filter_map(|e| async move {
                match e {
                    FfiEvent::PeerUp(p) => Some(PeerEvent::Up(Peer {
                        node_id: p.node_id.into_string(),
                        meta: p.meta.into_string(),
                    })),
                    FfiEvent::PeerDown { node_id } => Some(PeerEvent::Down {
                        node_id: node_id.into_string(),
                    }),
                    _ => None,
                }
            })
            .boxed())
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let s = result(self.ffi.watch_prefix(prefix.into()).await, |s| s)?;
        Ok(events(s)
            .filter_map(|e| async move {
                match e {
                    FfiEvent::KvPut(e) => Some(KvEvent::Put(entry(e))),
                    FfiEvent::KvDelete { key, revision } => Some(KvEvent::Delete {
                        key: key.into_string(),
                        revision,
                    }),
                    _ => None,
                }
            })
            .boxed())
    }
}

struct RemoteLease {
    ffi: FfiLeaseBox,
    name: String,
    token: u64,
    ttl: Duration,
}

#[async_trait]
impl Lease for RemoteLease {
    fn name(&self) -> &str {
        &self.name
    }

    fn token(&self) -> u64 {
        self.token
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn is_lost(&self) -> bool {
        self.ffi.is_lost()
    }

    async fn lost(&self) {
        self.ffi.lost().await
    }

    async fn release(&self) -> CoordResult<()> {
        result(self.ffi.release().await, |r| r)
    }
}

struct RemotePresence(FfiPresenceBox);

#[async_trait]
impl Presence for RemotePresence {
    async fn deregister(&self) -> CoordResult<()> {
        result(self.0.deregister().await, |r| r)
    }
}
