// Emits PyO3's `Py_3_x` cfgs for the interpreter being built for.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
