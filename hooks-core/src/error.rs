//! Errors, one type per concern: loading a hook, calling one, and an event that failed.

pub use crate::driver::UnknownDriver;
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use crate::{FailurePolicy, HookRecord, Report};

/// A hook file that could not be loaded: not executable, bad ELF, wrong ABI, invalid
/// WASM, ... Carries the file, the backend and what was wrong as a [`LoadErrorKind`];
/// the underlying error, if any, is its `source`.
///
/// ```
/// use virt_hooks_core::LoadError;
/// use virt_hooks_core::error::LoadErrorKind;
/// let err = LoadError::new("/etc/libvirt/hooks/qemu.d/x.so", "dylib", LoadErrorKind::AbiMismatch { expected: 1, found: 7 });
/// assert_eq!(err.to_string(), "cannot load hook `/etc/libvirt/hooks/qemu.d/x.so` (dylib): ABI version 7, but this host speaks version 1");
/// assert!(matches!(err.kind, LoadErrorKind::AbiMismatch { found: 7, .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("cannot load hook `{}` ({backend}): {kind}", path.display())]
#[non_exhaustive]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// The backend that tried to load it.
    pub backend: &'static str,
    /// What was wrong.
    pub kind: LoadErrorKind,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn StdError + Send + Sync>>,
}

/// Why a hook file could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// The file (or its real path) could not be read.
    #[error("cannot read it")]
    Unreadable,
    /// Not executable by this user: libvirt would get exit status 126.
    #[error("not executable by this user: libvirt would get exit status 126")]
    NotExecutable,
    /// Neither an ELF binary nor a script with a `#!` line naming an interpreter.
    #[error("no `#!` line naming an interpreter and not an ELF binary: hooks run without a shell, so libvirt would get exit status 126")]
    NoInterpreterLine,
    /// The `#!` interpreter does not exist (127) or is not executable (126).
    #[error("interpreter `{}` {}", interpreter.display(), if *missing { "does not exist: libvirt would get exit status 127" } else { "is not executable: libvirt would get exit status 126" })]
    BadInterpreter {
        /// The interpreter.
        interpreter: PathBuf,
        /// Whether it is missing (else: not executable).
        missing: bool,
    },
    /// Not a shared object this machine can load.
    #[error("not a loadable shared object")]
    NotSharedObject,
    /// A symbol the plugin ABI requires is missing.
    #[error("no `{symbol}` symbol: not a hook plugin, or built against another ABI")]
    MissingSymbol {
        /// The symbol.
        symbol: &'static str,
    },
    /// The plugin speaks another ABI version.
    #[error("ABI version {found}, but this host speaks version {expected}")]
    AbiMismatch {
        /// The version this host speaks.
        expected: u32,
        /// The plugin's.
        found: u32,
    },
    /// The plugin's descriptor breaks the ABI (a null pointer where one is required).
    #[error("its descriptor is invalid: {what}")]
    InvalidDescriptor {
        /// What is wrong with it.
        what: &'static str,
    },
    /// A version 2 native plugin's `init` refused to start (its config, say).
    #[error("its init refused to start (status {code}){}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    InitFailed {
        /// The status `init` returned.
        code: i32,
        /// What it wrote to stderr or logged as an error.
        message: String,
    },
    /// Not valid WebAssembly.
    #[error("invalid WebAssembly")]
    InvalidModule,
    /// A WASM module that cannot be a hook: not a WASI command, needs imports the
    /// sandbox does not provide, or asks for more than the limits allow.
    #[error("{what}")]
    UnsupportedModule {
        /// What is wrong with it.
        what: &'static str,
    },
    /// Compiling it passed the limits on compiling at an event (time or memory), or
    /// waited past them for another process compiling it.
    #[error("not compiled within the limits for compiling at an event: {why}")]
    CompileLimit {
        /// What happened (how long it ran, how much memory it had).
        why: String,
    },
    /// It asks for more of something than the backend allows (WASM memories, ...).
    #[error("{what}: {found}, at most {max}")]
    ExceedsLimit {
        /// What it asks for.
        what: &'static str,
        /// How many.
        found: u64,
        /// The most allowed.
        max: u64,
    },
    /// Its settings file (`<hook>.toml`) is invalid.
    #[error("its settings file is invalid")]
    InvalidSettings,
    /// Refused by the trust rule.
    #[error("refused: {}", .0.reason())]
    Untrusted(Box<crate::Untrusted>),
    /// An executable in a hooks directory, but no backend linked into the program runs
    /// executables.
    #[error(
        "an executable, but no backend linked into this program runs executables (call `virt_hooks_exec::link()` from main)"
    )]
    NoBackend,
    /// A WebAssembly module or native plugin, but its backend (`"wasm"`, `"dylib"`) is
    /// not linked into this program.
    #[error("{}, but its backend is not linked into this program (call `{}::link()` from main)",
        if *backend == "wasm" { "a WebAssembly module" } else { "a native plugin" },
        if *backend == "wasm" { "virt_hooks_wasm" } else { "virt_hooks_dylib" })]
    NotLinked {
        /// The backend that would load it.
        backend: &'static str,
    },
    /// A WebAssembly module or native plugin whose backend is linked into this program
    /// but not among the loaders its hooks dir was given ([`crate::HooksDir::with_loaders`]).
    #[error("{}, but this hooks dir was given no loader for it (HooksDir::with_loaders without the `{backend}` loader)",
        if *backend == "wasm" { "a WebAssembly module" } else { "a native plugin" })]
    NoLoaderGiven {
        /// The backend that would load it.
        backend: &'static str,
    },
    /// The hooks directory itself could not be read.
    #[error("cannot read directory")]
    UnreadableDir,
    /// The backend could not start (its engine or runtime failed).
    #[error("the backend could not start")]
    BackendUnavailable,
    /// Another backend's own reason: see the error's `source`.
    #[error("the backend refused it")]
    Backend,
}

impl LoadError {
    /// A load error without an underlying cause.
    pub fn new(path: impl Into<PathBuf>, backend: &'static str, kind: LoadErrorKind) -> Self {
        LoadError {
            path: path.into(),
            backend,
            kind,
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// Why a hook could not be run (as opposed to running and failing).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The hook's file could not be loaded.
    #[error(transparent)]
    Load(std::sync::Arc<LoadError>),
    /// The hook's process could not be started for a reason other than exec failing
    /// (which libvirt reports as exit status 126/127).
    #[error("failed to spawn `{}`", path.display())]
    Spawn {
        /// The program.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Talking to a running hook failed.
    #[error("i/o error while running the hook")]
    Io(#[source] std::io::Error),
    /// The event's time budget ([`crate::RegistryBuilder::event_timeout`]) ran out
    /// before the hook's turn: it was not started.
    #[error("not started: the event's time budget of {} ran out", crate::report::format_duration(*budget))]
    NotStarted {
        /// The budget.
        budget: std::time::Duration,
    },
    /// The hook's state directory could not be made ready; the hook was not called.
    #[error(transparent)]
    State(crate::StateError),
    /// The call was cancelled (its future dropped, or the registry's cancel): the hook
    /// and what it started were stopped.
    #[error("the call was cancelled; the hook and what it started were stopped")]
    Cancelled,
    /// The hook's file was removed or renamed after the event began (set aside by an
    /// operator, say): it was not run, and the event goes on as it would have without it.
    #[error("`{}` was removed or renamed after the event began: not run", path.display())]
    Gone {
        /// Where the file was.
        path: PathBuf,
    },
    /// A backend-specific error (dylib, wasm, ...).
    #[error("{backend} backend error")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl HookError {
    /// Whether the hook could not even be loaded.
    pub fn is_load(&self) -> bool {
        matches!(self, HookError::Load(_))
    }
}

impl From<LoadError> for HookError {
    fn from(err: LoadError) -> Self {
        HookError::Load(std::sync::Arc::new(err))
    }
}

/// Formats an error with its whole `source` chain, `a: b: c`.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// An event at which at least one hook failed.
///
/// `Display` is libvirt's message for the last failure (the one libvirt reports), e.g.
/// `Hook script execution failed: internal error: Child process (LC_ALL=C PATH=... /etc/libvirt/hooks/qemu vm prepare begin -) unexpected exit status 1: <stderr>`.
/// The full [`Report`] is kept: every hook ran, and each has its record.
#[derive(Debug, Clone)]
pub struct HookFailure {
    report: Box<Report>,
}

impl HookFailure {
    pub(crate) fn new(report: Report) -> Self {
        debug_assert!(report.failed_hook().is_some());
        HookFailure {
            report: Box::new(report),
        }
    }

    /// What libvirt does with this failure.
    pub fn policy(&self) -> FailurePolicy {
        self.report.policy
    }

    /// Whether libvirt would stop the operation (abort, or kill the object).
    pub fn is_fatal(&self) -> bool {
        self.report.policy.is_fatal()
    }

    /// Whether the event was cancelled ([`crate::Registry::fire_until`]) rather than
    /// refused: the failed hook was the one stopped, not one that said no.
    pub fn is_cancelled(&self) -> bool {
        self.report.cancelled
    }

    /// The record of the failure libvirt reports (the last one).
    pub fn failed_hook(&self) -> &HookRecord {
        self.report
            .failed_hook()
            .expect("a HookFailure always has a failed hook")
    }

    /// Every failed hook, in run order.
    pub fn failures(&self) -> impl Iterator<Item = &HookRecord> {
        self.report.hooks.iter().filter(|r| !r.success && !r.optional)
    }

    /// The whole report.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Takes the report.
    pub fn into_report(self) -> Report {
        *self.report
    }
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.report.failed_hook().and_then(|r| r.message.as_deref()) {
            Some(msg) => f.write_str(msg),
            None => f.write_str("Hook script execution failed"),
        }
    }
}

impl StdError for HookFailure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_sources() {
        let err = HookError::Spawn {
            path: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(chain(&err).starts_with("failed to spawn `/x`: "));
    }
}
