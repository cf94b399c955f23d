//! Layers: wrappers the registry puts around every hook it runs, in the spirit of
//! tower's `Layer`.
//!
//! The registry's own limits are [`Timeout`] and [`OutputCap`], applied around every
//! call outside whatever an embedder adds with
//! [`RegistryBuilder::layer`](crate::RegistryBuilder::layer) (metrics, tracing, retries),
//! so they bound it too. The registry runs their code inline in `fire`, which saves a
//! wrapper and an allocation per call; the types are here to compose elsewhere.
//! Embedders' layers wrap a hook once, when the registry is built or a file is loaded,
//! not on every call.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use virt_hooks_core::{layer, Driver, RegistryBuilder, testing::MockHook};
//! use virt_hooks_core::events::DaemonEvent;
//!
//! static CALLS: AtomicUsize = AtomicUsize::new(0);
//! let counting = layer::from_fn(|hook, inv| async move {
//!     CALLS.fetch_add(1, Ordering::Relaxed);
//!     hook.call(&inv).await
//! });
//! let registry = RegistryBuilder::new()
//!     .hook(Driver::Daemon, MockHook::succeeding("a"))
//!     .layer(counting)
//!     .build();
//! registry.fire_blocking(&DaemonEvent::Start).unwrap();
//! assert_eq!(CALLS.load(Ordering::Relaxed), 1);
//! ```

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Hook, HookOutcome, HookStatus, Invocation};

/// Wraps a hook in another: the registry calls the result instead.
///
/// A layer wraps the call only: which events the hook takes and whether its failure
/// counts are its [`HookEntry`](crate::HookEntry)'s, which no layer sees. A wrapper
/// should forward `name`, `backend`, `path` and `stop_grace` (the hook's identity in
/// reports, and how long it takes to stop at its timeout); [`from_fn`] does.
pub trait Layer: Send + Sync + 'static {
    /// Wraps `hook`.
    fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook>;
}

impl<L: Layer + ?Sized> Layer for Arc<L> {
    fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        (**self).layer(hook)
    }
}

/// A layer made of an async function that gets the hook and the invocation (owned, so
/// the future may keep them) and returns the outcome. Calling `hook.call(&inv)` runs
/// the wrapped hook; not calling it skips the hook.
pub fn from_fn<F, Fut>(f: F) -> FnLayer<F>
where
    F: Fn(Arc<dyn Hook>, Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookOutcome> + Send + 'static,
{
    FnLayer { f: Arc::new(f) }
}

/// The layer [`from_fn`] makes.
pub struct FnLayer<F> {
    f: Arc<F>,
}

impl<F> fmt::Debug for FnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnLayer")
    }
}

impl<F, Fut> Layer for FnLayer<F>
where
    F: Fn(Arc<dyn Hook>, Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookOutcome> + Send + 'static,
{
    fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        Arc::new(FnHook {
            inner: hook,
            f: Arc::clone(&self.f),
        })
    }
}

struct FnHook<F> {
    inner: Arc<dyn Hook>,
    f: Arc<F>,
}

/// Forwards everything but `call` to `self.inner`.
macro_rules! forward_identity {
    () => {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        fn path(&self) -> Option<&Path> {
            self.inner.path()
        }
        fn stop_grace(&self) -> Option<Duration> {
            self.inner.stop_grace()
        }
    };
}

#[async_trait]
impl<F, Fut> Hook for FnHook<F>
where
    F: Fn(Arc<dyn Hook>, Invocation) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HookOutcome> + Send + 'static,
{
    forward_identity!();

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        (self.f)(Arc::clone(&self.inner), inv.clone()).await
    }
}

/// The registry's time limit for every hook, [`Invocation::timeout`]:
/// - a hook that does not enforce it itself ([`Hook::stop_grace`] is `None`, as for
///   custom hooks) is dropped at the limit, and one that finishes after it (it blocked
///   its thread past it) is recorded as timed out all the same, with its output;
/// - a backend that does (exec, WASM, dylib) is left [`Hook::stop_grace`] longer to stop
///   by itself and report what it did; only a call still running after that is dropped.
///
/// Either way the outcome is [`HookStatus::TimedOut`]. Dropping the future is what
/// stops a call, so a hook that blocks its thread without ever yielding runs until it
/// returns. The clock starts at the call's first poll.
///
/// Works without a runtime (through [`Registry::fire_blocking`](crate::Registry::fire_blocking))
/// and under any executor: the timer is a helper thread, started on the first call that
/// does not finish at its first poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeout;

impl Layer for Timeout {
    fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        Arc::new(TimeoutHook { inner: hook })
    }
}

struct TimeoutHook {
    inner: Arc<dyn Hook>,
}

#[async_trait]
impl Hook for TimeoutHook {
    forward_identity!();

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        timed(&*self.inner, inv).await
    }
}

/// A call of `hook` with its panics caught: a hook that panics is a hook that crashed.
pub(crate) fn caught<'a>(
    hook: &'a dyn Hook,
    inv: &'a Invocation,
) -> CatchPanic<Pin<Box<dyn Future<Output = HookOutcome> + Send + 'a>>> {
    CatchPanic(hook.call(inv))
}

/// What [`Timeout`] does, for a hook as it is: the registry runs this inline, with no
/// wrapper and no extra allocation per call.
pub(crate) async fn timed(hook: &dyn Hook, inv: &Invocation) -> HookOutcome {
    let Some(limit) = inv.timeout_with(None) else {
        return caught(hook, inv).await;
    };
    let grace = hook.stop_grace();
    let started = Instant::now();
    let finished = Deadline {
        call: caught(hook, inv),
        wait: limit.saturating_add(grace.unwrap_or_default()),
        timer: None,
    }
    .await;
    match finished {
        Some(mut out) => {
            let took = started.elapsed();
            if grace.is_none() && took > limit && !out.status.is_timeout() {
                out.status = HookStatus::TimedOut(limit);
                out.warnings.push(format!(
                    "finished after its timeout (it took {} without yielding)",
                    crate::report::format_duration(took)
                ));
            }
            out
        }
        None => {
            tracing::warn!(hook = hook.name(), limit = ?limit, "hook ran past its timeout; its call was dropped");
            let note = match grace {
                Some(grace) => format!(
                    "still running {} after its timeout; the registry dropped the call",
                    crate::report::format_duration(grace)
                ),
                None => "still running at its timeout; the registry dropped the call".to_owned(),
            };
            HookOutcome::new(HookStatus::TimedOut(limit))
                .with_warning(note)
                .with_duration(started.elapsed())
        }
    }
}

/// A call raced with `cancel`: at the cancel the hook gets its [`Hook::stop_grace`] to
/// stop and report itself (a backend that watches the cancel kills and reaps, then says
/// `Cancelled`); past it, or at once for a hook with no grace, the call is dropped and
/// recorded as cancelled.
pub(crate) async fn cancellable<F: Future<Output = HookOutcome>>(
    call: Pin<&mut F>,
    hook: &dyn Hook,
    cancel: &crate::Cancel,
) -> HookOutcome {
    let started = Instant::now();
    let mut race = CancelRace {
        call,
        cancelled: cancel.cancelled(),
        grace: hook.stop_grace().unwrap_or_default(),
        timer: None,
    };
    match std::future::poll_fn(|cx| race.poll(cx)).await {
        Some(out) => out,
        None => {
            tracing::warn!(
                hook = hook.name(),
                "cancelled hook did not stop within its grace; its call was dropped"
            );
            HookOutcome::failed(crate::HookError::Cancelled)
                .with_warning("cancelled: it did not stop within its stop grace, so the registry dropped the call")
                .with_duration(started.elapsed())
        }
    }
}

/// The state of [`cancellable`].
struct CancelRace<'a, 'c, F> {
    call: Pin<&'a mut F>,
    cancelled: crate::Cancelled<'c>,
    grace: Duration,
    /// Started at the cancel.
    timer: Option<futures_timer::Delay>,
}

impl<F: Future<Output = HookOutcome>> CancelRace<'_, '_, F> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<HookOutcome>> {
        if let Poll::Ready(out) = self.call.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if self.timer.is_none() {
            if Pin::new(&mut self.cancelled).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.grace.is_zero() {
                return Poll::Ready(None);
            }
            self.timer = Some(futures_timer::Delay::new(self.grace));
            // The hook may already have seen the cancel and finished.
            if let Poll::Ready(out) = self.call.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
        }
        match self.timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// [`Timeout`] when `timed_`, else the bare (panic-catching) call.
pub(crate) async fn maybe_timed(hook: &dyn Hook, inv: &Invocation, timed_: bool) -> HookOutcome {
    if timed_ {
        timed(hook, inv).await
    } else {
        caught(hook, inv).await
    }
}

/// A call's future with its panics caught and turned into [`HookStatus::Crashed`], so
/// the hooks after it, the driver's undo and the cleanup hooks still run.
pub(crate) struct CatchPanic<F>(F);

impl<F: Future<Output = HookOutcome> + Unpin> Future for CatchPanic<F> {
    type Output = HookOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HookOutcome> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic with no message".to_owned());
                Poll::Ready(HookOutcome::new(HookStatus::Crashed(format!("panicked: {why}"))))
            }
        }
    }
}

/// Polls `call` until it finishes or `limit` (plus the grace) has passed. The timer is
/// made only when the call does not finish at its first poll: most calls never pay for it.
struct Deadline<F> {
    call: F,
    wait: Duration,
    timer: Option<futures_timer::Delay>,
}

impl<F: Future<Output = HookOutcome> + Unpin> Future for Deadline<F> {
    type Output = Option<HookOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.call).poll(cx) {
            return Poll::Ready(Some(out));
        }
        let wait = this.wait;
        let timer = this.timer.get_or_insert_with(|| futures_timer::Delay::new(wait));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The registry's cap on what a hook's outcome may carry on each of stdout and stderr:
/// anything longer is cut, flagged as truncated (a cut filter document is never passed
/// on) and warned about. Backends cap while reading; this bounds every other hook.
#[derive(Debug, Clone, Copy)]
pub struct OutputCap(pub usize);

impl Layer for OutputCap {
    fn layer(&self, hook: Arc<dyn Hook>) -> Arc<dyn Hook> {
        Arc::new(CappedHook {
            inner: hook,
            cap: self.0,
        })
    }
}

struct CappedHook {
    inner: Arc<dyn Hook>,
    cap: usize,
}

#[async_trait]
impl Hook for CappedHook {
    forward_identity!();

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let mut out = self.inner.call(inv).await;
        apply_cap(&mut out, self.cap);
        out
    }
}

pub(crate) fn apply_cap(out: &mut HookOutcome, cap: usize) {
    if out.stdout.len() > cap {
        cut(&mut out.stdout, cap);
        out.stdout_truncated = true;
    }
    if out.stderr.len() > cap {
        cut(&mut out.stderr, cap);
        out.stderr_truncated = true;
    }
}

/// Cuts `bytes` to at most `cap`, backing off to the start of a UTF-8 character the cut
/// would split (text stays text; other bytes are cut where they are).
fn cut(bytes: &mut Vec<u8>, cap: usize) {
    let mut end = cap;
    // A continuation byte (10xxxxxx) at the cut: back off to its character's start.
    while end > 0 && cap - end < 3 && bytes[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    bytes.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockHook;
    use crate::{Driver, EventArgs};

    fn inv(timeout: Option<Duration>) -> Invocation {
        Invocation::new(Driver::Daemon, EventArgs::new(["-", "start", "-", "start"]), None).with_timeout(timeout)
    }

    #[test]
    fn a_hanging_hook_is_dropped_after_its_timeout_without_a_runtime() {
        let hung = Timeout.layer(Arc::new(MockHook::from_fn("hung", |_| std::future::pending())));
        let started = std::time::Instant::now();
        let out = crate::registry::block_on(hung.call(&inv(Some(Duration::from_millis(50)))));
        assert!(out.status.is_timeout(), "{:?}", out.status);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(out.warnings[0].contains("dropped"), "{:?}", out.warnings);
    }

    #[test]
    fn no_timeout_means_no_limit_and_a_quick_hook_is_untouched() {
        let quick = Timeout.layer(Arc::new(MockHook::succeeding("quick")));
        assert!(crate::registry::block_on(quick.call(&inv(None))).status.is_success());
        assert!(
            crate::registry::block_on(quick.call(&inv(Some(Duration::from_millis(1)))))
                .status
                .is_success()
        );
    }

    #[test]
    fn a_cut_does_not_split_a_character() {
        let mut text = "aé".as_bytes().to_vec(); // é is two bytes
        cut(&mut text, 2);
        assert_eq!(text, b"a");
        let mut binary = vec![0xff, 0x80, 0x80, 0x80, 0x80, 0x80];
        cut(&mut binary, 5);
        assert_eq!(binary.len(), 2, "at most three bytes back");
    }

    #[test]
    fn a_custom_hook_that_blocks_past_its_timeout_is_timed_out_all_the_same() {
        let blocking = Timeout.layer(Arc::new(MockHook::always("blocks", || {
            std::thread::sleep(Duration::from_millis(60));
            HookOutcome::success().with_stderr("late\n")
        })));
        let out = crate::registry::block_on(blocking.call(&inv(Some(Duration::from_millis(20)))));
        assert!(out.status.is_timeout(), "{:?}", out.status);
        assert_eq!(out.stderr, b"late\n", "its output is kept");
    }

    #[test]
    fn output_is_cut_at_the_cap() {
        let loud = OutputCap(4).layer(Arc::new(MockHook::always("loud", || {
            HookOutcome::success().with_stdout("123456").with_stderr("ab")
        })));
        let out = crate::registry::block_on(loud.call(&inv(None)));
        assert_eq!(out.stdout, b"1234");
        assert!(out.stdout_truncated);
        assert_eq!(out.stderr, b"ab");
        assert!(!out.stderr_truncated);
    }
}
