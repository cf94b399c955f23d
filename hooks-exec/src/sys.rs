//! The process, signal, descriptor and spawn calls this crate makes (all of its libc
//! calls), each behind a small wrapper that is safe to call, with the reason it is sound
//! beside its `unsafe` block. Where rustix or std has a safe call that makes the same
//! system call, it is used instead. A failure comes back as the `io::Error` of its
//! errno, read at once, before anything else can overwrite it. (Reading `/proc` is plain
//! std file I/O and stays where it is used.)
//!
//! None of this runs between fork and exec: the child is set up by glibc's
//! `posix_spawn` (in a `CLONE_VM | CLONE_VFORK` child) from the attributes and file
//! actions recorded by [`SpawnConfig`], and no code of this crate runs in it.
//!
//! A pid is a number, not a handle: these wrappers cannot make a signal or a wait reach
//! the right process (a reaped pid may name another one), which is for their callers to
//! get right (see `child.rs` and `tree.rs`); they only guarantee that the call touches no
//! memory but what it is given.

use std::ffi::{CStr, CString};
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::ptr;

use libc::{c_int, pid_t};

// Descriptors.

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
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

/// This process's process group.
pub(crate) fn getpgrp() -> pid_t {
    rustix::process::getpgrp().as_raw_pid()
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

// posix_spawn.

/// A null-terminated array of pointers to the NUL-terminated strings it borrows, as
/// `argv` and `envp` are passed to exec.
pub(crate) struct CStrArray<'a> {
    ptrs: Vec<*mut libc::c_char>,
    _strings: PhantomData<&'a CStr>,
}

impl<'a> CStrArray<'a> {
    pub(crate) fn new(strings: &'a [CString]) -> Self {
        let mut ptrs: Vec<*mut libc::c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
        ptrs.push(ptr::null_mut());
        CStrArray {
            ptrs,
            _strings: PhantomData,
        }
    }
}

/// Room for the spawn attributes and the file actions of one spawn. They are built in
/// place by the [`SpawnConfig`] that borrows it, so they never move once initialised.
pub(crate) struct SpawnStorage {
    attr: MaybeUninit<libc::posix_spawnattr_t>,
    actions: MaybeUninit<libc::posix_spawn_file_actions_t>,
}

impl SpawnStorage {
    pub(crate) fn new() -> Self {
        SpawnStorage {
            attr: MaybeUninit::uninit(),
            actions: MaybeUninit::uninit(),
        }
    }

    /// The attributes and file actions of a spawn, built here. Each object is
    /// initialised when first used and destroyed when the config is dropped.
    pub(crate) fn config(&mut self) -> SpawnConfig<'_> {
        SpawnConfig {
            attr: &mut self.attr,
            actions: &mut self.actions,
            attr_init: false,
            actions_init: false,
        }
    }
}

/// `posix_spawn`'s attributes and file actions, recorded for [`SpawnConfig::spawn`].
pub(crate) struct SpawnConfig<'s> {
    attr: &'s mut MaybeUninit<libc::posix_spawnattr_t>,
    actions: &'s mut MaybeUninit<libc::posix_spawn_file_actions_t>,
    /// Whether `attr` holds an object that `posix_spawnattr_init` made, not destroyed yet.
    attr_init: bool,
    /// The same for `actions`.
    actions_init: bool,
}

/// The posix_spawn functions return the error number instead of setting errno.
fn check(ret: c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

impl SpawnConfig<'_> {
    fn actions(&mut self) -> io::Result<*mut libc::posix_spawn_file_actions_t> {
        if !self.actions_init {
            // SAFETY: `actions` is storage we hold exclusively (borrowed for as long as
            // this config lives, so it stays in place), that init makes an object in.
            check(unsafe { libc::posix_spawn_file_actions_init(self.actions.as_mut_ptr()) })?;
            self.actions_init = true;
        }
        Ok(self.actions.as_mut_ptr())
    }

    fn attr(&mut self) -> io::Result<*mut libc::posix_spawnattr_t> {
        if !self.attr_init {
            // SAFETY: as for the file actions: our own storage, which does not move.
            check(unsafe { libc::posix_spawnattr_init(self.attr.as_mut_ptr()) })?;
            self.attr_init = true;
        }
        Ok(self.attr.as_mut_ptr())
    }

    /// In the child, `dup2(fd, target)`. `fd` must still be open when [`Self::spawn`]
    /// runs (or the spawn fails with EBADF): only its number is recorded.
    pub(crate) fn add_dup2(&mut self, fd: BorrowedFd<'_>, target: c_int) -> io::Result<()> {
        let actions = self.actions()?;
        // SAFETY: `actions` points to an initialised file actions object (see
        // `actions`), to which the call only appends an entry holding two numbers.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(actions, fd.as_raw_fd(), target) })
    }

    /// In the child, `open(path, oflag, mode)` as `target`.
    pub(crate) fn add_open(
        &mut self,
        target: c_int,
        path: &'static CStr,
        oflag: c_int,
        mode: libc::mode_t,
    ) -> io::Result<()> {
        let actions = self.actions()?;
        // SAFETY: an initialised file actions object, as in `add_dup2`; `path` is
        // NUL-terminated and static, so it outlives the object even where the C
        // library records the pointer rather than a copy (glibc copies it).
        check(unsafe { libc::posix_spawn_file_actions_addopen(actions, target, path.as_ptr(), oflag, mode) })
    }

    /// In the child, closes every descriptor from `from` up.
    pub(crate) fn add_closefrom(&mut self, from: c_int) -> io::Result<()> {
        let actions = self.actions()?;
        // SAFETY: an initialised file actions object, as in `add_dup2`; one number.
        check(unsafe { libc::posix_spawn_file_actions_addclosefrom_np(actions, from) })
    }

    /// The child's signal mask is empty (with `POSIX_SPAWN_SETSIGMASK`).
    pub(crate) fn set_sigmask_empty(&mut self) -> io::Result<()> {
        let attr = self.attr()?;
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the whole local set before setsigmask reads
        // (copies) it into `attr`, an initialised attributes object (see `attr`).
        check(unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::posix_spawnattr_setsigmask(attr, set.as_ptr())
        })
    }

    /// Every signal goes back to its default action in the child (with
    /// `POSIX_SPAWN_SETSIGDEF`).
    pub(crate) fn set_sigdefault_all(&mut self) -> io::Result<()> {
        let attr = self.attr()?;
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: as in `set_sigmask_empty`, with the full set from sigfillset.
        check(unsafe {
            libc::sigfillset(set.as_mut_ptr());
            libc::posix_spawnattr_setsigdefault(attr, set.as_ptr())
        })
    }

    /// The child's process group (with `POSIX_SPAWN_SETPGROUP`; 0: a new one it leads).
    pub(crate) fn set_pgroup(&mut self, pgroup: pid_t) -> io::Result<()> {
        let attr = self.attr()?;
        // SAFETY: an initialised attributes object (see `attr`), given one number.
        check(unsafe { libc::posix_spawnattr_setpgroup(attr, pgroup) })
    }

    /// Which of the attributes apply (`POSIX_SPAWN_*`).
    pub(crate) fn set_flags(&mut self, flags: c_int) -> io::Result<()> {
        let attr = self.attr()?;
        // SAFETY: an initialised attributes object (see `attr`), given one number.
        check(unsafe { libc::posix_spawnattr_setflags(attr, flags as libc::c_short) })
    }

    /// `posix_spawn(program, argv, envp)` with what was recorded: the child's pid, or the
    /// error number. glibc reports a failed exec here too (and reaps that child itself).
    pub(crate) fn spawn(&mut self, program: &CStr, argv: &CStrArray<'_>, envp: &CStrArray<'_>) -> Result<pid_t, c_int> {
        let actions = if self.actions_init {
            self.actions.as_ptr()
        } else {
            ptr::null()
        };
        let attr = if self.attr_init {
            self.attr.as_ptr()
        } else {
            ptr::null()
        };
        let mut pid: pid_t = 0;
        // SAFETY: `pid` is a live local, the only memory written. `program` is
        // NUL-terminated; `actions` and `attr` are null (none) or objects initialised in
        // storage this config borrows; `argv` and `envp` are null-terminated arrays of
        // pointers to NUL-terminated strings, all borrowed until this returns. The child
        // shares our memory (CLONE_VM) but we are suspended (CLONE_VFORK) until it has
        // exec'd or failed, so all of this is alive while it reads it, and it runs only
        // glibc's code, never ours.
        let ret = unsafe {
            libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                actions,
                attr,
                argv.ptrs.as_ptr(),
                envp.ptrs.as_ptr(),
            )
        };
        if ret != 0 {
            return Err(ret);
        }
        Ok(pid)
    }
}

impl Drop for SpawnConfig<'_> {
    fn drop(&mut self) {
        if self.attr_init {
            // SAFETY: initialised by `attr` and not destroyed yet (the flag says so); it is
            // destroyed once, here, and not used after.
            unsafe { libc::posix_spawnattr_destroy(self.attr.as_mut_ptr()) };
        }
        if self.actions_init {
            // SAFETY: as above, for the file actions.
            unsafe { libc::posix_spawn_file_actions_destroy(self.actions.as_mut_ptr()) };
        }
    }
}
