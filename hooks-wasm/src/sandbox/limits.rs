//! What holds a call: the memory and table cap, the deadline and cancellation around
//! it, and how its end is reported.

use super::*;

/// Most table elements a store may hold, all tables together (8 bytes each).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The memory cap for all of a store's memories together: with multi-memory, a cap
/// per memory would give a module with N memories N times the cap.
pub(super) struct MemoryCap {
    cap: usize,
    /// Bytes granted so far, all memories together. A growth that wasmtime then fails
    /// stays counted (the limiter is not told which memory failed): the cap can only
    /// get stricter.
    memory: usize,
    table_elements: usize,
    pub(super) refused: Option<usize>,
}

impl MemoryCap {
    pub(super) fn new(cap: usize) -> Self {
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

/// How a call ended, seen from outside the module.
pub(super) enum Ended<T> {
    Returned(T),
    TimedOut,
    Abandoned,
}

/// Runs `call` until it finishes, `deadline` passes, or `cancel`'s sender is dropped;
/// then drops it, which also cancels a host call it waits in. Must run inside
/// [`runtime::block_on`] (the deadline is a tokio timer).
pub(super) async fn bounded<F: Future>(
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

pub(super) fn classify(e: &wasmtime::Error, refused: Option<usize>, limits: CallLimits) -> HookStatus {
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
}
