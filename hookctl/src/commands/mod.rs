//! One module per subcommand; each builds what it needs and calls the library.

mod args;
pub(crate) mod assets;
pub(crate) mod check;
pub(crate) mod dispatch;
pub(crate) mod dispatch_settings;
pub(crate) mod install;
pub(crate) mod list;
pub(crate) mod log;
pub(crate) mod run;
pub(crate) mod simulate;
pub(crate) mod state;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use virt_hooks_core::{HooksDir, Registry, RegistryBuilder};

/// libvirt's layout as libvirt runs it: no state directories (libvirt keeps none; a
/// hook that asks for one fails saying so).
pub(crate) fn registry(dir: &Path, timeout: Option<Duration>, wasm_memory_mib: Option<u32>) -> Registry {
    RegistryBuilder::new()
        .hooks_dir_with(hooks_dir(dir, wasm_memory_mib))
        .timeout(timeout)
        .build()
}

/// The hooks dir with every linked backend, the WASM one with the asked memory cap.
pub(crate) fn hooks_dir(dir: &Path, wasm_memory_mib: Option<u32>) -> HooksDir {
    let dir = with_backends(HooksDir::new(dir));
    #[cfg(feature = "wasm")]
    if let Some(mib) = wasm_memory_mib {
        let options = virt_hooks_wasm::WasmOptions {
            memory: (mib as usize) << 20,
            ..Default::default()
        };
        return dir.with_loader(virt_hooks_wasm::WasmLoader::new(options));
    }
    let _ = wasm_memory_mib;
    dir
}

/// hookctl's own backends in place of the linked ones: native plugins run in the
/// `hookctl-native` host, never in this (static) process.
pub(crate) fn with_backends(dir: HooksDir) -> HooksDir {
    #[cfg(feature = "dylib")]
    let dir = dir.with_loader(crate::native::NativeHostLoader);
    dir
}

/// For a native or WASM plugin in libvirt's own `<driver>.d/`: what libvirt does with it
/// instead of loading it (libvirt runs that directory itself), and where it belongs.
pub(crate) fn misplaced_plugin(
    dir: &virt_hooks_core::HooksDir,
    entry: &virt_hooks_core::backend::DirEntry,
    driver: virt_hooks_core::Driver,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let native = entry.path.extension().is_some_and(|e| e == "so" || e == "wasm");
    if dir.is_flat() || entry.role != virt_hooks_core::backend::EntryRole::DropIn || !native {
        return None;
    }
    let executable = std::fs::metadata(&entry.path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let fate = if executable {
        "would exec this file (and fail the event)"
    } else {
        "would skip this file (not executable)"
    };
    Some(format!(
        "libvirt runs {}.d/ itself and {fate} rather than load it; move it to {}",
        driver.as_str(),
        dir.root().join(format!("{}.plugins/", driver.as_str())).display()
    ))
}

/// Whether `entry` is hookctl's own state root in a plugins dir (`<plugins>/.state`, the
/// default outside the system hooks dir): nothing anyone put there to run, so views
/// leave it out rather than call it a leftover.
pub(crate) fn is_own_state_dir(
    dir: &virt_hooks_core::HooksDir,
    entry: &virt_hooks_core::backend::DirEntry,
    driver: virt_hooks_core::Driver,
) -> bool {
    dir.is_flat() && entry.path == dir.drop_in_dir(driver).join(crate::config::OWN_STATE_DIR)
}

/// Warns about plugins in libvirt's `<driver>.d/`, which `run`/`simulate` load but
/// libvirt would not. The file name is anyone's who can write there: escaped.
pub(crate) fn warn_misplaced(dir: &virt_hooks_core::HooksDir, driver: virt_hooks_core::Driver) {
    for entry in dir.scan(driver).unwrap_or_default() {
        if let Some(why) = misplaced_plugin(dir, &entry, driver) {
            eprintln!(
                "hookctl: warning: {}: {}",
                crate::output::path(&entry.path),
                crate::output::message(&why)
            );
        }
    }
}

/// `<dir>/<driver>.plugins`, when it is a directory (hookctl installed as the hook).
pub(crate) fn plugins_dir(dir: &Path, driver: virt_hooks_core::Driver) -> Option<std::path::PathBuf> {
    let p = dir.join(format!("{}.plugins", driver.as_str()));
    p.is_dir().then_some(p)
}

/// Reads `--input FILE` (`-` is stdin).
pub(crate) fn read_input(path: Option<&Path>) -> Result<Option<Vec<u8>>, UsageError> {
    let Some(path) = path else { return Ok(None) };
    let mut data = Vec::new();
    let result = if path == Path::new("-") {
        std::io::stdin().lock().read_to_end(&mut data).map(drop)
    } else {
        std::fs::read(path).map(|d| data = d)
    };
    result.map_err(|e| UsageError(format!("cannot read input `{}`: {e}", path.display())))?;
    Ok(Some(data))
}

/// An error that ends the program with exit status 2 (usage, unreadable dir or input).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

/// What a subcommand returns: whether everything succeeded (0) or a hook failed (1).
pub(crate) type Outcome = Result<bool, UsageError>;

/// The hooks dir must be a readable directory; libvirt would simply run nothing, but
/// here a wrong path is almost always a typo.
pub(crate) fn require_dir(dir: &Path) -> Result<(), UsageError> {
    match std::fs::read_dir(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(UsageError(format!("cannot read hooks dir `{}`: {e}", dir.display()))),
    }
}
