//! The process, signal, descriptor and spawn calls this crate makes (all of its libc
//! calls), each behind a small wrapper that is safe to call, with the reason it is sound
//! beside its `unsafe` block. Where rustix or std has a safe call that makes the same
//! system call, it is used instead. A failure comes back as the `io::Error` of its
//! errno, read at once, before anything else can overwrite it. (Reading `/proc` is plain
//! std file I/O and stays where it is used.)
//!
//! None of this runs between clone and exec or in the per-hook helper: the code that
//! does (`launch.rs`, `helper.rs`) uses the calls of `raw.rs`, which allocate nothing.
//!
//! A pid is a number, not a handle: these wrappers cannot make a signal or a wait reach
//! the right process (a reaped pid may name another one), which is for their callers to
//! get right (see `child.rs` and `tree.rs`); they only guarantee that the call touches no
//! memory but what it is given.

use std::ffi::{CStr, CString};
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr;

use libc::{c_int, pid_t};

// Descriptors.

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// [`pipe`], both ends numbered 3 or more: a caller that closed its stdin (or stdout)
/// gets a pipe there, which the child's setup would overwrite before using it.
pub(crate) fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec: each send is one
/// record, read whole or not at all.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as c_int; 2];
    // SAFETY: the kernel writes two descriptor numbers into `fds`, a live local array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors that nothing else owns.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(pair.0)?, above_stdio(pair.1)?))
}

/// One `send(2)` of `data` as a record, never raising SIGPIPE (`MSG_NOSIGNAL`).
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel reads `data.len()` bytes from `data`.
    let r = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recv(2)` of a record into `buf`, without waiting if `wait` is false: its length,
/// 0 at end of file (the peer is gone).
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], wait: bool) -> io::Result<usize> {
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Sets `O_NONBLOCK` on `fd` (`F_GETFL`, then `F_SETFL`).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// One `read(2)` into `buf`: how many bytes, 0 at end of file.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// One `write(2)` from `buf`: how many bytes were taken.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

/// `poll(2)` on `fds` for up to `timeout_ms` milliseconds (-1: no limit): how many
/// entries have events. An entry whose `fd` is negative is skipped, as poll does.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> io::Result<usize> {
    // SAFETY: `fds` is an exclusively borrowed, initialised array of exactly
    // `fds.len()` pollfd, and poll writes nothing but their `revents`. The descriptors
    // in it are only numbers to poll: none is read, written or closed.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Whether this process may execute `path` (`access(2)` with `X_OK`, as the real uid).
pub(crate) fn can_execute(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
}

// Processes.

/// This process's pid.
pub(crate) fn getpid() -> pid_t {
    std::process::id() as pid_t
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub(crate) fn set_child_subreaper() -> io::Result<()> {
    // rustix passes the pid as the flag: 1, as before.
    Ok(rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(1))?)
}

/// `prctl(PR_GET_CHILD_SUBREAPER)`: whether this process is a child subreaper.
pub(crate) fn is_child_subreaper() -> bool {
    matches!(rustix::process::child_subreaper(), Ok(Some(_)))
}

/// Whether the kernel reaps this process's children as they exit (SIGCHLD set to
/// `SIG_IGN`, or `SA_NOCLDWAIT`): a child's exit status is then lost to its parent.
pub(crate) fn children_reaped_by_kernel() -> bool {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`, a live local.
    if unsafe { libc::sigaction(libc::SIGCHLD, ptr::null(), &mut old) } != 0 {
        return false;
    }
    old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0
}

/// Why hooks in this process cannot be its children, if they cannot: for the records.
pub(crate) const CHILDREN_REAPED_BY_KERNEL: &str =
    "this process ignores SIGCHLD (SIG_IGN or SA_NOCLDWAIT), so the kernel would reap a hook that is its \
     child before its exit status could be read";

/// This process's effective uid.
pub(crate) fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `fork(2)`: 0 in the child, the child's pid in the parent.
///
/// # Safety
/// This process may have other threads, which the child does not have: until it execs
/// or exits, the child must run only code that allocates nothing and takes no lock (the
/// calls of `raw.rs`), and must never return into the caller's code.
pub(crate) unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller keeps the child to async-signal-safe code (see above).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// `pidfd_open(2)`: a descriptor that refers to the process `pid` (> 0) for as long as
/// it is held, whatever becomes of the number.
pub(crate) fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // pidfd_open(0) fails with EINVAL; rustix has no Pid for 0.
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?)
}

/// `kill(2)`: `sig` to the process `pid` (> 0) or to the process group `-pid` (< 0);
/// signal 0 only checks that it exists.
pub(crate) fn kill(pid: pid_t, sig: c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and no pointer: it cannot touch this process's
    // memory. (Which process the number names is the caller's business.)
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pidfd_send_signal(2)`: `sig` to the process `pidfd` refers to, never to another one
/// that got its pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: c_int) -> io::Result<()> {
    // SAFETY: the raw syscall with the arguments the kernel expects: a pidfd borrowed for
    // the call, a signal number, a null siginfo (allowed: the kernel then fills one in
    // as for kill) and no flags. It reads and writes none of our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `waitpid(2)` for the child `pid` (> 0) with `options` (0 or `WNOHANG`): its raw wait
/// status once it is reaped, `None` while it runs (`WNOHANG` only).
pub(crate) fn waitpid(pid: pid_t, options: c_int) -> io::Result<Option<c_int>> {
    let mut status: c_int = 0;
    // SAFETY: `status` is a live local int, the only memory waitpid writes.
    let r = unsafe { libc::waitpid(pid, &mut status, options) };
    match r {
        0 => Ok(None),
        r if r > 0 => Ok(Some(status)),
        _ => Err(io::Error::last_os_error()),
    }
}

/// What [`waitid`] waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WaitId<'a> {
    /// `P_PID`: the child with this pid.
    Pid(pid_t),
    /// `P_PIDFD`: the child this pidfd refers to.
    PidFd(BorrowedFd<'a>),
}

/// `waitid(2)` with `options` (`WEXITED` with `WNOHANG`, `WNOWAIT`, ...): the pid of the
/// child that changed state, 0 if none did (`WNOHANG`).
pub(crate) fn waitid(id: WaitId<'_>, options: c_int) -> io::Result<pid_t> {
    let (idtype, id) = match id {
        WaitId::Pid(pid) => (libc::P_PID, pid as libc::id_t),
        WaitId::PidFd(fd) => (libc::P_PIDFD, fd.as_raw_fd() as libc::id_t),
    };
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `info` is a live local siginfo_t, all zeroes (a valid value of this plain C
    // struct), and the only memory waitid writes; a pidfd is borrowed for the call.
    if unsafe { libc::waitid(idtype, id, info.as_mut_ptr(), options) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then at most overwritten by the kernel with a SIGCHLD siginfo, so
    // initialised, and si_pid is the field of that siginfo's union that the kernel sets
    // for SIGCHLD; it stays 0 when no child changed state (WNOHANG), as it was zeroed.
    Ok(unsafe { info.assume_init_ref().si_pid() })
}

// Signals.

/// A signal mask, as [`block_sigpipe`] found it.
pub(crate) struct SigMask(libc::sigset_t);

fn sigpipe_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole local set (it cannot fail for a valid
    // pointer), before assume_init reads it; sigaddset then only writes inside it, and
    // SIGPIPE is a valid signal number.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGPIPE);
        set.assume_init()
    }
}

/// Blocks SIGPIPE in the calling thread (`pthread_sigmask(SIG_BLOCK)`); the mask as it
/// was, for [`set_thread_sigmask`].
pub(crate) fn block_sigpipe() -> SigMask {
    let set = sigpipe_set();
    // SAFETY: an all-zero sigset_t (an array of integers) is a valid, empty set; it is
    // kept if the call fails, as it cannot with these arguments.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is read and `old` written, both live locals; the mask is this
    // thread's, and blocking a signal cannot break any other code's assumptions.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    SigMask(old)
}

/// Sets the calling thread's signal mask to `mask` (`pthread_sigmask(SIG_SETMASK)`).
pub(crate) fn set_thread_sigmask(mask: &SigMask) {
    // SAFETY: `mask.0` is an initialised set that is only read; the old mask is not
    // asked for (null). It changes this thread's mask only, back to one it had.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, ptr::null_mut()) };
}

/// Takes every SIGPIPE pending for the calling thread (or the process) without waiting
/// (`sigtimedwait` with a zero timeout), so that none is delivered once it is unblocked.
pub(crate) fn take_pending_sigpipe() {
    let set = sigpipe_set();
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `set` and `zero` are live locals that are only read; the siginfo is not
    // asked for (null). A zero timeout never blocks.
    while unsafe { libc::sigtimedwait(&set, ptr::null_mut(), &zero) } == libc::SIGPIPE {}
}

// Arguments for exec.

/// A null-terminated array of pointers to the NUL-terminated strings it borrows, as
/// `argv` and `envp` are passed to exec.
pub(crate) struct CStrArray<'a> {
    ptrs: Vec<*const libc::c_char>,
    _strings: PhantomData<&'a CStr>,
}

impl<'a> CStrArray<'a> {
    pub(crate) fn new(strings: &'a [CString]) -> Self {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(ptr::null());
        CStrArray {
            ptrs,
            _strings: PhantomData,
        }
    }

    /// The array, for `execve`: valid while this (and so the strings) lives.
    pub(crate) fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}
