//! The plugin side of the boundary: the [`Plugin`] trait an author implements, and the adapter
//! that turns it into the exported root module.
//!
//! A plugin owns its Tokio runtime: each library links its own copy of Tokio, so every future
//! the host polls completes over a runtime-agnostic channel and never touches the plugin's
//! Tokio. Every entry point catches panics; a panicking call fails that call only.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use futures::FutureExt as _;
use futures::StreamExt as _;

use crate::abi::*;
use crate::coordinator::*;

/// How bad a config finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A finding of a plugin's `validate`, at a JSON pointer into the plugin's config (`""` for the
/// whole config, `/url` for its `url` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDiagnostic {
    pub severity: Severity,
    pub pointer: String,
    pub message: String,
}

impl PluginDiagnostic {
    pub fn error(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    pub fn warning(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// What the host tells a plugin when it boots it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The replica's node id when the operator overrides the plugin's own (`--node-id`).
    pub node_id: Option<String>,
    pub host_version: String,
}

/// A coordinator plugin. Implement this, then export it with [`crate::export_plugin!`].
pub trait Plugin: 'static {
    /// The plugin's id: `dev.mcpg.cluster.<kind>` for a coordinator.
    const ID: &'static str;

    /// The JSON Schema of the plugin's config (the `cluster` block minus `kind`).
    fn config_schema() -> serde_json::Value;

    /// Checks a config and returns every finding. Must be pure: no network, no spawning, no
    /// file checks (a credentials file that is absent on a CI machine is checked at boot).
    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic>;

    /// Connects to the backend and returns the coordinator. Runs on the plugin's own runtime.
    /// An `Err` says what failed and where it tried.
    fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> impl Future<Output = Result<Arc<dyn Coordinator>, String>> + Send + 'static;
}

/// The runtime this library's futures run on, created on first use.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mcpg-plugin")
            .enable_all()
            .build()
            .expect("a plugin can start its runtime")
    })
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

fn ffi_error(e: CoordError) -> FfiError {
    FfiError {
        kind: e.kind as u8,
        message: e.message.into(),
    }
}

fn panicked(what: &str, msg: &str) -> FfiError {
    FfiError {
        kind: ErrorKind::Panicked as u8,
        message: format!("{what}: {msg}").into(),
    }
}

/// Runs `fut` on the plugin's runtime and hands its output back over a channel. Dropping the
/// returned future aborts the work; a panic becomes `on_panic(message)`.
fn spawn_out<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
    on_panic: impl FnOnce(String) -> T + Send + 'static,
) -> FfiFuture<T> {
    let (tx, rx) = futures::channel::oneshot::channel();
    let task = runtime().spawn(async move {
        let out = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => v,
            Err(p) => on_panic(panic_message(&*p)),
        };
        let _ = tx.send(out);
    });
    let abort = task.abort_handle();
    let guard = AbortOnDrop(Some(abort));
    async move {
        let out = rx.await;
        drop(guard);
        out
    }
    .map(|r| r.expect("the plugin task always sends unless aborted, and it is aborted only when this future is dropped"))
    .into_ffi()
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.abort();
        }
    }
}

/// A coordinator call: run on the plugin runtime, errors and panics as `FfiError`.
fn call<T: Send + 'static, U: Send + 'static>(
    what: &'static str,
    fut: impl Future<Output = CoordResult<U>> + Send + 'static,
    convert: impl FnOnce(U) -> T + Send + 'static,
) -> FfiFuture<RResult<T, FfiError>> {
    spawn_out(
        async move {
            match fut.await {
                Ok(v) => RResult::ROk(convert(v)),
                Err(e) => RResult::RErr(ffi_error(e)),
            }
        },
        move |m| RResult::RErr(panicked(what, &m)),
    )
}

/// Catches a panic in the synchronous part of an entry point.
fn guard<T>(
    what: &'static str,
    f: impl FnOnce() -> FfiFuture<RResult<T, FfiError>>,
) -> FfiFuture<RResult<T, FfiError>>
where
    T: Send + 'static,
{
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(fut) => fut,
        Err(p) => {
            let err = panicked(what, &panic_message(&*p));
            async move { RResult::RErr(err) }.into_ffi()
        }
    }
}

pub(crate) fn to_ffi_entry(e: Entry) -> FfiEntry {
    FfiEntry {
        key: e.key.into(),
        value: e.value.into(),
        revision: e.revision,
    }
}

fn ttl_of(ms: ROption<u64>) -> Option<std::time::Duration> {
    ms.into_option().map(std::time::Duration::from_millis)
}

/// A coordinator wrapped for export.
struct Exported(Arc<dyn Coordinator>);

impl FfiCoordinator for Exported {
    fn node_id(&self) -> RString {
        catch_unwind(AssertUnwindSafe(|| self.0.node_id()))
            .unwrap_or_else(|_| String::from("<plugin panicked>"))
            .into()
    }

    fn health(&self) -> FfiFuture<FfiHealth> {
        let c = self.0.clone();
        spawn_out(
            async move {
                let h = c.health().await;
                FfiHealth {
                    ok: h.ok,
                    detail: h.detail.into(),
                }
            },
            |m| FfiHealth {
                ok: false,
                detail: format!("health check panicked: {m}").into(),
            },
        )
    }

    fn get(&self, key: RString) -> FfiFuture<RResult<ROption<FfiEntry>, FfiError>> {
        guard("get", || {
            let c = self.0.clone();
            call("get", async move { c.get(&key).await }, |o| {
                o.map(to_ffi_entry).into()
            })
        })
    }

    fn put(
        &self,
        key: RString,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<u64, FfiError>> {
        guard("put", || {
            let c = self.0.clone();
            call(
                "put",
                async move { c.put(&key, value.into_vec(), ttl_of(ttl_ms)).await },
                |r| r,
            )
        })
    }

    fn create(
        &self,
        key: RString,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<ROption<u64>, FfiError>> {
        guard("create", || {
            let c = self.0.clone();
            call(
                "create",
                async move { c.create(&key, value.into_vec(), ttl_of(ttl_ms)).await },
                ROption::from,
            )
        })
    }

    fn compare_and_swap(
        &self,
        key: RString,
        expected_revision: u64,
        value: RVec<u8>,
        ttl_ms: ROption<u64>,
    ) -> FfiFuture<RResult<FfiCas, FfiError>> {
        guard("compare_and_swap", || {
            let c = self.0.clone();
            call(
                "compare_and_swap",
                async move {
                    c.compare_and_swap(&key, expected_revision, value.into_vec(), ttl_of(ttl_ms))
                        .await
                },
                |o| match o {
                    CasOutcome::Swapped(r) => FfiCas::Swapped(r),
                    CasOutcome::Mismatch(e) => FfiCas::Mismatch(e.map(to_ffi_entry).into()),
                },
            )
        })
    }

    fn delete(
        &self,
        key: RString,
        expected_revision: ROption<u64>,
    ) -> FfiFuture<RResult<bool, FfiError>> {
        guard("delete", || {
            let c = self.0.clone();
            call(
                "delete",
                async move { c.delete(&key, expected_revision.into_option()).await },
                |b| b,
            )
        })
    }

    fn list(&self, prefix: RString) -> FfiFuture<RResult<RVec<FfiEntry>, FfiError>> {
        guard("list", || {
            let c = self.0.clone();
            call("list", async move { c.list(&prefix).await }, |v| {
                v.into_iter().map(to_ffi_entry).collect()
            })
        })
    }

    fn publish(&self, subject: RString, payload: RVec<u8>) -> FfiFuture<RResult<(), FfiError>> {
        guard("publish", || {
            let c = self.0.clone();
            call(
                "publish",
                async move { c.publish(&subject, payload.into_vec()).await },
                |r| r,
            )
        })
    }

    fn subscribe(&self, pattern: RString) -> FfiFuture<RResult<FfiStreamBox, FfiError>> {
        guard("subscribe", || {
            let c = self.0.clone();
            call(
                "subscribe",
                async move { c.subscribe(&pattern).await },
                |s| {
                    export_stream(s.map(|m| FfiEvent::Message {
                        subject: m.subject.into(),
                        payload: m.payload.into(),
                    }))
                },
            )
        })
    }

    fn acquire(
        &self,
        name: RString,
        ttl_ms: ROption<u64>,
        wait_ms: u64,
    ) -> FfiFuture<RResult<ROption<FfiLeaseBox>, FfiError>> {
        guard("acquire", || {
            let c = self.0.clone();
            call(
                "acquire",
                async move {
                    c.acquire(
                        &name,
                        ttl_of(ttl_ms),
                        std::time::Duration::from_millis(wait_ms),
                    )
                    .await
                },
                |l| {
                    l.map(|l| FfiLease_TO::from_value(ExportedLease(Arc::from(l)), TD_Opaque))
                        .into()
                },
            )
        })
    }

    fn register(&self, meta: RString) -> FfiFuture<RResult<FfiPresenceBox, FfiError>> {
        guard("register", || {
            let c = self.0.clone();
            call(
                "register",
                async move { c.register(meta.into_string()).await },
                |p| FfiPresence_TO::from_value(ExportedPresence(Arc::from(p)), TD_Opaque),
            )
        })
    }

    fn peers(&self) -> FfiFuture<RResult<RVec<FfiPeer>, FfiError>> {
        guard("peers", || {
            let c = self.0.clone();
            call("peers", async move { c.peers().await }, |v| {
                v.into_iter()
                    .map(|p| FfiPeer {
                        node_id: p.node_id.into(),
                        meta: p.meta.into(),
                    })
                    .collect()
            })
        })
    }

    fn watch_peers(&self) -> FfiFuture<RResult<FfiStreamBox, FfiError>> {
        guard("watch_peers", || {
            let c = self.0.clone();
            call("watch_peers", async move { c.watch_peers().await }, |s| {
                export_stream(s.map(|e| match e {
                    PeerEvent::Up(p) => FfiEvent::PeerUp(FfiPeer {
                        node_id: p.node_id.into(),
                        meta: p.meta.into(),
                    }),
                    PeerEvent::Down { node_id } => FfiEvent::PeerDown {
                        node_id: node_id.into(),
                    },
                }))
            })
        })
    }

    fn watch_prefix(&self, prefix: RString) -> FfiFuture<RResult<FfiStreamBox, FfiError>> {
        guard("watch_prefix", || {
            let c = self.0.clone();
            call(
                "watch_prefix",
                async move { c.watch_prefix(&prefix).await },
                |s| {
                    export_stream(s.map(|e| match e {
                        KvEvent::Put(e) => FfiEvent::KvPut(to_ffi_entry(e)),
                        KvEvent::Delete { key, revision } => FfiEvent::KvDelete {
                            key: key.into(),
                            revision,
                        },
                    }))
                },
            )
        })
    }
}

/// A stream pumped by a plugin task into a bounded channel the host reads.
struct ExportedStream {
    rx: Arc<futures::lock::Mutex<futures::channel::mpsc::Receiver<FfiEvent>>>,
    _pump: AbortOnDrop,
}

/// Events buffered between the plugin and a host consumer.
const STREAM_BUFFER: usize = 256;

fn export_stream(s: impl futures::Stream<Item = FfiEvent> + Send + 'static) -> FfiStreamBox {
    let (mut tx, rx) = futures::channel::mpsc::channel(STREAM_BUFFER);
    let pump = runtime().spawn(async move {
        let mut s = Box::pin(s);
        while let Some(ev) = s.next().await {
            if futures::SinkExt::send(&mut tx, ev).await.is_err() {
                return;
            }
        }
    });
    FfiStream_TO::from_value(
        ExportedStream {
            rx: Arc::new(futures::lock::Mutex::new(rx)),
            _pump: AbortOnDrop(Some(pump.abort_handle())),
        },
        TD_Opaque,
    )
}

impl FfiStream for ExportedStream {
    fn next(&self) -> FfiFuture<ROption<FfiEvent>> {
        let rx = self.rx.clone();
        async move { rx.lock().await.next().await.into() }.into_ffi()
    }
}

struct ExportedLease(Arc<dyn Lease>);

impl FfiLease for ExportedLease {
    fn name(&self) -> RString {
        self.0.name().into()
    }

    fn token(&self) -> u64 {
        self.0.token()
    }

    fn ttl_ms(&self) -> u64 {
        self.0.ttl().as_millis() as u64
    }

    fn is_lost(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.is_lost())).unwrap_or(true)
    }

    fn lost(&self) -> FfiFuture<()> {
        let l = self.0.clone();
        spawn_out(async move { l.lost().await }, |_| ())
    }

    fn release(&self) -> FfiFuture<RResult<(), FfiError>> {
        let l = self.0.clone();
        call("release", async move { l.release().await }, |r| r)
    }
}

struct ExportedPresence(Arc<dyn Presence>);

impl FfiPresence for ExportedPresence {
    fn deregister(&self) -> FfiFuture<RResult<(), FfiError>> {
        let p = self.0.clone();
        call("deregister", async move { p.deregister().await }, |r| r)
    }
}

extern "C" fn plugin_id<P: Plugin>() -> RString {
    P::ID.into()
}

extern "C" fn config_schema<P: Plugin>() -> RString {
    catch_unwind(|| P::config_schema().to_string())
        .unwrap_or_else(|_| "{}".into())
        .into()
}

extern "C" fn validate<P: Plugin>(config_json: RStr<'_>) -> RResult<RVec<FfiDiagnostic>, RString> {
    let text = config_json.as_str().to_owned();
    let result = catch_unwind(move || {
        let config: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return vec![PluginDiagnostic::error(
                    "",
                    format!("config is not JSON: {e}"),
                )];
            }
        };
        P::validate(&config)
    });
    match result {
        Ok(diags) => RResult::ROk(
            diags
                .into_iter()
                .map(|d| FfiDiagnostic {
                    severity: match d.severity {
                        Severity::Error => 0,
                        Severity::Warning => 1,
                    },
                    pointer: d.pointer.into(),
                    message: d.message.into(),
                })
                .collect(),
        ),
        Err(p) => RResult::RErr(format!("validate panicked: {}", panic_message(&*p)).into()),
    }
}

extern "C" fn boot<P: Plugin>(
    config_json: RStr<'_>,
    host: FfiHostInfo,
) -> RResult<FfiCoordinatorBox, RString> {
    let text = config_json.as_str().to_owned();
    let host = HostInfo {
        node_id: host.node_id.into_option().map(RString::into_string),
        host_version: host.host_version.into_string(),
    };
    // Boot on a thread of our own: the caller may be inside the host's runtime, where blocking
    // on ours is not allowed.
    let outcome = std::thread::spawn(move || {
        catch_unwind(AssertUnwindSafe(move || {
            let config: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("config is not JSON: {e}"))?;
            runtime().block_on(P::boot(config, host))
        }))
    })
    .join();
    match outcome {
        Ok(Ok(Ok(c))) => RResult::ROk(FfiCoordinator_TO::from_value(Exported(c), TD_Opaque)),
        Ok(Ok(Err(e))) => RResult::RErr(e.into()),
        Ok(Err(p)) | Err(p) => {
            RResult::RErr(format!("boot panicked: {}", panic_message(&*p)).into())
        }
    }
}

/// The root module for plugin `P`. Called by [`crate::export_plugin!`]; also how a plugin is
/// loaded in-process from its `rlib` for tests.
pub fn root_module<P: Plugin>() -> PluginModRef {
    PluginMod {
        plugin_id: plugin_id::<P>,
        config_schema: config_schema::<P>,
        validate: validate::<P>,
        boot: boot::<P>,
    }
    .leak_into_prefix()
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as this library's root module.
///
/// ```ignore
/// mcpg_plugin_api::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The root module of this plugin library.
        pub fn mcpg_plugin_root_module() -> $crate::abi::PluginModRef {
            $crate::export::root_module::<$plugin>()
        }

        // What `#[abi_stable::export_root_module]` generates, spelled with `$crate` paths so a
        // plugin crate needs no abi_stable dependency of its own. The symbol name is checked
        // against abi_stable's by a test in mcpg-plugin-api.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            pub extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(mcpg_plugin_root_module)
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
