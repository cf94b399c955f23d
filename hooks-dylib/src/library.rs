//! Loading a plugin: dlopen, the one symbol, the ABI checks; a process-wide table so a
//! real path is loaded once and never unloaded.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::LoadError;
use virt_hooks_plugin::abi::{
    virt_hook_invocation, virt_hook_plugin, virt_hook_plugin_v1_fn, VIRT_HOOK_ABI_VERSION, VIRT_HOOK_SYMBOL,
};

/// The plugin's `call`.
pub(crate) type CallFn = unsafe extern "C" fn(inv: *const virt_hook_invocation) -> i32;

/// A loaded plugin library. Lives until the process exits.
pub struct Library {
    path: PathBuf,
    name: String,
    call: CallFn,
    // Kept only so the handle is owned; it is never dropped (see `load`).
    _lib: libloading::Library,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn table() -> &'static Mutex<HashMap<PathBuf, Arc<Library>>> {
    static TABLE: OnceLock<Mutex<HashMap<PathBuf, Arc<Library>>>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

impl Library {
    /// Loads the plugin at `path`, or returns the one already loaded from the same real
    /// path.
    ///
    /// # Errors
    /// A [`LoadError`] naming the file when it cannot be opened as a shared object, lacks
    /// `virt_hook_plugin_v1`, returns a null descriptor, has another ABI version, or a
    /// null `call`.
    pub fn load(path: &Path) -> Result<Arc<Library>, LoadError> {
        let fail = |kind: LoadErrorKind| LoadError::new(path, "dylib", kind);
        let real = path
            .canonicalize()
            .map_err(|e| fail(LoadErrorKind::Unreadable).with_source(e))?;
        let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lib) = table.get(&real) {
            return Ok(Arc::clone(lib));
        }
        // What it makes the loader search first runs with it: the same rule applies.
        crate::search_path::check(&real, &virt_hooks_core::backend::TrustPolicy::current_user())
            .map_err(|why| fail(LoadErrorKind::Untrusted(Box::new(why))))?;
        // Loading runs the library's constructors: name it if they crash.
        // SAFETY: the bytes of `real` stay where they are until the guard drops at the end
        // of this function, on this thread: `real` is only borrowed until then, or moved
        // into the table, which moves the `PathBuf` but not its heap buffer, and keeps it
        // for good.
        let _running = unsafe { crate::plugin::Running::enter(&real) };
        // SAFETY: dlopen runs the library's initialisers (ELF constructors) in this
        // process, which is sound only because native plugins are trusted code by
        // contract (see the crate docs). RTLD_NOW makes unresolved symbols fail here,
        // not mid-call; RTLD_LOCAL keeps its symbols from resolving other plugins'.
        let lib = unsafe { libloading::os::unix::Library::open(Some(&real), libc::RTLD_NOW | libc::RTLD_LOCAL) }
            .map_err(|e| fail(LoadErrorKind::NotSharedObject).with_source(e))?;
        // Its constructors have run: unloading it now could leave their threads or
        // atexit handlers pointing into unmapped code. A library that turns out not to
        // be a plugin stays loaded, as every plugin does.
        let lib = std::mem::ManuallyDrop::new(libloading::Library::from(lib));
        // SAFETY: `virt_hook_plugin_v1_fn` is the type the ABI (`virt_hook.h`) gives this
        // symbol, and a library that exports it is a hook plugin, trusted to follow the
        // ABI. The function pointer is copied out of the `Symbol`: it stays valid while
        // `lib` is loaded, and `lib` is never unloaded (kept in the table on success,
        // never dropped on an error path).
        let entry: virt_hook_plugin_v1_fn = unsafe { lib.get::<virt_hook_plugin_v1_fn>(VIRT_HOOK_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| {
                fail(LoadErrorKind::MissingSymbol {
                    symbol: "virt_hook_plugin_v1",
                })
                .with_source(e)
            })?;
        // SAFETY: the plugin's entry point, with the signature the ABI defines (no
        // arguments, a descriptor pointer back), while `lib` is loaded.
        let desc: *const virt_hook_plugin = unsafe { entry() };
        if desc.is_null() {
            return Err(fail(LoadErrorKind::InvalidDescriptor {
                what: "`virt_hook_plugin_v1` returned a null descriptor",
            }));
        }
        // The version comes first: it says how to read the rest.
        // SAFETY: not null, and every version of the ABI puts a `uint32_t abi_version`
        // first in a static descriptor: readable, and aligned for a u32 (the first
        // field of the struct), whatever the rest of it is.
        let version = unsafe { std::ptr::read(desc.cast::<u32>()) };
        if version != VIRT_HOOK_ABI_VERSION {
            return Err(fail(LoadErrorKind::AbiMismatch {
                expected: VIRT_HOOK_ABI_VERSION,
                found: version,
            }));
        }
        // SAFETY: a version 1 descriptor has the layout of `virt_hook_plugin` (repr(C),
        // as `virt_hook.h` declares it), and the ABI has it static and never written:
        // a shared reference for the rest of this function is valid.
        let desc = unsafe { &*desc };
        let call = desc.call.ok_or_else(|| {
            fail(LoadErrorKind::InvalidDescriptor {
                what: "its `call` is null",
            })
        })?;
        let name = if desc.name.is_null() {
            real.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            // SAFETY: not null, and the ABI says `name` is a static NUL-terminated string;
            // it is copied before `lib` could be dropped.
            unsafe { CStr::from_ptr(desc.name) }.to_string_lossy().into_owned()
        };
        let loaded = Arc::new(Library {
            path: real.clone(),
            name,
            call,
            _lib: std::mem::ManuallyDrop::into_inner(lib),
        });
        table.insert(real, Arc::clone(&loaded));
        tracing::debug!(path = %loaded.path.display(), name = %loaded.name, "loaded native hook plugin");
        Ok(loaded)
    }

    /// The real path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name the plugin gives itself.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn call_fn(&self) -> CallFn {
        self.call
    }
}
