//! Native hook plugins: shared objects loaded through a versioned C ABI.
//!
//! A plugin exports `virt_hook_plugin_v2`, returning a descriptor
//! `{abi_version, size, name, init, fini, call}`, or (older plugins) `virt_hook_plugin_v1`
//! returning `{abi_version, name, call}` (see `include/virt_hook.h`; Rust authors use the
//! `virt-hooks-plugin` crate's `export_hook!`, which exports version 2). Version 2's
//! `init` gets the sidecar's `[config]` ([`DylibHook::load_with_config`], or through
//! [`DylibLoader`] from a hooks dir) and its events carry the state directory and a log
//! channel. The loader checks the symbol, the ABI version, the descriptor's size and
//! the `call` pointer before anything else, and reports every problem as a
//! [`LoadError`] naming the file.
//!
//! - A library is never unloaded: unloading Rust code (thread-locals, registered
//!   destructors) is unsound, and hooks are loaded once per process anyway. Loading the
//!   same real path twice returns the same plugin.
//! - A native call cannot be interrupted. Inside a tokio runtime it runs on the
//!   blocking pool, never on an async worker. Outside one (`fire_blocking`), without a
//!   timeout it runs on the caller's thread (nanoseconds, no hand-off), and with one on
//!   a helper thread. If the timeout passes the hook is reported `TimedOut` while the
//!   call finishes in the background and its output is dropped.
//! - **On drop**: dropping the future of `Hook::call` (a caller's own timeout, a
//!   cancelled request) leaves the native call to finish on its own thread; its result
//!   is dropped and a warning is logged, since the plugin kept running.
//! - Native plugins are trusted code: they run inside the host process with its
//!   privileges. Use WASM hooks for code you do not trust.
//!
//! **Where plugins go.** A driver that embeds this crate keeps its plugins in its own
//! hooks dir, in libvirt's shape: with `virt_hooks_dylib::link()` called once,
//! `RegistryBuilder::hooks_dir(DIR)` loads `DIR/<driver>.d/*.so` (no execute bit
//! needed) in order with the scripts there; [`DylibHook`] loads one library from
//! anywhere. On a libvirt host it is different: libvirt runs
//! `/etc/libvirt/hooks/<driver>.d/` itself and would exec a `.so` there (or skip it
//! without an execute bit), and hookctl's
//! dispatcher runs plugins from `<driver>.plugins/`, each call in a `hookctl-native`
//! process rather than its own (the repository's `docs/embedding.md`, "Which layout is
//! for whom").
//!
//! ```no_run
//! use virt_hooks_core::{Driver, RegistryBuilder};
//! use virt_hooks_core::events::QemuEvent;
//! // A driver's own hooks dir (`RegistryBuilder::hooks_dir("/etc/myvmm/hooks")` would find it too).
//! let hook = virt_hooks_dylib::DylibHook::load("/etc/myvmm/hooks/qemu.d/50-memory-limit.so")?;
//! let registry = RegistryBuilder::new().hook(Driver::Qemu, hook).build();
//! let ev = QemuEvent::Prepare { name: "vm".into(), xml: "<domain/>\n".into() };
//! registry.fire_blocking(&ev).ok();
//! # Ok::<(), virt_hooks_core::LoadError>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod guard;
mod library;
mod plugin;
mod search_path;

pub use library::Library;
pub use plugin::{stray_writes, with_running_plugin, DylibHook};
pub use virt_hooks_plugin::abi;

use std::fs::Metadata;
use std::path::Path;
use std::sync::Arc;

use virt_hooks_core::backend::{HookLoader, HookSettings};
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::{Hook, LoadError};

/// The entry points a plugin must export one of, as a missing-symbol error names them.
pub const ENTRY_SYMBOLS: &str = "virt_hook_plugin_v2` or `virt_hook_plugin_v1";

/// The dylib backend's loader: claims `*.so` files (no execute bit needed).
#[derive(Debug, Clone, Copy, Default)]
pub struct DylibLoader;

impl HookLoader for DylibLoader {
    fn backend(&self) -> &'static str {
        "dylib"
    }

    fn priority(&self) -> i32 {
        10
    }

    fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
        path.extension().is_some_and(|e| e == "so")
    }

    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        let hook = DylibHook::load_with_config(path, &settings.config)?;
        if settings.state && hook.library().abi_version() == 1 {
            // A version 1 plugin reads it from the process environment, which a call in
            // this process cannot set for itself alone; version 2 gets it in the event.
            let why = "`state = true`: a version 1 native plugin loaded into the caller's process gets no state directory (version 2 plugins do, in `virt_hook_event.state_dir`; hookctl runs plugins in hookctl-native, where both do)";
            return Err(
                LoadError::new(path, "dylib", LoadErrorKind::InvalidSettings).with_source(std::io::Error::other(why))
            );
        }
        let mut hook = hook.with_timeout(settings.effective_timeout(None));
        if let Some(cap) = settings.max_output {
            hook = hook.with_max_output(usize::try_from(cap).unwrap_or(usize::MAX));
        }
        Ok(Arc::new(hook))
    }

    /// Loading a library runs its constructors: without loading, only the ELF header is
    /// checked (a shared object for this machine's word size and byte order).
    fn inspect(&self, path: &Path, _settings: &HookSettings) -> Result<(), LoadError> {
        use std::io::Read;
        let mut head = [0u8; 18];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| LoadError::new(path, "dylib", LoadErrorKind::Unreadable).with_source(e))?;
        let class = if cfg!(target_pointer_width = "64") { 2 } else { 1 };
        let order = if cfg!(target_endian = "little") { 1 } else { 2 };
        let e_type = if order == 1 {
            u16::from_le_bytes([head[16], head[17]])
        } else {
            u16::from_be_bytes([head[16], head[17]])
        };
        if n < head.len() || !head.starts_with(b"\x7fELF") || head[4] != class || head[5] != order || e_type != 3 {
            return Err(LoadError::new(path, "dylib", LoadErrorKind::NotSharedObject));
        }
        Ok(())
    }
}

static DYLIB_LOADER: DylibLoader = DylibLoader;

virt_hooks_core::register_loader!(&DYLIB_LOADER);

/// Makes sure this crate, and so its loader, is linked into the program.
pub fn link() {}
