//! Loading a module: from memory, the disk cache or a compile (in this process or a
//! child, within the compile budget), then checked as a WASI command and linked.

use super::*;

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
    pub(super) pre: InstancePre<HostState>,
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

impl Sandbox {
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
