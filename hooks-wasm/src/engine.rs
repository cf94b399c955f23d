//! The shared engine, its configuration, and the one ticker thread that makes running
//! modules check their deadline (epoch interruption).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::Duration;

use wasmtime::{Config, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances while a call with a deadline runs.
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// Bytes of each pooled memory and table kept mapped between calls.
const KEEP_RESIDENT: usize = 1 << 20;

/// The largest memory any module may get; a hook's own cap is enforced per store.
pub(crate) const MAX_MEMORY: usize = 1 << 30;

/// Most memories and tables one module may define (multi-memory is on in wasmtime 48).
/// More is refused at load, so pooled and on-demand engines accept the same modules;
/// the memory cap counts all of them together.
pub(crate) const MAX_MEMORIES: u32 = 4;
pub(crate) const MAX_TABLES: u32 = 4;

/// How the engine is built. One engine serves every hook; it is costly to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Pre-reserve instance slots (faster instantiation, ≈ 14 µs vs 33 µs a call here);
    /// falls back to on-demand allocation if the reservation fails. By default on.
    pub pooling: bool,
    /// How many module instances may run at once with pooling. By default 64.
    pub max_concurrency: u32,
    /// Count fuel, so hooks can be given an instruction budget (costs ~10-20% speed).
    /// By default off: timeouts use epoch interruption instead.
    pub fuel: bool,
    /// Compile epoch checks into modules so timeouts can stop them while they compute.
    /// By default on; without it a timeout still ends a wait in a host call (a WASI
    /// sleep) but cannot interrupt a module that computes (only for measuring the
    /// checks' cost, or for fully trusted modules).
    pub interruptible: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_concurrency: 64,
            fuel: false,
            interruptible: true,
        }
    }
}

/// The engine settings for `cfg`, with the pooling allocator or without.
fn engine_config(cfg: EngineConfig, pooling: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(cfg.interruptible).consume_fuel(cfg.fuel);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_memories(cfg.max_concurrency)
            .total_tables(cfg.max_concurrency)
            .total_core_instances(cfg.max_concurrency)
            .total_stacks(cfg.max_concurrency)
            .max_memory_size(MAX_MEMORY)
            .max_memories_per_module(MAX_MEMORIES)
            .max_tables_per_module(MAX_TABLES)
            // Hooks touch little memory: zeroing it on reuse beats returning it to
            // the kernel and faulting it back in on every call.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// What a compiler child builds its engine with: the same code generation as
/// [`build_engine`]'s engine (the allocator does not change compiled code), and no
/// pool to reserve under its memory limit.
pub(crate) fn compile_config(cfg: EngineConfig) -> Config {
    engine_config(cfg, false)
}

pub(crate) fn build_engine(cfg: EngineConfig) -> wasmtime::Result<(Engine, bool)> {
    if cfg.pooling {
        match Engine::new(&engine_config(cfg, true)) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => tracing::warn!(error = %e, "pooling allocator unavailable; allocating on demand"),
        }
    }
    Ok((Engine::new(&engine_config(cfg, false))?, false))
}

/// One thread advances the epoch of every engine with a running deadline, and sleeps
/// (parked) while none runs.
pub(crate) struct Ticker {
    active: AtomicUsize,
    /// Weak, so a dropped sandbox's engine (and its pooled memory) is freed.
    engines: std::sync::Mutex<Vec<EngineWeak>>,
    thread: OnceLock<Thread>,
}

/// Keeps the ticker running while a call with a deadline is in flight.
pub(crate) struct TickGuard(&'static Ticker);

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    pub(crate) fn global() -> &'static Ticker {
        static TICKER: OnceLock<Ticker> = OnceLock::new();
        TICKER.get_or_init(|| Ticker {
            active: AtomicUsize::new(0),
            engines: Default::default(),
            thread: OnceLock::new(),
        })
    }

    /// Has the ticker advance `engine`'s epoch while calls run. Engines dropped since
    /// are forgotten first, so the list holds the live ones and at most the last
    /// dropped, however many sandboxes a process makes.
    pub(crate) fn register(&'static self, engine: &Engine) {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        engines.retain(|weak| weak.upgrade().is_some());
        engines.push(engine.weak());
    }

    /// How many engines the ticker holds a weak reference to, dead or alive.
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        self.engines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn start(&'static self) -> TickGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        let thread = self.thread.get_or_init(|| {
            let spawned = thread::Builder::new()
                .name("wasm-hook-epoch".into())
                .spawn(move || loop {
                    if self.active.load(Ordering::Acquire) == 0 {
                        thread::park();
                        continue;
                    }
                    thread::sleep(TICK);
                    self.engines
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|weak| weak.upgrade().map(|engine| engine.increment_epoch()).is_some());
                });
            match spawned {
                Ok(handle) => handle.thread().clone(),
                // Without a ticker, deadlines cannot fire; calls then run to completion.
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the WASM epoch thread: timeouts are off");
                    thread::current()
                }
            }
        });
        thread.unpark();
        TickGuard(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ticker of the test's own, so other tests' sandboxes do not count.
    fn fresh_ticker() -> &'static Ticker {
        Box::leak(Box::new(Ticker {
            active: AtomicUsize::new(0),
            engines: Default::default(),
            thread: OnceLock::new(),
        }))
    }

    /// A long-lived embedder that makes a sandbox per request (or a test suite) must
    /// not grow the ticker's list by one dead entry each time.
    #[test]
    fn dropped_engines_are_pruned_when_the_next_registers() {
        let ticker = fresh_ticker();
        let config = engine_config(
            EngineConfig {
                pooling: false,
                ..EngineConfig::default()
            },
            false,
        );
        let kept = Engine::new(&config).expect("engine");
        ticker.register(&kept);
        for _ in 0..10_000 {
            let engine = Engine::new(&config).expect("engine");
            ticker.register(&engine);
        }
        // The one still alive, and the last dropped (pruned by the next register).
        assert!(ticker.registered() <= 2, "{} weak engines kept", ticker.registered());
        // A live engine is never pruned: its epoch must keep advancing.
        let engine = Engine::new(&config).expect("engine");
        ticker.register(&engine);
        let alive = ticker.engines.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(alive.iter().filter(|w| w.upgrade().is_some()).count(), 2);
        assert!(alive
            .iter()
            .any(|w| w.upgrade().is_some_and(|e| Engine::same(&e, &kept))));
    }
}
