//! `posix_spawn` with libvirt's child setup: every signal back to its default, an empty
//! signal mask, every fd >= 3 closed, stdio on pipes (or /dev/null), optionally a new
//! process group. std's `Command` would need a `pre_exec` closure for this, which makes
//! it fall back to a plain `fork` of the whole (possibly large) caller.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::child::Child;

/// The child's end of things, as the parent holds them.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Why a spawn failed.
pub(crate) enum SpawnError {
    /// exec itself failed in the child (the errno): libvirt reports this as exit status
    /// 127 for ENOENT and 126 otherwise.
    Exec(i32),
    /// Setting up (pipes, spawn attributes) failed.
    Setup(io::Error),
}

fn check(ret: libc::c_int) -> Result<(), SpawnError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(SpawnError::Setup(io::Error::from_raw_os_error(ret)))
    }
}

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Owns the spawn attribute and file action objects so every exit path destroys them.
struct SpawnConfig {
    attr: MaybeUninit<libc::posix_spawnattr_t>,
    actions: MaybeUninit<libc::posix_spawn_file_actions_t>,
    attr_init: bool,
    actions_init: bool,
}

impl Drop for SpawnConfig {
    fn drop(&mut self) {
        // SAFETY: each object is destroyed only if its init succeeded.
        unsafe {
            if self.attr_init {
                libc::posix_spawnattr_destroy(self.attr.as_mut_ptr());
            }
            if self.actions_init {
                libc::posix_spawn_file_actions_destroy(self.actions.as_mut_ptr());
            }
        }
    }
}

/// Spawns `program` with `argv` and `envp` (both without the trailing null).
pub(crate) fn spawn(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    stdin_pipe: bool,
    new_group: bool,
) -> Result<Spawned, SpawnError> {
    let (stdout_r, stdout_w) = pipe().map_err(SpawnError::Setup)?;
    let (stderr_r, stderr_w) = pipe().map_err(SpawnError::Setup)?;
    let stdin = if stdin_pipe {
        Some(pipe().map_err(SpawnError::Setup)?)
    } else {
        None
    };

    let mut cfg = SpawnConfig {
        attr: MaybeUninit::uninit(),
        actions: MaybeUninit::uninit(),
        attr_init: false,
        actions_init: false,
    };
    // SAFETY: every call gets a pointer to an object initialised by the matching
    // `_init` call (tracked by `cfg`), and descriptors that stay open until the spawn
    // returns. The sigset is initialised by sigemptyset/sigfillset before use.
    unsafe {
        check(libc::posix_spawn_file_actions_init(cfg.actions.as_mut_ptr()))?;
        cfg.actions_init = true;
        let actions = cfg.actions.as_mut_ptr();
        match &stdin {
            Some((read, _)) => check(libc::posix_spawn_file_actions_adddup2(actions, read.as_raw_fd(), 0))?,
            None => check(libc::posix_spawn_file_actions_addopen(
                actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?,
        }
        check(libc::posix_spawn_file_actions_adddup2(actions, stdout_w.as_raw_fd(), 1))?;
        check(libc::posix_spawn_file_actions_adddup2(actions, stderr_w.as_raw_fd(), 2))?;
        // Closes whatever the embedding process left open without O_CLOEXEC.
        check(libc::posix_spawn_file_actions_addclosefrom_np(actions, 3))?;

        check(libc::posix_spawnattr_init(cfg.attr.as_mut_ptr()))?;
        cfg.attr_init = true;
        let attr = cfg.attr.as_mut_ptr();
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        check(libc::posix_spawnattr_setsigmask(attr, set.as_ptr()))?;
        libc::sigfillset(set.as_mut_ptr());
        check(libc::posix_spawnattr_setsigdefault(attr, set.as_ptr()))?;
        let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        if new_group {
            flags |= libc::POSIX_SPAWN_SETPGROUP;
            check(libc::posix_spawnattr_setpgroup(attr, 0))?;
        }
        check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;

        let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv_ptrs.push(ptr::null_mut());
        let mut envp_ptrs: Vec<*mut libc::c_char> = envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
        envp_ptrs.push(ptr::null_mut());

        let mut pid: libc::pid_t = 0;
        // A sweep (a timed-out call in another thread) must not see this child before it
        // is registered, or it could take it for that call's orphan.
        let gate = crate::tree::spawning();
        let ret = libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            actions,
            attr,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        );
        if ret != 0 {
            // glibc reports exec failures here (and reaps the child itself).
            return Err(SpawnError::Exec(ret));
        }
        crate::tree::register(pid);
        drop(gate);
        // From here on, dropping it kills and reaps it.
        let child = Child::new(pid, new_group);
        drop((stdout_w, stderr_w));
        let stdin = stdin.map(|(read, write)| {
            drop(read);
            write
        });
        Ok(Spawned {
            child,
            stdin,
            stdout: stdout_r,
            stderr: stderr_r,
        })
    }
}
