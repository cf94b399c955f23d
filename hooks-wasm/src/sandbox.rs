//! The sandbox: one engine and linker, compiled modules cached in memory (by content
//! hash) and on disk, and the per-call store with its limits.

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

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    /// Already compiled in this process.
    Memory,
    /// Deserialized from the on-disk cache (no compile).
    Disk,
    /// Compiled now.
    Compiled,
}

/// A compiled, linked command module, ready to instantiate.
pub struct CompiledModule {
    pre: InstancePre<HostState>,
    digest: [u8; 32],
    source: CacheSource,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &hex(&self.digest))
            .field("source", &self.source)
            .finish()
    }
}

impl CompiledModule {
    /// Where it came from when it was first loaded in this process.
    pub fn source(&self) -> CacheSource {
        self.source
    }

    /// The SHA-256 of the module's bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}
/// Per-store state: the WASI context, the memory cap and the deadline.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    limits: MemoryCap,
    deadline: Option<Instant>,
    pub(crate) state: Option<StateQuota>,
}

/// Most table elements a store may hold, all tables together (8 bytes each).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Most entries in a call's WASI resource table: the stdio streams, and one pollable
/// per `poll_oneoff` subscription while it waits. A poll with more subscriptions traps
/// when the table is full, after ~4 000 of them, instead of making the host build
/// 500 000 (3.5 s and 194 MiB of host heap in a debug build, for one call).
const MAX_WASI_HANDLES: usize = 4096;

/// Most bytes `random_get` fills at a time; it yields between steps, so the timeout
/// can end a call for a huge buffer (one 65 MB call took 24 s in a debug build, and
/// the host built all of it in its own memory first).
const RANDOM_STEP: usize = 64 << 10;

/// The memory cap for all of a store's memories together: with multi-memory, a cap
/// per memory would give a module with N memories N times the cap.
struct MemoryCap {
    cap: usize,
    /// Bytes granted so far, all memories together. A growth that wasmtime then fails
    /// stays counted (the limiter is not told which memory failed): the cap can only
    /// get stricter.
    memory: usize,
    table_elements: usize,
    refused: Option<usize>,
}

impl MemoryCap {
    fn new(cap: usize) -> Self {
        MemoryCap {
            cap,
            memory: 0,
            table_elements: 0,
            refused: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    // Also called with `current` 0 for each memory as it is created.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_sub(current).saturating_add(desired);
        if total > self.cap {
            self.refused = Some(total);
            wasmtime::bail!("memory limit of {} exceeded (asked for {})", mib(self.cap), mib(total));
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_sub(current).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}

fn mib(bytes: usize) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// Limits for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory: usize,
    pub(crate) max_output: usize,
    pub(crate) fuel: Option<u64>,
    pub(crate) state_max: u64,
}

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

/// How a call ended, seen from outside the module.
enum Ended<T> {
    Returned(T),
    TimedOut,
    Abandoned,
}

/// Runs `call` until it finishes, `deadline` passes, or `cancel`'s sender is dropped;
/// then drops it, which also cancels a host call it waits in. Must run inside
/// [`runtime::block_on`] (the deadline is a tokio timer).
async fn bounded<F: Future>(
    call: F,
    deadline: Option<Instant>,
    mut cancel: Option<oneshot::Receiver<()>>,
) -> Ended<F::Output> {
    let mut call = pin!(call);
    // Created here, inside the runtime; registered only if the call has to wait.
    let mut timer = pin!(deadline.map(|d| tokio::time::sleep_until(d.into())));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Ended::Returned(out));
        }
        if let Some(timer) = timer.as_mut().as_pin_mut() {
            if timer.poll(cx).is_ready() {
                return Poll::Ready(Ended::TimedOut);
            }
        }
        if let Some(rx) = cancel.as_mut() {
            // Ready only once the caller has gone (the sender is never used to send).
            if std::pin::Pin::new(rx).poll(cx).is_ready() {
                return Poll::Ready(Ended::Abandoned);
            }
        }
        Poll::Pending
    })
    .await
}

/// The process-wide sandbox, built at first use.
static GLOBAL: OnceLock<Result<Arc<Sandbox>, EngineError>> = OnceLock::new();
/// Its configuration, if set before then ([`Sandbox::configure_global`]).
static GLOBAL_CONFIG: OnceLock<EngineConfig> = OnceLock::new();
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

    /// The process-wide sandbox with the default configuration and cache dir
    /// ([`default_cache_dir`]).
    ///
    /// # Errors
    /// When the engine cannot be built (the error says why).
    pub fn global() -> Result<&'static Arc<Sandbox>, EngineError> {
        GLOBAL
            .get_or_init(|| {
                let config = GLOBAL_CONFIG.get().copied().unwrap_or_default();
                Sandbox::new(config, default_cache_dir())
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

    /// Loads a module file: from memory if this content was seen, else from the disk
    /// cache (only an entry bound to this content, in a trusted dir; anything else is
    /// recompiled), else compiled, with no time limit unless the sandbox's
    /// [`CompileBudget`] is fixed. Checks that it is a WASI command module whose
    /// imports the sandbox provides.
    ///
    /// # Errors
    /// A [`LoadError`] naming the file and what is wrong.
    pub fn load(&self, path: &Path) -> Result<Arc<CompiledModule>, LoadError> {
        self.load_within(path, None)
    }

    /// [`Sandbox::load`] for a hook whose timeout is `hook_timeout`: under
    /// [`CompileBudget::HookTimeout`], compiling (or waiting for another process
    /// compiling the same module) stops there, and a failure for that limit is
    /// remembered beside the cache entry so later loads with no more time or memory
    /// fail at once instead of trying again.
    ///
    /// # Errors
    /// As [`Sandbox::load`]; [`LoadErrorKind::CompileLimit`] past the limits.
    pub fn load_within(&self, path: &Path, hook_timeout: Option<Duration>) -> Result<Arc<CompiledModule>, LoadError> {
        use std::io::Read;
        let unreadable = |e| LoadError::new(path, "wasm", LoadErrorKind::Unreadable).with_source(e);
        // Bounded before anything is read: a sparse 1 GiB file would otherwise be read,
        // hashed and held whole, outside every limit.
        let file = fs::File::open(path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        let too_big = |found| {
            LoadError::new(
                path,
                "wasm",
                LoadErrorKind::ExceedsLimit {
                    what: "module size in bytes",
                    found,
                    max: MAX_MODULE_SIZE,
                },
            )
        };
        if len > MAX_MODULE_SIZE {
            return Err(too_big(len));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // A file grown since: cut one past the limit, which `load_bytes_within` refuses.
        file.take(MAX_MODULE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        self.load_bytes_within(path, &bytes, hook_timeout)
    }

    /// [`Sandbox::load`] from bytes; `path` names the module in errors.
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<CompiledModule>, LoadError> {
        self.load_bytes_within(path, bytes, None)
    }

    /// The limits a compile for a hook with `hook_timeout` runs under.
    fn compile_limits(&self, hook_timeout: Option<Duration>) -> CompileLimits {
        let timeout = match *self.budget.read().unwrap_or_else(|p| p.into_inner()) {
            CompileBudget::HookTimeout => hook_timeout.map(|t| t.max(MIN_COMPILE_TIME)),
            CompileBudget::Fixed(budget) => Some(budget),
        };
        let memory = match &*self.compiler.read().unwrap_or_else(|p| p.into_inner()) {
            Compiler::InProcess => None,
            Compiler::Child { memory, .. } => Some(*memory),
        };
        CompileLimits { timeout, memory }
    }

    /// The module for `bytes`: from the disk cache, or compiled under `limits` (once per
    /// module and engine across processes sharing the cache: the others wait for the
    /// compile lock and load what it stored).
    fn compiled(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &[u8; 32],
        limits: CompileLimits,
    ) -> Result<(Module, CacheSource), LoadError> {
        let fail = |kind: LoadErrorKind| LoadError::new(path, "wasm", kind);
        let Some(cache) = &self.cache else {
            let known = self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(digest)
                .cloned();
            if let Some((_, why)) = known.filter(|(failed, _)| failed.covers(limits)) {
                return Err(fail(LoadErrorKind::CompileLimit { why: remembered(&why) }));
            }
            return match self.compile(path, bytes, limits) {
                Err(Failed::Limit { why, repeatable }) => {
                    let why = with_hint(&why);
                    if repeatable {
                        self.failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(*digest, (limits, why.clone()));
                    }
                    Err(fail(LoadErrorKind::CompileLimit { why }))
                }
                Err(Failed::Other(e)) => Err(e),
                Ok(module) => Ok((module, CacheSource::Compiled)),
            };
        };
        if let Some(module) = cache.load(&self.engine, digest) {
            return Ok((module, CacheSource::Disk));
        }
        let deadline = limits.timeout.and_then(|t| Instant::now().checked_add(t));
        let lock = cache.lock(digest, deadline).map_err(|waited| {
            fail(LoadErrorKind::CompileLimit {
                why: format!(
                    "waited {:.1} s for another process compiling the same module{HINT}",
                    waited.as_secs_f64()
                ),
            })
        })?;
        if lock.is_some() {
            // Compiled by whoever held the lock.
            if let Some(module) = cache.load(&self.engine, digest) {
                return Ok((module, CacheSource::Disk));
            }
        }
        if let Some(why) = cache.failure(digest, limits) {
            return Err(fail(LoadErrorKind::CompileLimit { why: remembered(&why) }));
        }
        let remaining = CompileLimits {
            timeout: deadline.map(|d| d.saturating_duration_since(Instant::now())),
            ..limits
        };
        match self.compile(path, bytes, remaining) {
            Ok(module) => {
                cache.store(digest, &module);
                cache.clear_failure(digest);
                Ok((module, CacheSource::Compiled))
            }
            Err(Failed::Limit { why, repeatable }) => {
                let why = with_hint(&why);
                // With the limits it had: a compile that took the lock late had less
                // time than the hook's whole budget.
                if repeatable {
                    cache.record_failure(digest, remaining, &why);
                }
                Err(fail(LoadErrorKind::CompileLimit { why }))
            }
            Err(Failed::Other(e)) => Err(e),
        }
    }

    /// Compiles `bytes` with this sandbox's compiler.
    fn compile(&self, path: &Path, bytes: &[u8], limits: CompileLimits) -> Result<Module, Failed> {
        let invalid =
            |why: WasmError| Failed::Other(LoadError::new(path, "wasm", LoadErrorKind::InvalidModule).with_source(why));
        let compiler = self.compiler.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Compiler::Child {
            program,
            arg0,
            args,
            memory,
        } = compiler
        else {
            return Module::new(&self.engine, bytes).map_err(|e| invalid(WasmError::from(e)));
        };
        match compile_in_child(
            (&program, arg0.as_ref(), &args, memory),
            self.config,
            bytes,
            limits.timeout,
        ) {
            // SAFETY: `deserialize` runs the native code it is given; these bytes are
            // what our own compiler child wrote to a pipe only this process reads, from
            // the module being loaded, with this engine's code settings (an artifact of
            // other settings is refused by wasmtime's own check).
            Ok(code) => unsafe { Module::deserialize(&self.engine, &code) }.map_err(|e| {
                Failed::Other(
                    LoadError::new(path, "wasm", LoadErrorKind::BackendUnavailable).with_source(WasmError::from(e)),
                )
            }),
            Err(ChildFailure::Invalid(why)) => Err(invalid(WasmError(why))),
            Err(e) if e.is_limit() => Err(Failed::Limit {
                why: e.to_string(),
                repeatable: e.is_repeatable(),
            }),
            Err(e) => Err(Failed::Other(
                LoadError::new(path, "wasm", LoadErrorKind::BackendUnavailable).with_source(WasmError(e.to_string())),
            )),
        }
    }

    fn load_bytes_within(
        &self,
        path: &Path,
        bytes: &[u8],
        hook_timeout: Option<Duration>,
    ) -> Result<Arc<CompiledModule>, LoadError> {
        let fail = |kind: LoadErrorKind| LoadError::new(path, "wasm", kind);
        if bytes.len() as u64 > MAX_MODULE_SIZE {
            return Err(fail(LoadErrorKind::ExceedsLimit {
                what: "module size in bytes",
                found: bytes.len() as u64,
                max: MAX_MODULE_SIZE,
            }));
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok(Arc::clone(m));
        }
        let (module, source) = self.compiled(path, bytes, &digest, self.compile_limits(hook_timeout))?;
        match module.get_export("_start") {
            Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
            Some(_) => {
                return Err(fail(LoadErrorKind::UnsupportedModule {
                    what: "`_start` is not a function taking and returning nothing",
                }))
            }
            None => {
                return Err(fail(LoadErrorKind::UnsupportedModule {
                    what: "not a WASI command module: it exports no `_start` (libraries and reactors cannot be hooks)",
                }))
            }
        }
        let needs = module.resources_required();
        for (what, found, max) in [
            ("memories", needs.num_memories, MAX_MEMORIES),
            ("tables", needs.num_tables, MAX_TABLES),
        ] {
            if found > max {
                return Err(fail(LoadErrorKind::ExceedsLimit {
                    what,
                    found: found.into(),
                    max: max.into(),
                }));
            }
        }
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            fail(LoadErrorKind::UnsupportedModule {
                what: "needs imports the sandbox does not provide (only WASI preview 1 is linked)",
            })
            .with_source(WasmError::from(e))
        })?;
        let compiled = Arc::new(CompiledModule { pre, digest, source });
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Runs a module once, on this thread, until it ends, its timeout passes (in wasm
    /// code or in a host call), or `cancel`'s sender is dropped. Must not be called on
    /// an async worker thread.
    pub(crate) fn run(
        &self,
        module: &CompiledModule,
        argv: &[String; 5],
        input: Option<Arc<[u8]>>,
        (state, state_ends): (Option<&Path>, bool),
        limits: CallLimits,
        cancel: Option<oneshot::Receiver<()>>,
    ) -> HookOutcome {
        let start = Instant::now();
        let deadline = limits.timeout.and_then(|t| start.checked_add(t));
        let stdout = CappedPipe::new(limits.max_output);
        let stderr = CappedPipe::new(limits.max_output);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(argv)
            .env("LC_ALL", "C")
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // Blocking the thread would turn a WASI sleep into `thread::sleep`, which
            // no timeout can end.
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(input) = input {
            wasi.stdin(MemoryInputPipe::new(bytes::Bytes::from_owner(input)));
        }
        // Its only writable path, and only for hooks that keep state.
        if let Some(dir) = state {
            if let Err(e) = wasi.preopened_dir(dir, "/state", FsPerms::ReadWrite) {
                let why = format!("cannot open its state directory `{}`: {e:#}", dir.display());
                return HookOutcome::new(HookStatus::Crashed(why)).with_duration(start.elapsed());
            }
        }
        let quota = match state
            .map(|dir| StateQuota::new(dir, limits.state_max, deadline))
            .transpose()
        {
            Ok(quota) => quota,
            Err(why) => return HookOutcome::new(HookStatus::Crashed(why)).with_duration(start.elapsed()),
        };
        let mut wasi = wasi.build_p1();
        wasi.ctx().table.set_max_capacity(MAX_WASI_HANDLES);
        let watched = deadline.is_some() || cancel.is_some();
        let state = HostState {
            wasi,
            limits: MemoryCap::new(limits.memory),
            deadline,
            state: quota,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if self.config.fuel {
            let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        }
        // Each tick, a computing module traps once past its deadline, and otherwise
        // yields, so the caller's cancellation is seen while it computes too.
        let _ticking = if self.config.interruptible && watched {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|s| {
                Ok(match s.data().deadline {
                    Some(d) if Instant::now() >= d => UpdateDeadline::Interrupt,
                    _ => UpdateDeadline::Yield(1),
                })
            });
            Some(Ticker::global().start())
        } else {
            store.set_epoch_deadline(u64::MAX);
            None
        };
        let pre = &module.pre;
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let entry = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            entry.call_async(&mut store, ()).await
        };
        let status = match runtime::block_on(bounded(call, deadline, cancel)) {
            Ok(Ended::Returned(Ok(()))) => HookStatus::Exited(0),
            Ok(Ended::Returned(Err(e))) => classify(&e, store.data().limits.refused, limits),
            Ok(Ended::TimedOut) => HookStatus::TimedOut(limits.timeout.unwrap_or_default()),
            Ok(Ended::Abandoned) => HookStatus::Failed(virt_hooks_core::HookError::Cancelled),
            Err(e) => HookStatus::Crashed(e.to_owned()),
        };
        // Whatever the module did last is measured too: a cap that held only while it
        // ran would be no cap.
        // At the object's last event the directory goes anyway: one overshoot then must
        // not fail the event, which would keep the directory and fail every later call.
        let over = store
            .data()
            .state
            .as_ref()
            .filter(|_| !state_ends)
            .and_then(StateQuota::over);
        let status = match (status, over) {
            (HookStatus::Exited(_), Some(why)) => HookStatus::Crashed(why),
            (status, _) => status,
        };
        // The module saw `dquot` and may have carried on: the operator sees why.
        let refused = store.data().state.as_ref().and_then(|q| q.refused().map(str::to_owned));
        drop(store);
        let (out, out_cut) = stdout.take();
        let (err, err_cut) = stderr.take();
        let mut outcome = HookOutcome::new(status)
            .with_stdout(out)
            .with_stderr(err)
            .with_duration(start.elapsed());
        outcome.stdout_truncated = out_cut;
        outcome.stderr_truncated = err_cut;
        outcome.warnings.extend(refused);
        outcome
    }
}

/// WASI's `random_get(buf, len)`, from the same generator, filled [`RANDOM_STEP`] bytes
/// at a time straight into the module's memory, with a yield between steps (WASI's
/// own builds the whole buffer on the host in one go, which no timeout can stop).
fn random_get(
    mut caller: Caller<'_, HostState>,
    (buf, len): (i32, i32),
) -> Box<dyn Future<Output = wasmtime::Result<i32>> + Send + '_> {
    Box::new(async move {
        let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
            wasmtime::bail!("random_get: the module exports no memory");
        };
        // WASI pointers and lengths are unsigned; an out-of-bounds buffer traps, as in
        // WASI's own.
        let (start, len) = (buf as u32 as usize, len as u32 as usize);
        let end = start
            .checked_add(len)
            .filter(|&end| end <= memory.data_size(&caller))
            .ok_or_else(|| wasmtime::format_err!("random_get: buffer {start}+{len} is out of bounds"))?;
        let mut at = start;
        while at < end {
            let step = (end - at).min(RANDOM_STEP);
            let bytes = caller
                .data_mut()
                .wasi
                .ctx()
                .ctx
                .random()
                .get_random_bytes(step as u64)?;
            memory.write(&mut caller, at, &bytes)?;
            at += step;
            if at < end {
                yield_once().await;
            }
        }
        Ok(0) // errno `success`
    })
}

/// Pending once (and woken at once), so the future driving the call polls its
/// deadline and cancellation before the module's host call goes on.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

fn classify(e: &wasmtime::Error, refused: Option<usize>, limits: CallLimits) -> HookStatus {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return HookStatus::Exited(exit.0);
    }
    if let Some(asked) = refused {
        return HookStatus::Crashed(format!(
            "memory limit of {} exceeded (asked for {})",
            mib(limits.memory),
            mib(asked)
        ));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => HookStatus::TimedOut(limits.timeout.unwrap_or_default()),
        Some(Trap::OutOfFuel) => HookStatus::Crashed("ran out of fuel".into()),
        Some(trap) => HookStatus::Crashed(format!("trap: {trap}")),
        // The cause first, then where: wasmtime's own message puts a backtrace (the
        // module's function names) before the cause, and a cut would lose the cause.
        None => HookStatus::Crashed(match e.downcast_ref::<wasmtime::WasmBacktrace>() {
            Some(trace) => format!(
                "{}\nwasm backtrace:\n{}",
                capped(e.root_cause().to_string()),
                capped(trace.to_string())
            ),
            None => capped(format!("{e:#}")),
        }),
    }
}

/// The most bytes of a wasmtime error kept in a status: its backtrace names the
/// module's functions, and a name section can make one name megabytes long.
const MAX_ERROR: usize = 2 << 10;

/// `text` cut to [`MAX_ERROR`] bytes on a character boundary, saying how much went.
fn capped(mut text: String) -> String {
    if text.len() <= MAX_ERROR {
        return text;
    }
    let mut end = MAX_ERROR;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} more bytes cut)"));
    text
}

/// How a compile failed.
enum Failed {
    /// For its limits: the reason, and whether the same limits would fail again (then
    /// worth remembering).
    Limit {
        why: String,
        repeatable: bool,
    },
    Other(LoadError),
}

/// The largest module loaded: far above hooks built by real toolchains (a C hook is
/// ~150 KB, CPython as a component ~19 MB), and a bound on what the host reads, hashes
/// and holds before any compile limit applies.
pub const MAX_MODULE_SIZE: u64 = 64 << 20;

/// The least time a compile at an event gets, whatever the hook's timeout: a hook
/// timed to 100 ms must not become uncompilable on a busy host.
const MIN_COMPILE_TIME: Duration = Duration::from_secs(2);

/// What a message about a compile past its limits ends with.
const HINT: &str = "; compile it ahead of events, where the per-event limit does not apply";

fn with_hint(why: &str) -> String {
    format!("{why}{HINT}")
}

fn remembered(why: &str) -> String {
    format!("an earlier attempt with no less time and memory failed: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_character_boundary_saying_how_much() {
        assert_eq!(capped("short".into()), "short");
        let long = "é".repeat(MAX_ERROR);
        let cut = capped(long.clone());
        assert!(cut.len() < MAX_ERROR + 40, "{}", cut.len());
        assert!(cut.ends_with(&format!("… ({} more bytes cut)", long.len() - MAX_ERROR)));
    }

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
