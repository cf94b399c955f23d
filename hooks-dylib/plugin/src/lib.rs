//! Write a native hook plugin in Rust: implement [`Plugin`] and export it with
//! [`export_hook!`]. The crate has no dependencies, so a plugin stays small.
//!
//! ```
//! use std::io::Write;
//! use virt_hooks_plugin::{export_hook, Invocation, Plugin};
//!
//! struct NoTestGuests;
//!
//! impl Plugin for NoTestGuests {
//!     const NAME: &'static std::ffi::CStr = c"no-test-guests";
//!     fn call(&self, inv: &Invocation<'_>) -> i32 {
//!         if inv.op() == "prepare" && inv.object().starts_with("test-") {
//!             inv.error("test guests may not run here");
//!             return 1;
//!         }
//!         0
//!     }
//! }
//!
//! export_hook!(NoTestGuests);
//! ```
//!
//! A plugin configured by its sidecar's `[config]` table implements [`FromConfig`] and
//! is exported with `export_hook!(Type from_config)`: the instance is made once, when
//! the plugin is loaded, and a refusal (a missing key, a bad value) fails every event
//! it would run, naming the plugin.
//!
//! ```
//! use virt_hooks_plugin::{export_hook, FromConfig, Init, Invocation, Plugin};
//!
//! struct VcpuLimit { max: u32 }
//!
//! impl FromConfig for VcpuLimit {
//!     fn from_config(init: &Init<'_>) -> Result<Self, String> {
//!         let max = init.config("max_vcpus").ok_or("max_vcpus is not set")?;
//!         Ok(VcpuLimit { max: max.parse().map_err(|e| format!("max_vcpus `{max}`: {e}"))? })
//!     }
//! }
//!
//! impl Plugin for VcpuLimit {
//!     const NAME: &'static std::ffi::CStr = c"vcpu-limit";
//!     fn call(&self, inv: &Invocation<'_>) -> i32 {
//!         inv.debug(&format!("at most {} vCPUs", self.max));
//!         0
//!     }
//! }
//!
//! export_hook!(VcpuLimit from_config);
//! ```
//!
//! Build it as a `cdylib` and drop the `.so` into `/etc/libvirt/hooks/<driver>.plugins/`
//! on a libvirt host (run by hookctl's dispatcher; libvirt runs `<driver>.d/` itself and
//! does not load plugins), or into `<driver>.d/` of the hooks dir of a driver that embeds
//! `virt-hooks-dylib`. It speaks version 2 of the C ABI (`virt_hook.h`).
//!
//! **Panics.** With `panic = "unwind"` (the default), a panic inside `call` is caught at
//! the boundary: the event fails with status 101, the message is on stderr and is the
//! error line that explains the failure. With `panic = "abort"` nothing can be caught:
//! the message is written to the process's stderr (fd 2) before it aborts, so hookctl,
//! which runs each call in a `hookctl-native` process of its own, shows it beside
//! `SIGABRT`; a host that loads plugins into its own process dies with it. A panic in
//! `from_config` refuses the plugin like an error does (unwind) or aborts (abort).
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod abi;

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::io;
use std::panic::{self, AssertUnwindSafe};

pub use abi::{VIRT_HOOK_ABI_VERSION, VIRT_HOOK_ABI_VERSION_2};

/// A native hook. One instance serves every call, possibly from several threads.
pub trait Plugin: Sync + 'static {
    /// The plugin's name, shown in reports.
    const NAME: &'static CStr;

    /// Handles one event; 0 is success, anything else an exit status.
    fn call(&self, inv: &Invocation<'_>) -> i32;
}

/// A plugin made at load from its sidecar's `[config]` (`export_hook!(Type from_config)`).
pub trait FromConfig: Plugin + Send + Sized {
    /// Makes the instance; an `Err` refuses the plugin with that message.
    ///
    /// # Errors
    /// Why the config cannot be used.
    fn from_config(init: &Init<'_>) -> Result<Self, String>;
}

/// What a plugin is made from: its path and its `[config]`. Valid during `from_config`.
#[derive(Debug)]
pub struct Init<'a> {
    raw: &'a abi::virt_hook_init,
}

/// A config table as the host passes it.
fn config_items<'a>(items: *const abi::virt_hook_config_item, len: usize) -> &'a [abi::virt_hook_config_item] {
    if items.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the ABI: `len` items, alive as long as the instance (so for 'a).
    unsafe { std::slice::from_raw_parts(items, len) }
}

fn config_pairs<'a>(items: &'a [abi::virt_hook_config_item]) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    items.iter().filter_map(|item| {
        // SAFETY: the ABI: NUL-terminated key and value, alive for the instance.
        let (k, v) = unsafe { (CStr::from_ptr(item.key), CStr::from_ptr(item.value)) };
        Some((k.to_str().ok()?, v.to_str().ok()?))
    })
}

impl<'a> Init<'a> {
    /// The plugin's own file.
    pub fn path(&self) -> &'a std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        if self.raw.path.is_null() {
            return std::path::Path::new("");
        }
        // SAFETY: the ABI: a NUL-terminated path, valid during init.
        std::path::Path::new(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(self.raw.path) }.to_bytes(),
        ))
    }
    /// The value of `key` in `[config]`, as text (`8`, `true`, `br0`).
    pub fn config(&self, key: &str) -> Option<&'a str> {
        config_pairs(config_items(self.raw.config, self.raw.config_len)).find_map(|(k, v)| (k == key).then_some(v))
    }
    /// Every `[config]` entry, sorted by key.
    pub fn config_entries(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        config_pairs(config_items(self.raw.config, self.raw.config_len))
    }
    /// Logs a line at `level`: it goes with the first event's log lines (in hookctl,
    /// with each event's, as each runs in a process of its own); a refusal's error line
    /// is the message `hookctl check` shows.
    pub fn log(&self, level: Level, message: &str) {
        log_to(self.raw.out, level, message);
    }
}

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Detail for whoever debugs the plugin.
    Debug = abi::VIRT_HOOK_DEBUG as isize,
    /// What the plugin did.
    Info = abi::VIRT_HOOK_INFO as isize,
    /// Something the operator should look at.
    Warn = abi::VIRT_HOOK_WARN as isize,
    /// What went wrong: the last one explains a failure.
    Error = abi::VIRT_HOOK_ERROR as isize,
}

fn log_to(out: *const abi::virt_hook_output, level: Level, message: &str) {
    // SAFETY: the host's output for this call, or null.
    let Some(out) = (unsafe { out.as_ref() }) else { return };
    if (out.size as usize) < std::mem::size_of::<abi::virt_hook_output>() {
        return;
    }
    if let Some(log) = out.log {
        // SAFETY: the host's callback with its own ctx and a buffer we own.
        unsafe { log(out.ctx, level as i32, message.as_ptr().cast(), message.len()) };
    }
}

/// One event, as the host passed it. Everything borrowed is valid during the call only.
#[derive(Debug)]
pub struct Invocation<'a> {
    raw: &'a abi::virt_hook_event,
}

impl<'a> Invocation<'a> {
    /// Wraps the host's event.
    ///
    /// # Safety
    /// `raw` must follow the ABI: valid, NUL-terminated strings, an input buffer of
    /// `input_len` bytes (or null), a valid output, all alive for `'a`.
    pub unsafe fn from_raw(raw: &'a abi::virt_hook_event) -> Self {
        Invocation { raw }
    }

    fn text(ptr: *const std::ffi::c_char) -> &'a [u8] {
        if ptr.is_null() {
            return b"-";
        }
        // SAFETY: `from_raw`'s contract: a NUL-terminated string alive for 'a.
        unsafe { CStr::from_ptr(ptr) }.to_bytes()
    }

    /// The driver (`qemu`, `lxc`, `network`, `daemon`, ...).
    pub fn driver(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(Self::text(self.raw.driver))
    }
    /// The object: domain or network name, `-` for the daemon.
    pub fn object(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(Self::text(self.raw.object))
    }
    /// The operation (`prepare`, `migrate`, ...).
    pub fn op(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(Self::text(self.raw.op))
    }
    /// `begin`, `end` or `-`.
    pub fn subop(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(Self::text(self.raw.subop))
    }
    /// The extra argument (`-`, a release reason, `SIGHUP`).
    pub fn extra(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(Self::text(self.raw.extra))
    }
    /// The four arguments as raw bytes.
    pub fn args_bytes(&self) -> [&'a [u8]; 4] {
        [self.raw.object, self.raw.op, self.raw.subop, self.raw.extra].map(Self::text)
    }
    /// The input document (domain XML, network `<hookData>`); `None` for the daemon.
    pub fn input(&self) -> Option<&'a [u8]> {
        if self.raw.input.is_null() {
            return None;
        }
        // SAFETY: `from_raw`'s contract: `input_len` readable bytes alive for 'a.
        Some(unsafe { std::slice::from_raw_parts(self.raw.input, self.raw.input_len) })
    }
    /// The input as text (lossily), empty when there is none.
    pub fn input_str(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.input().unwrap_or_default())
    }
    /// The hook's stdout: the new XML for `migrate`/`restore`.
    pub fn stdout(&self) -> Output<'a> {
        Output {
            out: self.raw.out,
            stderr: false,
            _call: std::marker::PhantomData,
        }
    }
    /// The hook's stderr: the message libvirt shows on failure.
    pub fn stderr(&self) -> Output<'a> {
        Output {
            out: self.raw.out,
            stderr: true,
            _call: std::marker::PhantomData,
        }
    }
    /// The value of `key` in the sidecar's `[config]`, as text.
    pub fn config(&self, key: &str) -> Option<&'a str> {
        config_pairs(config_items(self.raw.config, self.raw.config_len)).find_map(|(k, v)| (k == key).then_some(v))
    }
    /// Every `[config]` entry, sorted by key.
    pub fn config_entries(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        config_pairs(config_items(self.raw.config, self.raw.config_len))
    }
    /// Logs a line at `level`: the report, the audit log, the journal and `hookctl
    /// simulate` show it.
    pub fn log(&self, level: Level, message: &str) {
        log_to(self.raw.out, level, message);
    }
    /// Logs at [`Level::Debug`].
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }
    /// Logs at [`Level::Info`].
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }
    /// Logs at [`Level::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }
    /// Says why the hook fails: logged at [`Level::Error`] (the line that explains the
    /// failure) and written to stderr (what libvirt shows).
    pub fn error(&self, message: &str) {
        use io::Write;
        self.log(Level::Error, message);
        let _ = writeln!(self.stderr(), "{message}");
    }
    /// The plugin's state directory for this guest or network, when its sidecar says
    /// `state = true`: it lives from the object's first event until after its last
    /// (`release`, or `stopped` for a network), so what the plugin did at `start` is
    /// known at `release`.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        if self.raw.state_dir.is_null() {
            return None;
        }
        // SAFETY: the ABI: a NUL-terminated path, valid during the call.
        let dir = unsafe { CStr::from_ptr(self.raw.state_dir) }.to_bytes();
        Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
    }
}

/// The environment variable naming the state directory of a version 1 plugin run by
/// hookctl (version 2 gets it in its event: [`Invocation::state_dir`]).
pub const STATE_ENV: &str = "VIRT_HOOK_STATE";

/// A stream back to the host; implements [`io::Write`].
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    out: *const abi::virt_hook_output,
    stderr: bool,
    _call: std::marker::PhantomData<&'a abi::virt_hook_output>,
}

impl io::Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the host's output for this call ('a), or null.
        let Some(out) = (unsafe { self.out.as_ref() }) else {
            return Ok(buf.len());
        };
        let f = if self.stderr {
            out.write_stderr
        } else {
            out.write_stdout
        };
        if let Some(f) = f {
            // SAFETY: the host's callback with its own ctx and a buffer we own.
            unsafe { f(out.ctx, buf.as_ptr(), buf.len()) };
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A descriptor in a `static` (it holds raw pointers, which are not `Sync` by default).
#[doc(hidden)]
#[repr(transparent)]
#[derive(Debug)]
pub struct StaticDescriptor(pub abi::virt_hook_descriptor);

// SAFETY: the descriptor is immutable and points only at static data.
unsafe impl Sync for StaticDescriptor {}

std::thread_local! {
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// The plugin whose call (or init) runs on this thread, for the panic hook.
    static CURRENT: Cell<Option<&'static CStr>> = const { Cell::new(None) };
}

fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // This is the plugin's own copy of std: the host's panic hook is not touched.
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_owned(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "unknown panic".into()),
            };
            let place = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = format!("{msg}{place}");
            if ABORTS.load(std::sync::atomic::Ordering::Relaxed) || cfg!(panic = "abort") {
                // The process dies right after this hook: its stderr is all that is left.
                use io::Write;
                let name = CURRENT.with(Cell::get);
                let name = name.map_or(Cow::Borrowed("?"), CStr::to_string_lossy);
                // `<3>`: an error line, which hookctl shows as the failure's reason.
                let _ = writeln!(io::stderr(), "<3>plugin `{name}` panicked: {message}");
            }
            PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(message));
        }));
    });
}

/// Whether the plugin was built with `panic = "abort"`: told by the code
/// `export_hook!` expands in the plugin's own crate, whose profile decides.
static ABORTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[doc(hidden)]
pub fn __panic_aborts(aborts: bool) {
    if aborts {
        ABORTS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Marks this thread as running plugin `name` until dropped.
struct Current;

impl Current {
    fn enter(name: &'static CStr) -> Current {
        CURRENT.with(|c| c.set(Some(name)));
        Current
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(name: &'static CStr, f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_panic_hook();
    let _current = Current::enter(name);
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        PANIC_MESSAGE
            .with(|m| m.borrow_mut().take())
            .unwrap_or_else(|| "unknown panic".into())
    })
}

/// Whether a structure the host built has all the fields this crate reads.
fn whole<T>(size: u32) -> bool {
    size as usize >= std::mem::size_of::<T>()
}

/// The body of the exported `call`: checks the event, runs the plugin, turns a panic
/// into status 101 with the message on stderr and as the error logged.
///
/// # Safety
/// `raw` is null or points to an event that follows the ABI, valid for the call, whose
/// `instance` is what [`__init`] made for `P` (or any value, when `instance` is unused:
/// `plugin` is `Some`).
#[doc(hidden)]
pub unsafe fn __call<P: Plugin>(plugin: Option<&P>, raw: *const abi::virt_hook_event) -> i32 {
    // SAFETY: the host passes a valid event for the duration of the call, or null.
    let Some(raw) = (unsafe { raw.as_ref() }) else { return 2 };
    // SAFETY: as above; the host follows the ABI.
    let inv = unsafe { Invocation::from_raw(raw) };
    if !whole::<abi::virt_hook_event>(raw.size) {
        inv.error(&format!(
            "{}: the host's event is {} bytes, smaller than version 2's {}",
            P::NAME.to_string_lossy(),
            raw.size,
            std::mem::size_of::<abi::virt_hook_event>()
        ));
        return 2;
    }
    // SAFETY: this function's contract: a `P` that `__init` made, or `plugin`.
    let Some(plugin) = plugin.or_else(|| unsafe { raw.instance.cast::<P>().as_ref() }) else {
        inv.error(&format!("{}: called without its instance", P::NAME.to_string_lossy()));
        return 2;
    };
    match guarded(P::NAME, || plugin.call(&inv)) {
        Ok(code) => code,
        Err(msg) => {
            inv.error(&format!("plugin `{}` panicked: {msg}", P::NAME.to_string_lossy()));
            101
        }
    }
}

/// The body of the exported `init` of a [`FromConfig`] plugin.
///
/// # Safety
/// `raw` and `instance` follow the ABI, valid for the call.
#[doc(hidden)]
pub unsafe fn __init<P: FromConfig>(raw: *const abi::virt_hook_init, instance: *mut *mut c_void) -> i32 {
    use io::Write;
    // SAFETY: the host passes a valid init for the duration of the call, or null.
    let Some(raw) = (unsafe { raw.as_ref() }) else { return 2 };
    if instance.is_null() || !whole::<abi::virt_hook_init>(raw.size) {
        return 2;
    }
    let init = Init { raw };
    let stderr = Output {
        out: raw.out,
        stderr: true,
        _call: std::marker::PhantomData,
    };
    match guarded(P::NAME, || P::from_config(&init)) {
        Ok(Ok(made)) => {
            // SAFETY: `instance` is the host's slot for this plugin's instance.
            unsafe { *instance = Box::into_raw(Box::new(made)).cast() };
            0
        }
        Ok(Err(why)) => {
            init.log(Level::Error, &why);
            let _ = writeln!({ stderr }, "{why}");
            1
        }
        Err(panic) => {
            let why = format!(
                "plugin `{}` panicked in from_config: {panic}",
                P::NAME.to_string_lossy()
            );
            init.log(Level::Error, &why);
            let _ = writeln!({ stderr }, "{why}");
            101
        }
    }
}

/// The body of the exported `fini` of a [`FromConfig`] plugin.
///
/// # Safety
/// `instance` is what [`__init`] made for `P`, given back once.
#[doc(hidden)]
pub unsafe fn __fini<P: FromConfig>(instance: *mut c_void) {
    if !instance.is_null() {
        // SAFETY: this function's contract: the Box `__init` leaked, once.
        drop(unsafe { Box::from_raw(instance.cast::<P>()) });
    }
}

/// Exports a [`Plugin`] as `virt_hook_plugin_v2`.
///
/// `export_hook!(MyHook)` for a unit struct, `export_hook!(MyHook = MyHook::new())` for
/// any constant expression, `export_hook!(MyHook from_config)` for a [`FromConfig`]
/// plugin made at load. Use it once per `cdylib`.
#[macro_export]
macro_rules! export_hook {
    ($ty:ident) => {
        $crate::export_hook!($ty = $ty);
    };
    ($ty:ident from_config) => {
        /// The plugin's descriptor (the one symbol the host looks up).
        #[no_mangle]
        pub extern "C" fn virt_hook_plugin_v2() -> *const $crate::abi::virt_hook_descriptor {
            unsafe extern "C" fn init(
                raw: *const $crate::abi::virt_hook_init,
                instance: *mut *mut ::std::ffi::c_void,
            ) -> i32 {
                $crate::__panic_aborts(cfg!(panic = "abort"));
                // SAFETY: the host calls with an init and a slot that follow the ABI.
                unsafe { $crate::__init::<$ty>(raw, instance) }
            }
            unsafe extern "C" fn fini(instance: *mut ::std::ffi::c_void) {
                // SAFETY: the host gives back what `init` made, once.
                unsafe { $crate::__fini::<$ty>(instance) }
            }
            unsafe extern "C" fn call(ev: *const $crate::abi::virt_hook_event) -> i32 {
                $crate::__panic_aborts(cfg!(panic = "abort"));
                // SAFETY: the host calls with an event that follows the ABI, whose
                // instance `init` made.
                unsafe { $crate::__call::<$ty>(None, ev) }
            }
            static DESCRIPTOR: $crate::StaticDescriptor = $crate::StaticDescriptor($crate::abi::virt_hook_descriptor {
                abi_version: $crate::VIRT_HOOK_ABI_VERSION_2,
                size: ::std::mem::size_of::<$crate::abi::virt_hook_descriptor>() as u32,
                name: <$ty as $crate::Plugin>::NAME.as_ptr(),
                init: Some(init),
                fini: Some(fini),
                call: Some(call),
            });
            &DESCRIPTOR.0
        }
    };
    ($ty:ty = $init:expr) => {
        /// The plugin's descriptor (the one symbol the host looks up).
        #[no_mangle]
        pub extern "C" fn virt_hook_plugin_v2() -> *const $crate::abi::virt_hook_descriptor {
            static INSTANCE: $ty = $init;
            unsafe extern "C" fn call(ev: *const $crate::abi::virt_hook_event) -> i32 {
                $crate::__panic_aborts(cfg!(panic = "abort"));
                // SAFETY: the host calls with an event that follows the ABI.
                unsafe { $crate::__call(Some(&INSTANCE), ev) }
            }
            static DESCRIPTOR: $crate::StaticDescriptor = $crate::StaticDescriptor($crate::abi::virt_hook_descriptor {
                abi_version: $crate::VIRT_HOOK_ABI_VERSION_2,
                size: ::std::mem::size_of::<$crate::abi::virt_hook_descriptor>() as u32,
                name: <$ty as $crate::Plugin>::NAME.as_ptr(),
                init: None,
                fini: None,
                call: Some(call),
            });
            &DESCRIPTOR.0
        }
    };
}

/// The README's examples, compiled as doc tests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
