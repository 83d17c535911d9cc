//! Test fixture: a library built against a changed plugin ABI. Its root module has the same
//! name and version as mcpg's but a different layout (`plugin_id` returns a number, and a field
//! is missing), as if built from a modified `mcpg-plugin-api`. mcpg must refuse it, naming both
//! versions, and keep running.

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
    pub plugin_id: extern "C" fn() -> u64,
    #[sabi(last_prefix_field)]
    pub config_schema: extern "C" fn() -> RString,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "mcpg_plugin";
    const NAME: &'static str = "mcpg coordinator plugin";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

extern "C" fn plugin_id() -> u64 {
    7
}

extern "C" fn config_schema() -> RString {
    "{}".into()
}

#[export_root_module]
pub fn root() -> PluginModRef {
    PluginMod {
        plugin_id,
        config_schema,
    }
    .leak_into_prefix()
}
