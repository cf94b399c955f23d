//! Cancelling calls and waiting for their end: [`Cancel`].

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Cancels the hook calls of [`Registry::fire_until`](crate::Registry::fire_until) and of
/// [`Lifecycle::cancel_with`](crate::Lifecycle::cancel_with) sequences, so that the caller
/// can await their end: unlike dropping a call's future, which stops the hook but does
/// not wait for it, a call cancelled this way returns only once the hook has stopped (an
/// exec hook's processes killed and reaped, a WASM call interrupted), and the report
/// says what ran.
///
/// Cloning shares it; [`Cancel::cancel`] may come from any thread or task.
///
/// ```
/// use virt_hooks_core::Cancel;
/// let cancel = Cancel::new();
/// let other = cancel.clone();
/// std::thread::spawn(move || other.cancel()).join().unwrap();
/// assert!(cancel.is_cancelled());
/// virt_hooks_core::block_on(cancel.cancelled()); // returns at once now
/// ```
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    next_id: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// Who is told when it is cancelled.
#[derive(Default)]
struct Waiting {
    wakers: Vec<(u64, Waker)>,
    /// Write ends of the pipes handed out by [`Cancel::watch`]: dropped (a hang-up for
    /// their readers) at the cancel.
    pipes: Vec<(u64, OwnedFd)>,
    /// What [`Cancel::on_cancel`] registered.
    callbacks: Vec<(u64, Box<dyn FnOnce() + Send>)>,
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// A handle not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cancels every call made with it, now and later. Calls already running stop and
    /// report [`HookError::Cancelled`](crate::HookError::Cancelled); hooks not started
    /// are not run.
    pub fn cancel(&self) {
        if self.inner.cancelled.swap(true, Ordering::SeqCst) {
            return;
        }
        let Waiting {
            wakers,
            pipes,
            callbacks,
        } = std::mem::take(&mut *self.waiting());
        drop(pipes);
        for (_, callback) in callbacks {
            callback();
        }
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Completes when it is cancelled.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled { cancel: self, id: None }
    }

    /// For a backend whose hook runs where no future is polled (a blocking wait): a
    /// descriptor that hangs up (`POLLHUP`) when this is cancelled, and a guard that
    /// gives up watching when dropped. Already cancelled: it has hung up.
    ///
    /// # Errors
    /// When no pipe can be made (out of descriptors).
    pub fn watch(&self) -> io::Result<(OwnedFd, Watch)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self.waiting();
        // Checked under the lock `cancel` takes: a cancel cannot slip in between.
        if !self.is_cancelled() {
            waiting.pipes.push((id, write));
        }
        drop(waiting);
        Ok((
            read,
            Watch {
                cancel: self.clone(),
                id,
            },
        ))
    }
}

impl Cancel {
    /// For a backend: runs `callback` at the cancel (on the cancelling thread; at once
    /// when already cancelled), unless the returned guard was dropped first. The callback
    /// must be quick: drop a sender, set a flag.
    pub fn on_cancel(&self, callback: impl FnOnce() + Send + 'static) -> Watch {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self.waiting();
        if self.is_cancelled() {
            drop(waiting);
            callback();
        } else {
            waiting.callbacks.push((id, Box::new(callback)));
        }
        Watch {
            cancel: self.clone(),
            id,
        }
    }
}

/// Given by [`Cancel::watch`] and [`Cancel::on_cancel`]: dropping it stops watching (its
/// pipe is closed, its callback forgotten).
#[must_use = "dropping it stops the watch at once"]
pub struct Watch {
    cancel: Cancel,
    id: u64,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("id", &self.id).finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let id = self.id;
        let mut waiting = self.cancel.waiting();
        waiting.pipes.retain(|(i, _)| *i != id);
        // Not run under the lock: a callback's drop may take others.
        let gone: Vec<_> = waiting.callbacks.extract_if(.., |(i, _)| *i == id).collect();
        drop(waiting);
        drop(gone);
    }
}

/// The future of [`Cancel::cancelled`].
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    cancel: &'a Cancel,
    id: Option<u64>,
}

impl fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancelled").field("cancel", self.cancel).finish()
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(());
        }
        let cancel = self.cancel;
        let id = *self
            .id
            .get_or_insert_with(|| cancel.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let mut waiting = self.cancel.waiting();
        if self.cancel.is_cancelled() {
            return Poll::Ready(());
        }
        match waiting.wakers.iter_mut().find(|(i, _)| *i == id) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => waiting.wakers.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.cancel.waiting().wakers.retain(|(i, _)| *i != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_hangs_up_at_the_cancel_and_not_before() {
        let cancel = Cancel::new();
        let (fd, _watch) = cancel.watch().unwrap();
        let mut poll = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        assert_eq!(
            rustix::event::poll(&mut poll, Some(&rustix::event::Timespec::default())).unwrap(),
            0
        );
        cancel.cancel();
        let mut poll = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        assert_eq!(rustix::event::poll(&mut poll, None).unwrap(), 1);
        // Watching after the cancel: hung up already.
        let (late, _w) = cancel.watch().unwrap();
        let mut poll = [rustix::event::PollFd::new(&late, rustix::event::PollFlags::IN)];
        assert_eq!(rustix::event::poll(&mut poll, None).unwrap(), 1);
    }

    #[test]
    fn dropped_watches_and_waiters_leave_nothing_behind() {
        let cancel = Cancel::new();
        for _ in 0..1000 {
            let (_fd, _watch) = cancel.watch().unwrap();
            let mut fut = std::pin::pin!(cancel.cancelled());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        drop(cancel.on_cancel(|| panic!("forgotten callbacks never run")));
        let waiting = cancel.waiting();
        assert!(waiting.pipes.is_empty() && waiting.wakers.is_empty() && waiting.callbacks.is_empty());
        drop(waiting);
        cancel.cancel();
    }

    #[test]
    fn a_waiter_on_another_thread_wakes_at_the_cancel() {
        let cancel = Cancel::new();
        let other = cancel.clone();
        let waiter = std::thread::spawn(move || crate::block_on(other.cancelled()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        cancel.cancel();
        waiter.join().unwrap();
    }
}
