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
//!             let _ = writeln!(inv.stderr(), "test guests may not run here");
//!             return 1;
//!         }
//!         0
//!     }
//! }
//!
//! export_hook!(NoTestGuests);
//! ```
//!
//! Build it as a `cdylib` and drop the `.so` into `/etc/libvirt/hooks/<driver>.plugins/`
//! on a libvirt host (run by hookctl's dispatcher; libvirt runs `<driver>.d/` itself and
//! does not load plugins), or into `<driver>.d/` of the hooks dir of a driver that embeds
//! `virt-hooks-dylib`.
//! A panic inside `call` is caught at the boundary: the event fails with status 101
//! and the panic message on stderr.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

pub mod abi;

use std::borrow::Cow;
use std::ffi::CStr;
use std::io;
use std::panic::{self, AssertUnwindSafe};

pub use abi::VIRT_HOOK_ABI_VERSION;

/// A native hook. One instance serves every call, possibly from several threads.
pub trait Plugin: Sync + 'static {
    /// The plugin's name, shown in reports.
    const NAME: &'static CStr;

    /// Handles one event; 0 is success, anything else an exit status.
    fn call(&self, inv: &Invocation<'_>) -> i32;
}

/// One event, as the host passed it. Everything borrowed is valid during the call only.
#[derive(Debug)]
pub struct Invocation<'a> {
    raw: &'a abi::virt_hook_invocation,
}

impl<'a> Invocation<'a> {
    /// Wraps the host's invocation.
    ///
    /// # Safety
    /// `raw` must follow the ABI: valid, NUL-terminated strings and an input buffer of
    /// `input_len` bytes (or null), all alive for `'a`.
    pub unsafe fn from_raw(raw: &'a abi::virt_hook_invocation) -> Self {
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
            io: &self.raw.io,
            stderr: false,
        }
    }
    /// The hook's stderr: the message shown on failure.
    pub fn stderr(&self) -> Output<'a> {
        Output {
            io: &self.raw.io,
            stderr: true,
        }
    }
    /// The plugin's state directory for this guest or network, when its sidecar says
    /// `state = true`: it lives from the object's first event until after its last
    /// (`release`, or `stopped` for a network), so what the plugin did at `start` is
    /// known at `release`. hookctl names it in the environment of the `hookctl-native`
    /// process that runs each call; a host that loads plugins into its own process
    /// refuses plugins that ask for state.
    pub fn state_dir(&self) -> Option<std::path::PathBuf> {
        std::env::var_os(STATE_ENV).map(std::path::PathBuf::from)
    }
}

/// The environment variable [`Invocation::state_dir`] reads.
pub const STATE_ENV: &str = "VIRT_HOOK_STATE";

/// A stream back to the host; implements [`io::Write`].
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    io: &'a abi::virt_hook_io,
    stderr: bool,
}

impl io::Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = if self.stderr {
            self.io.write_stderr
        } else {
            self.io.write_stdout
        };
        if let Some(f) = f {
            // SAFETY: the host's callback with its own ctx and a buffer we own.
            unsafe { f(self.io.ctx, buf.as_ptr(), buf.len()) };
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
pub struct StaticDescriptor(pub abi::virt_hook_plugin);

// SAFETY: the descriptor is immutable and points only at static data.
unsafe impl Sync for StaticDescriptor {}

std::thread_local! {
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
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
            PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{msg}{place}")));
        }));
    });
}

/// The body of the exported `call`: checks the invocation, runs the plugin, turns a
/// panic into status 101 with the message on stderr.
///
/// # Safety
/// `raw` is null or points to an invocation that follows the ABI, valid for the call.
#[doc(hidden)]
pub unsafe fn __call<P: Plugin>(plugin: &P, raw: *const abi::virt_hook_invocation) -> i32 {
    use io::Write;
    if raw.is_null() {
        return 2;
    }
    // SAFETY: the host passes a valid invocation for the duration of the call.
    let raw = unsafe { &*raw };
    // SAFETY: as above; the host follows the ABI.
    let inv = unsafe { Invocation::from_raw(raw) };
    if raw.abi_version != VIRT_HOOK_ABI_VERSION {
        let _ = writeln!(
            inv.stderr(),
            "{}: host ABI version {} is not {VIRT_HOOK_ABI_VERSION}",
            P::NAME.to_string_lossy(),
            raw.abi_version
        );
        return 2;
    }
    install_quiet_panic_hook();
    match panic::catch_unwind(AssertUnwindSafe(|| plugin.call(&inv))) {
        Ok(code) => code,
        Err(_) => {
            let msg = PANIC_MESSAGE
                .with(|m| m.borrow_mut().take())
                .unwrap_or_else(|| "unknown panic".into());
            let _ = writeln!(inv.stderr(), "plugin `{}` panicked: {msg}", P::NAME.to_string_lossy());
            101
        }
    }
}

/// Exports a [`Plugin`] as `virt_hook_plugin_v1`.
///
/// `export_hook!(MyHook)` for a unit struct, `export_hook!(MyHook = MyHook::new())` for
/// any constant expression. Use it once per `cdylib`.
#[macro_export]
macro_rules! export_hook {
    ($ty:ident) => {
        $crate::export_hook!($ty = $ty);
    };
    ($ty:ty = $init:expr) => {
        /// The plugin's descriptor (the one symbol the host looks up).
        #[no_mangle]
        pub extern "C" fn virt_hook_plugin_v1() -> *const $crate::abi::virt_hook_plugin {
            static INSTANCE: $ty = $init;
            unsafe extern "C" fn call(inv: *const $crate::abi::virt_hook_invocation) -> i32 {
                // SAFETY: the host calls with an invocation that follows the ABI.
                unsafe { $crate::__call(&INSTANCE, inv) }
            }
            static DESCRIPTOR: $crate::StaticDescriptor = $crate::StaticDescriptor($crate::abi::virt_hook_plugin {
                abi_version: $crate::VIRT_HOOK_ABI_VERSION,
                name: <$ty as $crate::Plugin>::NAME.as_ptr(),
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
