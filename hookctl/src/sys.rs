//! The libc calls `hookctl` makes itself, each behind a small wrapper, with the reason
//! it is sound beside its `unsafe` block: the crash handler's (`crash.rs`; each of
//! those is async-signal-safe: a single system call, no allocation, no lock) and the
//! local time for `hookctl log`.

// The signal functions are for the crash handler, built with the dylib backend only.
#![cfg_attr(not(feature = "dylib"), allow(dead_code))]

use std::os::fd::BorrowedFd;

use libc::c_int;

/// A signal's disposition as [`set_handler`] found it, to put back with
/// [`SavedAction::restore`].
pub(crate) struct SavedAction {
    sig: c_int,
    action: libc::sigaction,
}

/// Installs `handler` for `sig` with `sa_flags` set to `flags` and an empty `sa_mask`,
/// and returns the disposition it replaced. If `sigaction` fails (it cannot for a valid
/// signal number), nothing is installed and the one returned is the default (`SIG_DFL`).
///
/// # Safety
/// `handler` runs in the middle of whatever the thread that gets `sig` is doing, so it
/// must be async-signal-safe: no allocation, no lock, only async-signal-safe calls. And
/// `flags` must not hold `SA_SIGINFO`: `handler` takes the signal number alone.
pub(crate) unsafe fn set_handler(sig: c_int, handler: extern "C" fn(c_int), flags: c_int) -> SavedAction {
    // SAFETY: sigaction is a plain C struct of an integer (the handler address), a
    // signal set, flags and a nullable function pointer: all zeroes is a valid value,
    // SIG_DFL with no flags.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler as *const () as libc::sighandler_t;
    new.sa_flags = flags;
    // SAFETY: `new.sa_mask` is a live local set, which sigemptyset initialises.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: as for `new`: all zeroes is SIG_DFL, kept if sigaction fails.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `new` is read and `old` written, both live locals. What `new` installs is
    // sound by this function's contract: an async-signal-safe handler of the signal
    // number alone, which is how the kernel calls it without SA_SIGINFO.
    unsafe { libc::sigaction(sig, &new, &mut old) };
    SavedAction { sig, action: old }
}

/// The disposition in force for `sig`, changing nothing. Async-signal-safe.
pub(crate) fn current_action(sig: c_int) -> SavedAction {
    // SAFETY: as in `set_handler`: all zeroes is SIG_DFL, kept if sigaction fails.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action makes sigaction only report the current one into `old`,
    // a live local.
    unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    SavedAction { sig, action: old }
}

impl SavedAction {
    /// Puts the saved disposition back for its signal. Async-signal-safe.
    pub(crate) fn restore(&self) {
        // SAFETY: `self.action` is only read, and is what sigaction reported for
        // `self.sig` (or SIG_DFL): the disposition that was in force before
        // `set_handler`, so this installs nothing that was not already installed for
        // that signal, with its own flags and mask. sigaction is async-signal-safe.
        unsafe { libc::sigaction(self.sig, &self.action, std::ptr::null_mut()) };
    }
}

/// Descriptor 2, standard error, whatever it is.
pub(crate) fn stderr() -> BorrowedFd<'static> {
    // SAFETY: descriptor 2 is open for the whole life of the process: hookctl never
    // closes it (std's own `Stderr` assumes the same), so the borrow can be 'static.
    unsafe { BorrowedFd::borrow_raw(libc::STDERR_FILENO) }
}

/// One `write(2)` of `buf` to `fd`. A short or failed write is ignored: a crash report
/// has nowhere to report its own failure.
pub(crate) fn write_once(fd: BorrowedFd<'_>, buf: &[u8]) {
    let _ = rustix::io::write(fd, buf);
}

/// The local calendar time of `secs` since the epoch (`localtime_r`), `None` when libc
/// cannot represent it.
pub(crate) fn local_tm(secs: libc::time_t) -> Option<libc::tm> {
    // SAFETY: `tm` is a plain C struct of integers and one pointer, for which all zeroes
    // is a valid value (the pointer null).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live, properly aligned values of the right types, and
    // localtime_r writes only to `tm`. It reads the environment (`TZ`), which nothing in
    // hookctl changes.
    let result = unsafe { libc::localtime_r(&secs, &mut tm) };
    (!result.is_null()).then_some(tm)
}
