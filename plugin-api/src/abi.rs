//! The `#[repr(C)]` boundary between the host and a plugin library: the root module a plugin
//! exports, and the FFI-safe types and trait objects that cross it.
//!
//! Only this module is `#[repr(C)]`. It grows by appending: new root-module fields go after the
//! last one, marked so that an older plugin (without them) still loads; trait objects gain
//! methods only at their end.

// `#[sabi_trait]` expands to impls inside a generated const; the lint is about the macro's
// output, not this code.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings, sabi_trait};
use async_ffi::FfiFuture;

/// A coordinator error as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiError {
    /// See [`crate::ErrorKind`] for the meaning of each code.
    pub kind: u8,
    pub message: RString,
}

/// A key-value entry.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiEntry {
    pub key: RString,
    pub value: RVec<u8>,
    pub revision: u64,
}

/// The outcome of a compare-and-swap.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum FfiCas {
    Swapped(u64),
    Mismatch(ROption<FfiEntry>),
}

/// A live peer.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiPeer {
    pub node_id: RString,
    pub meta: RString,
}

/// The backend's own health.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiHealth {
    pub ok: bool,
    pub detail: RString,
}

/// One item of a subscription or watch stream.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone)]
pub enum FfiEvent {
    Message { subject: RString, payload: RVec<u8> },
    PeerUp(FfiPeer),
    PeerDown { node_id: RString },
    KvPut(FfiEntry),
    KvDelete { key: RString, revision: u64 },
}

/// A config diagnostic from a plugin's `validate`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiDiagnostic {
    /// 0 error, 1 warning.
    pub severity: u8,
    /// JSON pointer into the plugin's config (`""` for the whole config).
    pub pointer: RString,
    pub message: RString,
}

/// What the host tells a plugin at boot.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiHostInfo {
    /// The replica's node id when `--node-id` overrides the plugin's own.
    pub node_id: ROption<RString>,
    /// The host's version, for logs.
    pub host_version: RString,
}

/// A stream of events (a subscription or a watch). Dropping it cancels the work in the plugin.
#[sabi_trait]
pub trait FfiStream: Send + Sync {
    /// The next event, or `None` when the stream has ended.
    #[sabi(last_prefix_field)]
    fn next(&self) -> FfiFuture<ROption<FfiEvent>>;
}
pub type FfiStreamBox = FfiStream_TO<'static, RBox<()>>;

/// A held lease, renewed by the plugin until released or lost.
#[sabi_trait]
pub trait FfiLease: Send + Sync {
    fn name(&self) -> RString;
    fn token(&self) -> u64;
    fn ttl_ms(&self) -> u64;
    fn is_lost(&self) -> bool;
    /// Resolves when the lease is lost (renewal failed, or it expired).
    fn lost(&self) -> FfiFuture<()>;
    /// Gives the lease up so another holder can take it at once.
    #[sabi(last_prefix_field)]
    fn release(&self) -> FfiFuture<RResult<(), FfiError>>;
}
pub type FfiLeaseBox = FfiLease_TO<'static, RBox<()>>;

/// This node's registered presence, refreshed by the plugin until deregistered.
#[sabi_trait]
pub trait FfiPresence: Send + Sync {
    #[sabi(last_prefix_field)]
    fn deregister(&self) -> FfiFuture<RResult<(), FfiError>>;
}
pub type FfiPresenceBox = FfiPresence_TO<'static, RBox<()>>;

/// A booted coordinator: the four primitives plus identity and health.
#[sabi_trait]
pub trait FfiCoordinator: Send + Sync {
    fn node_id(&self) -> RString;
    fn health(&self) -> FfiFuture<FfiHealth>;

    fn get(&self, key: RString) -> FfiFuture<RResult<ROption<FfiEntry>, FfiError>>;
    fn put(
        &self,
        key: RString,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<u64, FfiError>>;
    fn create(
        &self,
        key: RString,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<ROption<u64>, FfiError>>;
    fn compare_and_swap(
        &self,
        key: RString,
        expected_revision: u64,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<FfiCas, FfiError>>;
    fn delete(
        &self,
        key: RString,
        expected_revision: ROption<u64>,
    ) -> FfiFuture<RResult<bool, FfiError>>;
    fn list(&self, prefix: RString) -> FfiFuture<RResult<RVec<FfiEntry>, FfiError>>;

    fn publish(&self, subject: RString, payload: RVec<u8>) -> FfiFuture<RResult<(), FfiError>>;
    fn subscribe(&self, pattern: RString) -> FfiFuture<RResult<FfiStreamBox, FfiError>>;

    fn acquire(
        &self,
        name: RString,
        ttl_ms: ROption<u64>,
        wait_ms: u64,
    ) -> FfiFuture<RResult<ROption<FfiLeaseBox>, FfiError>>;

    fn register(&self, meta: RString) -> FfiFuture<RResult<FfiPresenceBox, FfiError>>;
    fn peers(&self) -> FfiFuture<RResult<RVec<FfiPeer>, FfiError>>;
    fn watch_peers(&self) -> FfiFuture<RResult<FfiStreamBox, FfiError>>;
    #[sabi(last_prefix_field)]
    fn watch_prefix(&self, prefix: RString) -> FfiFuture<RResult<FfiStreamBox, FfiError>>;
}
pub type FfiCoordinatorBox = FfiCoordinator_TO<'static, RBox<()>>;

/// The root module every plugin library exports (through [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's id, e.g. `dev.mcpg.cluster.redis`.
    pub plugin_id: extern "C" fn() -> RString,
    /// The JSON Schema of the plugin's config, as JSON text.
    pub config_schema: extern "C" fn() -> RString,
    /// Pure validation of a config (JSON text): every diagnostic. `Err` only if the plugin
    /// failed (panicked).
    pub validate: extern "C" fn(config_json: RStr<'_>) -> RResult<RVec<FfiDiagnostic>, RString>,
    /// Boots a coordinator from a config (JSON text). Blocks until connected or failed.
    #[sabi(last_prefix_field)]
    pub boot: extern "C" fn(
        config_json: RStr<'_>,
        host: FfiHostInfo,
    ) -> RResult<FfiCoordinatorBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "mcpg_plugin";
    const NAME: &'static str = "mcpg coordinator plugin";
    /// The ABI version is this crate's version: a plugin loads into a host whose
    /// `mcpg-plugin-api` is semver-compatible with the one it was built against.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
