//! Test fixture: a library that says it was built against `mcpg-plugin-api` 7.0.0, an
//! incompatible version. mcpg must refuse it by its version, naming both, before looking at its
//! layout.

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RString;
use abi_stable::{StableAbi, declare_root_module_statics, export_root_module};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    #[sabi(last_prefix_field)]
    pub plugin_id: extern "C" fn() -> RString,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "mcpg_plugin";
    const NAME: &'static str = "mcpg coordinator plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("7.0.0");
}

extern "C" fn plugin_id() -> RString {
    "dev.mcpg.cluster.future".into()
}

#[export_root_module]
pub fn root() -> PluginModRef {
    PluginMod { plugin_id }.leak_into_prefix()
}
