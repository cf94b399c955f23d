//! The tokio runtime that drives every call. Its timer is what ends a module that
//! waits in a host call (a WASI sleep, `poll_oneoff`), which epoch interruption cannot
//! reach; dropping the call's future cancels that wait.
//!
//! It is this crate's own runtime, not the caller's: a call runs the same whether it
//! comes from `Registry::fire_blocking` (no runtime) or from a `spawn_blocking` thread
//! of an embedder's runtime (whose timer may not be enabled). The module runs on the
//! calling thread; the runtime's one worker only fires timers.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

fn runtime() -> Result<&'static Runtime, &'static str> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("wasm-hook-timer")
                .enable_time()
                .build()
                .map_err(|e| format!("cannot start the WASM timer runtime: {e}"))
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Runs `fut` to completion on this thread, with this crate's runtime (and its timer)
/// as the ambient one.
///
/// Must not be called from inside an async task (tokio panics); callers in a runtime
/// go through `spawn_blocking` first.
pub(crate) fn block_on<F: Future>(fut: F) -> Result<F::Output, &'static str> {
    Ok(runtime()?.handle().block_on(fut))
}
