//! Sandboxed WASM hooks: WASI preview-1 command modules run with wasmtime.
//!
//! A module gets exactly what an executable hook gets: argv `[module path, object, op,
//! subop, extra]`, the document on stdin, stdout (the new XML for `migrate`/`restore`)
//! and stderr captured, and its exit status from `proc_exit` (returning from `_start`
//! is 0). Deny by default: no preopened directories (opening a file fails inside the
//! module), no sockets, no inherited stdio, environment `LC_ALL=C` only.
//!
//! Limits per hook ([`WasmOptions`]):
//! - a memory cap (64 MiB by default) on all of a module's memories together (wasmtime
//!   48 allows several); exceeding it is a clean failure;
//! - a timeout (10 s by default, reported as `TimedOut`) that holds wherever the time
//!   goes: epoch interruption stops a module that computes, and a timer ends a wait in
//!   a host call (a WASI sleep through `poll_oneoff`), dropping it. One host call's
//!   work is bounded too: `random_get` yields every 64 KiB, and a call's WASI resource
//!   table holds at most 4096 handles (a `poll_oneoff` with more subscriptions traps).
//!   Calls run on wasmtime's async API, driven by this crate's own small tokio
//!   runtime, so they behave the same from `Registry::fire_blocking` and from inside
//!   tokio;
//! - output caps (16 MiB per stream, reported), optional fuel.
//!
//! **On drop**: dropping the future of `Hook::call` inside tokio ends the module's run
//! at its next epoch check or host call (within milliseconds) and frees its blocking
//! thread; outside a runtime the call runs to its end (or its timeout) within the poll.
//!
//! Speed: one engine per process (pooling allocator), each module compiled once (keyed
//! by the SHA-256 of its bytes) and kept linked (`InstancePre`), a fresh store per
//! call, and an on-disk cache of compiled code so a new process does not recompile.
//! Processes sharing the cache compile a module once: the first takes a lock beside
//! the entry, the others wait for it and load what it stored.
//!
//! **Compiling** is the one step the per-call limits do not cover, and a small module
//! can be built to make the compiler run for minutes and gigabytes. With
//! [`Compiler::Child`] ([`Sandbox::configure_compiler`], [`Sandbox::set_compiler`]) it
//! runs in a child process under an address-space limit and is stopped at the hook's
//! timeout ([`CompileBudget`]); a failure for those limits is remembered beside the
//! cache entry. The default, [`Compiler::InProcess`], has no limit: give the child
//! compiler to any program that loads modules it does not trust.
//!
//! The disk cache holds native code that runs with the caller's privileges (root,
//! under libvirt), so an entry is loaded only from a directory that passes
//! [`virt_hooks_core::backend::TrustPolicy`] for the effective uid, only when the entry itself is a
//! regular file (not a symlink) owned by the effective uid and writable by no one else,
//! and only when its header binds it to the SHA-256 of the module being loaded and to
//! this engine; anything else is recompiled. Root never caches under `HOME` or
//! `XDG_CACHE_HOME` ([`cache_dir_for`]).
//!
//! **Where modules go.** A driver that embeds this crate keeps its modules in its own
//! hooks dir, in libvirt's shape: with `virt_hooks_wasm::link()` called once,
//! `RegistryBuilder::hooks_dir(DIR)` runs `DIR/<driver>.d/*.wasm` (no execute bit needed)
//! in order with the scripts there, each with the limits its sidecar sets
//! (`<module>.wasm.toml`); [`WasmHook`] loads one module from anywhere. On a libvirt
//! host it is different: libvirt runs `/etc/libvirt/hooks/<driver>.d/` itself and skips a
//! module there, and hookctl's dispatcher runs modules from `<driver>.plugins/` (the
//! repository's `docs/embedding.md`, "Which layout is for whom").
//!
//! ```no_run
//! use virt_hooks_core::{Driver, RegistryBuilder};
//! use virt_hooks_core::events::QemuEvent;
//! use virt_hooks_wasm::{WasmHook, WasmOptions};
//! // A driver's own hooks dir (`RegistryBuilder::hooks_dir("/etc/myvmm/hooks")` would find it too).
//! let hook = WasmHook::load("/etc/myvmm/hooks/qemu.d/30-filter.wasm", WasmOptions::default())?;
//! let registry = RegistryBuilder::new().hook(Driver::Qemu, hook).build();
//! let ev = QemuEvent::Migrate { name: "vm".into(), xml: "<domain/>\n".into() };
//! let report = registry.fire_blocking(&ev);
//! # Ok::<(), virt_hooks_core::LoadError>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod cache;
mod compile;
mod engine;
mod pipe;
mod quota;
mod runtime;
mod sandbox;

pub use cache::{cache_dir_for, default_cache_dir};
pub use compile::{compiler_child_main, CompileBudget, Compiler, DEFAULT_COMPILE_MEMORY};
pub use engine::EngineConfig;
pub use sandbox::{CacheSource, CompiledModule, EngineError, Sandbox, MAX_MODULE_SIZE};

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use virt_hooks_core::backend::{HookLoader, HookSettings};
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::{Hook, HookOutcome, HookStatus, Invocation, LoadError};

/// Limits for one WASM hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmOptions {
    /// Stop the module after this long, whether it computes or waits in a host call,
    /// and report `TimedOut`. By default 10 s. An [`Invocation`] timeout, if shorter,
    /// wins.
    pub timeout: Option<Duration>,
    /// Cap in bytes on all of the module's linear memories together; growing past it
    /// fails the hook. By default 64 MiB.
    pub memory: usize,
    /// Cap on each of stdout and stderr; more is dropped and reported. By default 16 MiB.
    pub max_output: usize,
    /// Instruction budget, when the sandbox counts fuel ([`EngineConfig::fuel`]). By
    /// default none.
    pub fuel: Option<u64>,
    /// Cap in bytes on the state directory preopened as `/state` for hooks that keep
    /// state (see [`Invocation::state_dir`]): enforced at each WASI call that would
    /// pass it (that call returns `dquot` and writes nothing). By default 1 MiB.
    pub state_max: u64,
}

impl Default for WasmOptions {
    fn default() -> Self {
        WasmOptions {
            timeout: Some(Duration::from_secs(10)),
            memory: 64 << 20,
            max_output: 16 << 20,
            fuel: None,
            state_max: virt_hooks_core::state::DEFAULT_STATE_MAX,
        }
    }
}

/// A WASI command module as a hook.
#[derive(Debug, Clone)]
pub struct WasmHook {
    sandbox: Arc<Sandbox>,
    module: Arc<CompiledModule>,
    path: PathBuf,
    name: String,
    options: WasmOptions,
    /// `VIRT_HOOK_CONFIG_<KEY>` variables for its sidecar's `[config]`.
    config_env: Arc<[(String, String)]>,
}

impl WasmHook {
    /// Loads a module into the process-wide sandbox.
    ///
    /// # Errors
    /// A [`LoadError`] naming the file: unreadable, invalid WebAssembly, not a command
    /// module, imports the sandbox does not provide, or the engine could not be built.
    pub fn load(path: impl AsRef<Path>, options: WasmOptions) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let sandbox = Sandbox::global()
            .map_err(|e| LoadError::new(path, "wasm", LoadErrorKind::BackendUnavailable).with_source(e))?;
        Self::load_in(Arc::clone(sandbox), path, options)
    }

    /// Loads a module into a given sandbox.
    ///
    /// # Errors
    /// As [`WasmHook::load`].
    pub fn load_in(sandbox: Arc<Sandbox>, path: impl AsRef<Path>, options: WasmOptions) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let module = sandbox.load_within(path, options.timeout)?;
        Ok(WasmHook {
            sandbox,
            module,
            path: path.to_owned(),
            name: path.display().to_string(),
            options,
            config_env: Arc::new([]),
        })
    }

    /// The plugin's `[config]`, which the module finds in its environment beside
    /// `LC_ALL=C`, as an exec hook does: `VIRT_HOOK_CONFIG_<KEY>` (upper case, `-` as
    /// `_`), the value as text.
    pub fn with_config(mut self, config: &virt_hooks_core::backend::PluginConfig) -> Self {
        self.config_env = config.env().collect();
        self
    }

    /// The compiled module (and where it came from).
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }

    /// Its limits.
    pub fn options(&self) -> &WasmOptions {
        &self.options
    }

    fn job(&self, inv: &Invocation) -> impl FnOnce(Option<oneshot::Receiver<()>>) -> HookOutcome + Send + 'static {
        let args = inv.args();
        let argv = [
            self.name.clone(),
            args.lossy(0).into_owned(),
            args.lossy(1).into_owned(),
            args.lossy(2).into_owned(),
            args.lossy(3).into_owned(),
        ];
        let timeout = inv.timeout_with(self.options.timeout);
        let limits = sandbox::CallLimits {
            timeout,
            memory: self.options.memory,
            max_output: self.options.max_output,
            fuel: self.options.fuel,
            state_max: self.options.state_max,
        };
        let (sandbox, module, input) = (
            Arc::clone(&self.sandbox),
            Arc::clone(&self.module),
            inv.input_shared().cloned(),
        );
        let state = inv.state_dir().map(Path::to_owned);
        let ends = virt_hooks_core::state::state_ends_at(inv.driver(), &args.lossy(1), &args.lossy(2));
        let env = Arc::clone(&self.config_env);
        move |cancel| sandbox.run(&module, (&argv, &env), input, (state.as_deref(), ends), limits, cancel)
    }
}

#[async_trait]
impl Hook for WasmHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "wasm"
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    /// It stops at its timeout itself (epoch interruption, the timer on host calls).
    fn stop_grace(&self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let job = self.job(inv);
        // The module runs on the calling thread, which must not be an async worker:
        // inside tokio it moves to a blocking thread, and dropping this future (the
        // sender with it) ends the call there. A caller's `Cancel` drops the sender too,
        // from whatever thread cancels, and the call returns once the module stopped.
        let pool = virt_hooks_core::backend::blocking_pool();
        if pool.is_none() && inv.cancel().is_none() {
            // Right here, and nothing can end it but its own limits.
            return job(None);
        }
        let (caller_waits, cancel) = oneshot::channel::<()>();
        // Held by this future (its drop ends the call), and dropped by a `Cancel` too.
        let waits = std::sync::Arc::new(std::sync::Mutex::new(Some(caller_waits)));
        let _watching = inv.cancel().map(|c| {
            let dropper = std::sync::Arc::clone(&waits);
            c.on_cancel(move || drop(dropper.lock().map(|mut w| w.take())))
        });
        match pool {
            Some(rt) => rt
                .spawn_blocking(move || job(Some(cancel)))
                .await
                .unwrap_or_else(|e| HookOutcome::new(HookStatus::Crashed(format!("WASM task failed: {e}")))),
            None => job(Some(cancel)),
        }
    }
}

/// The WASM backend's loader: claims `*.wasm` files (no execute bit needed).
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmLoader {
    options: WasmOptions,
}

impl WasmLoader {
    /// A loader giving every module these limits.
    pub const fn new(options: WasmOptions) -> Self {
        WasmLoader { options }
    }
}

impl HookLoader for WasmLoader {
    fn backend(&self) -> &'static str {
        "wasm"
    }

    fn priority(&self) -> i32 {
        20
    }

    fn default_timeout(&self) -> Option<Duration> {
        self.options.timeout
    }

    fn claims(&self, path: &Path, _meta: &Metadata) -> bool {
        path.extension().is_some_and(|e| e == "wasm")
    }

    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        let mut options = self.options;
        options.timeout = settings.effective_timeout(options.timeout);
        if let Some(m) = settings.memory {
            options.memory = usize::try_from(m).unwrap_or(usize::MAX);
        }
        if let Some(o) = settings.max_output {
            options.max_output = usize::try_from(o).unwrap_or(usize::MAX);
        }
        if let Some(m) = settings.state_max {
            options.state_max = m;
        }
        Ok(Arc::new(WasmHook::load(path, options)?.with_config(&settings.config)))
    }
}

static WASM_LOADER: WasmLoader = WasmLoader::new(WasmOptions {
    timeout: Some(Duration::from_secs(10)),
    memory: 64 << 20,
    max_output: 16 << 20,
    fuel: None,
    state_max: virt_hooks_core::state::DEFAULT_STATE_MAX,
});

virt_hooks_core::register_loader!(&WASM_LOADER);

/// Makes sure this crate, and so its loader, is linked into the program.
pub fn link() {}
