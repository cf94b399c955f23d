//! What the dylib tests share: C plugins built with the system compiler.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles C `source` into `dir/file_name` as a shared object, with `virt_hook.h` on
/// the include path and warnings as errors. Needs `cc`.
pub fn compile_c(dir: &Path, file_name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{file_name}.c"));
    fs::write(&src, source).unwrap();
    let out = dir.join(file_name);
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-std=c99", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for these tests");
    assert!(status.success(), "cc failed for {file_name}");
    out
}
