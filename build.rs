//! Passes the target interpreter's version to the crate as `Py_3_*` cfgs
//! (`src/call.rs` declares one C API function by the name that version
//! exports).
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
