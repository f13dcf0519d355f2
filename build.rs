//! Adds an rpath to the libtorch that torch-sys linked against, so the binaries and test
//! binaries run with an empty environment (`env -i ./target/debug/oe-text --help`).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
