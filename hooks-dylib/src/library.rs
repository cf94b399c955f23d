//! Loading a plugin: dlopen, the one symbol, the ABI checks; a process-wide table so a
//! real path is loaded once and never unloaded.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use hooks_core::LoadError;
use hooks_plugin::abi::{
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
        let fail = |reason: String| LoadError::new(path, "dylib", reason);
        let real = path
            .canonicalize()
            .map_err(|e| fail("cannot resolve the path".into()).with_source(e))?;
        let mut table = table().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lib) = table.get(&real) {
            return Ok(Arc::clone(lib));
        }
        // Loading runs the library's constructors: name it if they crash.
        let _running = crate::plugin::Running::enter(&real);
        // SAFETY: loading runs the library's initialisers: native plugins are trusted
        // code by contract. RTLD_NOW makes unresolved symbols fail here, not mid-call.
        let lib = unsafe { libloading::os::unix::Library::open(Some(&real), libc::RTLD_NOW | libc::RTLD_LOCAL) }
            .map_err(|e| fail("not a loadable shared object".into()).with_source(e))?;
        let lib = libloading::Library::from(lib);
        // SAFETY: the symbol's type is fixed by the ABI (`virt_hook.h`).
        let entry: virt_hook_plugin_v1_fn = unsafe { lib.get::<virt_hook_plugin_v1_fn>(VIRT_HOOK_SYMBOL) }
            .map(|s| *s)
            .map_err(|e| {
                fail("no `virt_hook_plugin_v1` symbol: not a hook plugin, or built against another ABI".into())
                    .with_source(e)
            })?;
        // SAFETY: calling the plugin's entry point as the ABI defines it.
        let desc: *const virt_hook_plugin = unsafe { entry() };
        if desc.is_null() {
            return Err(fail("`virt_hook_plugin_v1` returned a null descriptor".into()));
        }
        // The version comes first: it says how to read the rest.
        // SAFETY: non-null, and the ABI puts a u32 abi_version at the start.
        let version = unsafe { std::ptr::read(desc.cast::<u32>()) };
        if version != VIRT_HOOK_ABI_VERSION {
            return Err(fail(format!(
                "ABI version {version}, but this host speaks version {VIRT_HOOK_ABI_VERSION}"
            )));
        }
        // SAFETY: version 1 descriptors have this layout and are static.
        let desc = unsafe { &*desc };
        let call = desc
            .call
            .ok_or_else(|| fail("the descriptor's `call` is null".into()))?;
        let name = if desc.name.is_null() {
            real.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            // SAFETY: the ABI says `name` is a static NUL-terminated string.
            unsafe { CStr::from_ptr(desc.name) }.to_string_lossy().into_owned()
        };
        let loaded = Arc::new(Library {
            path: real.clone(),
            name,
            call,
            _lib: lib,
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
