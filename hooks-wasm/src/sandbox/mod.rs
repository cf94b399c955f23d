//! The sandbox: one engine and linker, compiled modules cached in memory (by content
//! hash) and on disk, and the per-call store with its limits.

// `load.rs` loads modules (compiled, cached in memory and on disk), `call.rs` runs one
// call with its WASI context, and `limits.rs` holds a call to its memory and time.
mod call;
mod limits;
mod load;

use self::call::random_get;
pub(crate) use self::call::HostState;
pub(crate) use self::limits::CallLimits;
pub use self::load::{CacheSource, CompiledModule, MAX_MODULE_SIZE};

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::{HookOutcome, HookStatus, LoadError};
use wasmtime::{
    Caller, Engine, Extern, ExternType, InstancePre, Linker, Module, ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::bindings::random::random::Host as _;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder, WasiView};

use crate::cache::{default_cache_dir, hex, CompileLimits, DiskCache};
use crate::compile::{compile_in_child, ChildFailure, CompileBudget, Compiler};
use crate::engine::{build_engine, EngineConfig, Ticker, MAX_MEMORIES, MAX_TABLES};
use crate::pipe::CappedPipe;
use crate::quota::StateQuota;
use crate::runtime;

/// One engine with its linker and module caches. Build one per process (or use
/// [`Sandbox::global`]); it is costly to create and cheap to share.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    pooling: bool,
    cache: Option<DiskCache>,
    modules: Mutex<HashMap<[u8; 32], Arc<CompiledModule>>>,
    compiler: RwLock<Compiler>,
    budget: RwLock<CompileBudget>,
    /// Compiles that failed for their limits, when there is no disk cache to record
    /// them in: the module and the limits it failed under.
    failures: Mutex<HashMap<[u8; 32], (CompileLimits, String)>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .field("pooling", &self.pooling)
            .field("cache_dir", &self.cache_dir())
            .finish_non_exhaustive()
    }
}

/// The process-wide sandbox, built at first use.
static GLOBAL: OnceLock<Result<Arc<Sandbox>, EngineError>> = OnceLock::new();
/// Its configuration, if set before then ([`Sandbox::configure_global`]).
static GLOBAL_CONFIG: OnceLock<EngineConfig> = OnceLock::new();
/// The cache dir of [`Sandbox::global`] when the program chose one.
static GLOBAL_CACHE: OnceLock<Option<PathBuf>> = OnceLock::new();
/// How sandboxes built from now on compile ([`Sandbox::configure_compiler`]).
static GLOBAL_COMPILER: OnceLock<Compiler> = OnceLock::new();

impl Sandbox {
    /// A sandbox with its own engine; `cache_dir` `None` keeps compiled modules in
    /// memory only. The dir must be absolute, without `.` or `..` components; what is
    /// missing of it is created (mode 0700) one directory at a time, each inside one
    /// that passes the trust rule for the effective uid ([`virt_hooks_core::backend::TrustPolicy`]),
    /// and it is used only if it passes that rule; otherwise the sandbox warns
    /// (through `tracing`) and compiles in memory.
    ///
    /// # Errors
    /// When the engine cannot be built.
    pub fn new(config: EngineConfig, cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let (engine, pooling) = build_engine(config)?;
        let mut linker = Linker::new(&engine);
        // The async WASI calls: a sleep is a tokio timer that dropping the call cancels.
        p1::add_to_linker_async(&mut linker, |s: &mut HostState| &mut s.wasi)?;
        linker.allow_shadowing(true);
        linker.func_wrap_async("wasi_snapshot_preview1", "random_get", random_get)?;
        linker.allow_shadowing(false);
        crate::quota::add_to_linker(&mut linker)?;
        let cache = cache_dir.and_then(|dir| DiskCache::open(&dir, &engine));
        Ticker::global().register(&engine);
        Ok(Sandbox {
            engine,
            linker,
            config,
            pooling,
            cache,
            modules: Mutex::default(),
            compiler: RwLock::new(GLOBAL_COMPILER.get().cloned().unwrap_or(Compiler::InProcess)),
            budget: RwLock::new(CompileBudget::default()),
            failures: Mutex::default(),
        })
    }

    /// The process-wide sandbox (what [`crate::WasmLoader`] and [`crate::WasmHook::load`]
    /// use), with the configuration and cache dir set by [`Sandbox::configure_global`]
    /// and [`Sandbox::configure_global_cache`], else the defaults ([`default_cache_dir`]:
    /// as root, `/var/cache/virt-hooks/wasm`).
    ///
    /// # Errors
    /// When the engine cannot be built (the error says why).
    pub fn global() -> Result<&'static Arc<Sandbox>, EngineError> {
        GLOBAL
            .get_or_init(|| {
                let config = GLOBAL_CONFIG.get().copied().unwrap_or_default();
                let cache = GLOBAL_CACHE.get().cloned().unwrap_or_else(default_cache_dir);
                Sandbox::new(config, cache)
                    .map(Arc::new)
                    .map_err(|e| EngineError(WasmError::from(e).0))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Sets the engine configuration of [`Sandbox::global`], before its first use: a
    /// program that runs one hook and exits wants `pooling: false`, since reserving the
    /// pool costs more than allocating one instance on demand.
    ///
    /// # Errors
    /// Gives `config` back when the global sandbox was already configured or built.
    ///
    /// ```
    /// use virt_hooks_wasm::{EngineConfig, Sandbox};
    /// let one_shot = EngineConfig { pooling: false, ..EngineConfig::default() };
    /// assert!(Sandbox::configure_global(one_shot).is_ok());
    /// assert!(Sandbox::configure_global(EngineConfig::default()).is_err());
    /// assert!(!Sandbox::global().unwrap().pooling());
    /// ```
    pub fn configure_global(config: EngineConfig) -> Result<(), EngineConfig> {
        if GLOBAL.get().is_some() {
            return Err(config);
        }
        GLOBAL_CONFIG.set(config)
    }

    /// Sets the compiled-module cache dir of [`Sandbox::global`] before its first use:
    /// a driver keeps its own (`Some(dir)`: an absolute path, created `0700` if missing,
    /// that must pass the trust rule) or none (`None`), in place of
    /// [`default_cache_dir`] (`$VIRT_HOOKS_WASM_CACHE`, else the system's as root).
    ///
    /// # Errors
    /// Gives `dir` back when the global sandbox's cache was already chosen or it was built.
    pub fn configure_global_cache(dir: Option<PathBuf>) -> Result<(), Option<PathBuf>> {
        if GLOBAL.get().is_some() {
            return Err(dir);
        }
        GLOBAL_CACHE.set(dir)
    }

    /// Sets how every sandbox built from now on compiles (the global one included),
    /// before the first is built: a program that can run itself as a compiler child
    /// gives [`Compiler::Child`], so a module built to exhaust the compiler costs an
    /// event no more than its timeout and the child's memory limit.
    ///
    /// # Errors
    /// Gives `compiler` back when it was already set.
    pub fn configure_compiler(compiler: Compiler) -> Result<(), Compiler> {
        GLOBAL_COMPILER.set(compiler)
    }

    /// This sandbox's compiler from now on.
    pub fn set_compiler(&self, compiler: Compiler) {
        *self.compiler.write().unwrap_or_else(|p| p.into_inner()) = compiler;
    }

    /// How long loads may spend compiling from now on ([`CompileBudget::HookTimeout`]
    /// by default; compiling ahead of events wants a fixed, longer one).
    pub fn set_compile_budget(&self, budget: CompileBudget) {
        *self.budget.write().unwrap_or_else(|p| p.into_inner()) = budget;
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The on-disk cache dir in use (absolute), if any: `None` when none was given or
    /// it failed the trust rule.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(DiskCache::dir)
    }
}

/// The WASM engine could not be built (wasmtime's reason).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot start the WASM engine: {0}")]
pub struct EngineError(String);

/// A wasmtime error as a `std::error::Error` source for [`LoadError`].
#[derive(Debug)]
pub(crate) struct WasmError(String);

impl From<wasmtime::Error> for WasmError {
    fn from(e: wasmtime::Error) -> Self {
        WasmError(format!("{e:#}"))
    }
}

impl std::fmt::Display for WasmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WasmError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each sandbox registers its engine with the process's one ticker; an embedder
    /// that makes and drops one per request must not grow that list without end.
    #[test]
    fn making_and_dropping_sandboxes_leaves_the_ticker_list_bounded() {
        let config = EngineConfig {
            pooling: false,
            ..EngineConfig::default()
        };
        for _ in 0..10_000 {
            drop(Sandbox::new(config, None).expect("engine"));
        }
        // Other tests in this process may hold a few sandboxes meanwhile.
        let registered = Ticker::global().registered();
        assert!(registered <= 16, "{registered} engines registered after 10,000 dropped");
    }
}
