//! `export_plugin!` writes the name of abi_stable's root-module symbol as a literal (so plugin
//! crates need not depend on abi_stable themselves); this checks the literal is still right.

#[test]
fn export_plugin_uses_abi_stables_symbol_name() {
    assert_eq!(
        orbit_plugin_api::__ROOT_MODULE_LOADER_NAME,
        orbit_plugin_api::abi_stable::library::ROOT_MODULE_LOADER_NAME
    );
}
