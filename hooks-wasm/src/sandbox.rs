//! The sandbox: one engine and linker, compiled modules cached in memory (by content
//! hash) and on disk, and the per-call store with its limits.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hooks_core::{HookOutcome, HookStatus, LoadError};
use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::engine::{build_engine, deadline_ticks, EngineConfig, Ticker};
use crate::pipe::CappedPipe;

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

/// Per-store state: the WASI context and the memory cap.
pub(crate) struct HostState {
    wasi: WasiP1Ctx,
    limits: MemoryCap,
}

struct MemoryCap {
    cap: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            wasmtime::bail!(
                "memory limit of {} exceeded (asked for {})",
                mib(self.cap),
                mib(desired)
            );
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

fn mib(bytes: usize) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Limits for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory: usize,
    pub(crate) max_output: usize,
    pub(crate) fuel: Option<u64>,
}

const CACHE_MAGIC: &[u8; 8] = b"VHWASM1\0";

/// One engine with its linker and module caches. Build one per process (or use
/// [`Sandbox::global`]); it is costly to create and cheap to share.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    pooling: bool,
    cache_dir: Option<PathBuf>,
    compat: String,
    modules: Mutex<HashMap<[u8; 32], Arc<CompiledModule>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.config)
            .field("pooling", &self.pooling)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// The default on-disk cache: `$VIRT_HOOKS_WASM_CACHE` (`off` disables it), else
/// `$XDG_CACHE_HOME/virt-hooks/wasm`, else `$HOME/.cache/virt-hooks/wasm`, else (root
/// with no home, as under libvirt) `/var/cache/virt-hooks/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("VIRT_HOOKS_WASM_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) if !v.is_empty() => return Some(PathBuf::from(v)),
        _ => {}
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("virt-hooks/wasm"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home).join(".cache/virt-hooks/wasm"));
    }
    // libvirt may run hooks with no HOME; as root, use the system cache.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .is_ok_and(|m| m.uid() == 0)
        .then(|| PathBuf::from("/var/cache/virt-hooks/wasm"))
}

impl Sandbox {
    /// A sandbox with its own engine; `cache_dir` `None` keeps compiled modules in
    /// memory only.
    ///
    /// # Errors
    /// When the engine cannot be built.
    pub fn new(config: EngineConfig, cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let (engine, pooling) = build_engine(config)?;
        let mut linker = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());
        Ticker::global().register(&engine);
        Ok(Sandbox {
            engine,
            linker,
            config,
            pooling,
            cache_dir,
            compat,
            modules: Mutex::default(),
        })
    }

    /// The process-wide sandbox with the default configuration and cache dir.
    ///
    /// # Errors
    /// When the engine cannot be built (the message says why).
    pub fn global() -> Result<&'static Arc<Sandbox>, String> {
        static GLOBAL: OnceLock<Result<Arc<Sandbox>, String>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                Sandbox::new(EngineConfig::default(), default_cache_dir())
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The on-disk cache dir, if any.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Loads a module file: from memory if this content was seen, else from the disk
    /// cache (checksummed; a bad entry is recompiled), else compiled. Checks that it is
    /// a WASI command module whose imports the sandbox provides.
    ///
    /// # Errors
    /// A [`LoadError`] naming the file and what is wrong.
    pub fn load(&self, path: &Path) -> Result<Arc<CompiledModule>, LoadError> {
        let bytes = fs::read(path).map_err(|e| LoadError::new(path, "wasm", "cannot read it").with_source(e))?;
        self.load_bytes(path, &bytes)
    }

    /// [`Sandbox::load`] from bytes; `path` names the module in errors.
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<CompiledModule>, LoadError> {
        let fail = |reason: &str| LoadError::new(path, "wasm", reason);
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok(Arc::clone(m));
        }
        let (module, source) = match self.read_cached(&digest) {
            Some(module) => (module, CacheSource::Disk),
            None => {
                let module = Module::new(&self.engine, bytes)
                    .map_err(|e| fail("invalid WebAssembly").with_source(WasmError::from(e)))?;
                self.write_cached(&digest, &module);
                (module, CacheSource::Compiled)
            }
        };
        match module.get_export("_start") {
            Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => {}
            Some(_) => return Err(fail("`_start` is not a function taking and returning nothing")),
            None => {
                return Err(fail(
                    "not a WASI command module: it exports no `_start` (libraries and reactors cannot be hooks)",
                ))
            }
        }
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            fail("needs imports the sandbox does not provide (only WASI preview 1 is linked)")
                .with_source(WasmError::from(e))
        })?;
        let compiled = Arc::new(CompiledModule { pre, digest, source });
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, Arc::clone(&compiled));
        Ok(compiled)
    }

    fn cache_path(&self, digest: &[u8; 32]) -> Option<PathBuf> {
        Some(
            self.cache_dir
                .as_ref()?
                .join(format!("{}-{}.cwasm", hex(digest), self.compat)),
        )
    }

    fn read_cached(&self, digest: &[u8; 32]) -> Option<Module> {
        let path = self.cache_path(digest)?;
        let data = fs::read(&path).ok()?;
        let body = data.strip_prefix(CACHE_MAGIC.as_slice())?;
        let (sum, artifact) = body.split_at_checked(32)?;
        if Sha256::digest(artifact).as_slice() != sum {
            tracing::warn!(path = %path.display(), "corrupt WASM cache entry; recompiling");
            let _ = fs::remove_file(&path);
            return None;
        }
        // SAFETY: the artifact was written by `write_cached` with this engine's compatibility
        // hash in its name, and its checksum matches, so it is the bytes wasmtime
        // produced; wasmtime also checks its own header and engine settings.
        match unsafe { Module::deserialize(&self.engine, artifact) } {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable WASM cache entry; recompiling");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn write_cached(&self, digest: &[u8; 32], module: &Module) {
        let Some(path) = self.cache_path(digest) else { return };
        let Ok(artifact) = module.serialize() else { return };
        let write = || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir)?;
            // Written beside the entry and renamed over it, so readers never see half.
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            use std::io::Write;
            tmp.write_all(CACHE_MAGIC)?;
            tmp.write_all(&Sha256::digest(&artifact))?;
            tmp.write_all(&artifact)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map(drop).map_err(|e| e.error)
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the WASM cache entry");
        }
    }

    /// Runs a module once.
    pub(crate) fn run(
        &self,
        module: &CompiledModule,
        argv: &[String; 5],
        input: Option<Arc<[u8]>>,
        limits: CallLimits,
    ) -> HookOutcome {
        let start = Instant::now();
        let stdout = CappedPipe::new(limits.max_output);
        let stderr = CappedPipe::new(limits.max_output);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(argv)
            .env("LC_ALL", "C")
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(input) = input {
            wasi.stdin(MemoryInputPipe::new(bytes::Bytes::from_owner(input)));
        }
        let state = HostState {
            wasi: wasi.build_p1(),
            limits: MemoryCap {
                cap: limits.memory,
                refused: None,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if self.config.fuel {
            let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        }
        let _ticking = match limits.timeout.filter(|_| self.config.interruptible) {
            Some(t) => {
                store.set_epoch_deadline(deadline_ticks(t));
                Some(Ticker::global().start())
            }
            None => {
                store.set_epoch_deadline(u64::MAX);
                None
            }
        };
        let result = module
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
            .and_then(|start| start.call(&mut store, ()));
        let status = match result {
            Ok(()) => HookStatus::Exited(0),
            Err(e) => classify(&e, store.data().limits.refused, limits),
        };
        drop(store);
        let (out, out_cut) = stdout.take();
        let (err, err_cut) = stderr.take();
        let mut outcome = HookOutcome::new(status)
            .with_stdout(out)
            .with_stderr(err)
            .with_duration(start.elapsed());
        outcome.stdout_truncated = out_cut;
        outcome.stderr_truncated = err_cut;
        outcome
    }
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
        None => HookStatus::Crashed(format!("{e:#}")),
    }
}

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
