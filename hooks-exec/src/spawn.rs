//! `posix_spawn` with libvirt's child setup: every signal back to its default, an empty
//! signal mask, every fd >= 3 closed, stdio on pipes (or /dev/null), optionally a new
//! process group. std's `Command` would need a `pre_exec` closure for this, which makes
//! it fall back to a plain `fork` of the whole (possibly large) caller.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::child::Child;
use crate::sys;

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

/// Spawns `program` with `argv` and `envp` (both without the trailing null).
pub(crate) fn spawn(
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
    stdin_pipe: bool,
    new_group: bool,
) -> Result<Spawned, SpawnError> {
    let (stdout_r, stdout_w) = sys::pipe().map_err(SpawnError::Setup)?;
    let (stderr_r, stderr_w) = sys::pipe().map_err(SpawnError::Setup)?;
    let stdin = if stdin_pipe {
        Some(sys::pipe().map_err(SpawnError::Setup)?)
    } else {
        None
    };

    // The attributes and file actions, destroyed on every way out.
    let mut storage = sys::SpawnStorage::new();
    let mut cfg = storage.config();
    match &stdin {
        Some((read, _)) => cfg.add_dup2(read.as_fd(), 0),
        None => cfg.add_open(0, c"/dev/null", libc::O_RDONLY, 0),
    }
    .map_err(SpawnError::Setup)?;
    cfg.add_dup2(stdout_w.as_fd(), 1).map_err(SpawnError::Setup)?;
    cfg.add_dup2(stderr_w.as_fd(), 2).map_err(SpawnError::Setup)?;
    // Closes whatever the embedding process left open without O_CLOEXEC.
    cfg.add_closefrom(3).map_err(SpawnError::Setup)?;

    cfg.set_sigmask_empty().map_err(SpawnError::Setup)?;
    cfg.set_sigdefault_all().map_err(SpawnError::Setup)?;
    let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    if new_group {
        flags |= libc::POSIX_SPAWN_SETPGROUP;
        cfg.set_pgroup(0).map_err(SpawnError::Setup)?;
    }
    cfg.set_flags(flags).map_err(SpawnError::Setup)?;

    let argv = sys::CStrArray::new(argv);
    let envp = sys::CStrArray::new(envp);

    // A sweep (a timed-out call in another thread) must not see this child before it
    // is registered, or it could take it for that call's orphan.
    let gate = crate::tree::spawning();
    // glibc reports exec failures here (and reaps the child itself).
    let pid = cfg.spawn(program, &argv, &envp).map_err(SpawnError::Exec)?;
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
