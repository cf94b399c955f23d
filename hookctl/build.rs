//! Link flags for the dispatcher, which libvirt starts on every hook event: its start-up
//! cost is what an operator pays per guest start.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && linker_packs_relocations() {
        // Relative relocations as a compact bitmap (DT_RELR, glibc 2.36+): the loader
        // touches a few KiB instead of ~600 KiB of `.rela.dyn` at every start.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Whether the system linker (binutils ≥ 2.38) and libc (glibc ≥ 2.36) support DT_RELR:
/// a binary using it does not start on an older glibc, so ask glibc, not just the linker.
fn linker_packs_relocations() -> bool {
    let glibc = std::process::Command::new("ldd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let version = text.lines().next()?.split_whitespace().last()?.to_owned();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
    let ld = std::process::Command::new("ld")
        .args(["-z", "pack-relative-relocs", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    ld && glibc.is_some_and(|v| v >= (2, 36))
}
