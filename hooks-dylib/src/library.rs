//! Loading a plugin: dlopen, its symbol (`virt_hook_plugin_v2`, else
//! `virt_hook_plugin_v1`), the ABI checks; a process-wide table so a real path is loaded
//! once and never unloaded.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::LoadError;
use virt_hooks_plugin::abi::{
    virt_hook_descriptor, virt_hook_event, virt_hook_init, virt_hook_invocation, virt_hook_plugin,
    virt_hook_plugin_v1_fn, virt_hook_plugin_v2_fn, VIRT_HOOK_ABI_VERSION, VIRT_HOOK_ABI_VERSION_2, VIRT_HOOK_SYMBOL,
    VIRT_HOOK_SYMBOL_V2,
};

/// A version 1 plugin's `call`.
pub(crate) type CallFn = unsafe extern "C" fn(inv: *const virt_hook_invocation) -> i32;
/// A version 2 plugin's `call`.
pub(crate) type CallV2Fn = unsafe extern "C" fn(event: *const virt_hook_event) -> i32;
/// A version 2 plugin's `init`.
pub(crate) type InitFn = unsafe extern "C" fn(init: *const virt_hook_init, instance: *mut *mut std::ffi::c_void) -> i32;
/// A version 2 plugin's `fini`.
pub(crate) type FiniFn = unsafe extern "C" fn(instance: *mut std::ffi::c_void);

/// The entry points of a plugin, by the ABI version it speaks.
#[derive(Clone, Copy)]
pub(crate) enum Entry {
    V1 {
        call: CallFn,
    },
    V2 {
        init: Option<InitFn>,
        fini: Option<FiniFn>,
        call: CallV2Fn,
    },
}

/// The size of the first version 2 descriptor: every v2 plugin's is at least this.
const DESCRIPTOR_V2_SIZE: usize = std::mem::size_of::<virt_hook_descriptor>();

/// A loaded plugin library. Lives until the process exits.
pub struct Library {
    path: PathBuf,
    name: String,
    entry: Entry,
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
    /// A [`LoadError`] naming the file when it cannot be opened as a shared object, has
    /// neither `virt_hook_plugin_v2` nor `virt_hook_plugin_v1`, returns a null
    /// descriptor, one of another ABI version or (v2) smaller than the first v2 layout,
    /// or a null `call`.
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
        // SAFETY: the symbol, if present, has the type the ABI gives it.
        let v2 = unsafe { lib.get::<virt_hook_plugin_v2_fn>(VIRT_HOOK_SYMBOL_V2) }
            .map(|s| *s)
            .ok();
        let (entry, plugin_name) = match v2 {
            // SAFETY: the plugin's own entry (above), with the ABI's type.
            Some(descriptor) => unsafe { read_v2(descriptor) }.map_err(fail)?,
            None => {
                // SAFETY: as for v2.
                let v1: virt_hook_plugin_v1_fn = unsafe { lib.get::<virt_hook_plugin_v1_fn>(VIRT_HOOK_SYMBOL) }
                    .map(|s| *s)
                    .map_err(|e| {
                        fail(LoadErrorKind::MissingSymbol {
                            symbol: crate::ENTRY_SYMBOLS,
                        })
                        .with_source(e)
                    })?;
                // SAFETY: the plugin's own entry, with the ABI's type.
                unsafe { read_v1(v1) }.map_err(fail)?
            }
        };
        let name = plugin_name.unwrap_or_else(|| {
            real.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let loaded = Arc::new(Library {
            path: real.clone(),
            name,
            entry,
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

    pub(crate) fn entry(&self) -> Entry {
        self.entry
    }

    /// The ABI version it speaks (1 or 2).
    pub fn abi_version(&self) -> u32 {
        match self.entry {
            Entry::V1 { .. } => VIRT_HOOK_ABI_VERSION,
            Entry::V2 { .. } => VIRT_HOOK_ABI_VERSION_2,
        }
    }
}

/// A name the plugin gives itself, if it gives one.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn plugin_name(name: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: this function's contract.
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}

/// # Safety
/// `entry` is a plugin's `virt_hook_plugin_v1`.
unsafe fn read_v1(entry: virt_hook_plugin_v1_fn) -> Result<(Entry, Option<String>), LoadErrorKind> {
    // SAFETY: the plugin's entry takes no arguments and returns its descriptor.
    let desc: *const virt_hook_plugin = unsafe { entry() };
    if desc.is_null() {
        return Err(LoadErrorKind::InvalidDescriptor {
            what: "`virt_hook_plugin_v1` returned a null descriptor",
        });
    }
    // The version first, alone: a descriptor of another version may be laid out otherwise.
    // SAFETY: every descriptor starts with its u32 version; `desc` is not null.
    let version = unsafe { std::ptr::read(desc.cast::<u32>()) };
    if version != VIRT_HOOK_ABI_VERSION {
        return Err(LoadErrorKind::AbiMismatch {
            expected: VIRT_HOOK_ABI_VERSION,
            found: version,
        });
    }
    // SAFETY: a version 1 descriptor, which the plugin keeps alive for the process.
    let desc = unsafe { &*desc };
    let call = desc.call.ok_or(LoadErrorKind::InvalidDescriptor {
        what: "its `call` is null",
    })?;
    // SAFETY: the ABI: `name` is null or a static NUL-terminated string.
    Ok((Entry::V1 { call }, unsafe { plugin_name(desc.name) }))
}

/// # Safety
/// `entry` is a plugin's `virt_hook_plugin_v2`.
unsafe fn read_v2(entry: virt_hook_plugin_v2_fn) -> Result<(Entry, Option<String>), LoadErrorKind> {
    // SAFETY: the plugin's entry takes no arguments and returns its descriptor.
    let desc: *const virt_hook_descriptor = unsafe { entry() };
    if desc.is_null() {
        return Err(LoadErrorKind::InvalidDescriptor {
            what: "`virt_hook_plugin_v2` returned a null descriptor",
        });
    }
    // SAFETY: every descriptor starts with its u32 version; `desc` is not null.
    let version = unsafe { std::ptr::read(desc.cast::<u32>()) };
    if version != VIRT_HOOK_ABI_VERSION_2 {
        return Err(LoadErrorKind::AbiMismatch {
            expected: VIRT_HOOK_ABI_VERSION_2,
            found: version,
        });
    }
    // SAFETY: a v2 descriptor has its size right after the version.
    let size = unsafe { std::ptr::read(desc.cast::<u32>().add(1)) };
    if (size as usize) < DESCRIPTOR_V2_SIZE {
        return Err(LoadErrorKind::InvalidDescriptor {
            what: "its `size` is smaller than a version 2 descriptor (set it to sizeof(virt_hook_descriptor))",
        });
    }
    // SAFETY: a version 2 descriptor at least as large as this host's, which the plugin
    // keeps alive for the process; fields past this host's layout are not read.
    let desc = unsafe { &*desc };
    let call = desc.call.ok_or(LoadErrorKind::InvalidDescriptor {
        what: "its `call` is null",
    })?;
    let entry = Entry::V2 {
        init: desc.init,
        fini: desc.fini,
        call,
    };
    // SAFETY: the ABI: `name` is null or a static NUL-terminated string.
    Ok((entry, unsafe { plugin_name(desc.name) }))
}
