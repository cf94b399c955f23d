//! Starts a hook with its pipes, contained: in a cgroup of its own where this process can
//! make one (see `cgroup.rs`), else under a helper that is its subreaper alone (see
//! `helper.rs`). A failure to contain it in a cgroup is never a failure to run it: the
//! helper takes over, and a note says why.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use virt_hooks_core::outcome::Containment;

use crate::cgroup::{self, HookCgroup};
use crate::child::Child;
use crate::helper::{Helper, StartError};
use crate::launch::{self, LaunchError, Plan, Step};
use crate::sys::{self, CStrArray};

/// The child's end of things, as the parent holds them.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    /// What the report should say about its containment or limits (a fallback, a limit
    /// that does not apply here).
    pub(crate) notes: Vec<String>,
}

/// Why a spawn failed.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// exec itself failed in the child (the errno), contained as said: libvirt reports
    /// this as exit status 127 for ENOENT and 126 otherwise.
    Exec(i32, Containment),
    /// Setting up (pipes, the process, its descriptors) failed.
    Setup(io::Error),
}

impl SpawnError {
    fn from_launch(e: LaunchError, containment: Containment) -> Self {
        match e {
            LaunchError::Child(Step::Exec, errno) => SpawnError::Exec(errno, containment),
            LaunchError::Child(step, errno) => {
                let err = io::Error::from_raw_os_error(errno);
                SpawnError::Setup(io::Error::new(
                    err.kind(),
                    format!("the hook's process failed {}: {err}", step.describe()),
                ))
            }
            LaunchError::Clone(errno) => SpawnError::Setup(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// How to start a hook.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) program: &'a CStr,
    /// argv and envp, without the trailing null.
    pub(crate) argv: &'a [CString],
    pub(crate) envp: &'a [CString],
    /// stdin on a pipe (else `/dev/null`).
    pub(crate) stdin_pipe: bool,
    /// A process group of its own.
    pub(crate) new_group: bool,
    /// A cgroup where one can be made (else always the helper).
    pub(crate) cgroup: bool,
    pub(crate) limits: cgroup::Limits,
}

pub(crate) fn spawn(req: Request<'_>) -> Result<Spawned, SpawnError> {
    let (stdout_r, stdout_w) = sys::pipe_above_stdio().map_err(SpawnError::Setup)?;
    let (stderr_r, stderr_w) = sys::pipe_above_stdio().map_err(SpawnError::Setup)?;
    let stdin = if req.stdin_pipe {
        Some(sys::pipe_above_stdio().map_err(SpawnError::Setup)?)
    } else {
        None
    };
    let argv = CStrArray::new(req.argv);
    let envp = CStrArray::new(req.envp);
    let plan = Plan {
        program: req.program,
        argv: &argv,
        envp: &envp,
        stdin: stdin.as_ref().map(|(read, _)| read.as_raw_fd()),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        new_group: req.new_group,
        announce: None,
    };
    let mut notes = Vec::new();
    let child = match in_cgroup(&plan, &req, &mut notes)? {
        Some(child) => child,
        None => {
            if req.limits.memory_max.is_some() || req.limits.pids_max.is_some() {
                notes.push("its memory/pids limits are not enforced: it has no cgroup here".to_owned());
            }
            match Helper::start(&plan) {
                Ok(helper) => Child::under_helper(helper, req.new_group),
                Err(StartError::Launch(e)) => return Err(SpawnError::from_launch(e, Containment::Subreaper)),
                Err(StartError::Helper(e)) => return Err(SpawnError::Setup(e)),
            }
        }
    };
    // From here on, dropping `child` kills and reaps it.
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
        notes,
    })
}

/// The hook in a cgroup of its own, or `None` where it cannot have one (and `notes` says
/// why, when it could have been expected to).
fn in_cgroup(plan: &Plan<'_>, req: &Request<'_>, notes: &mut Vec<String>) -> Result<Option<Child>, SpawnError> {
    // A hook in a cgroup is this process's child: where the kernel reaps children
    // unasked, its status would be lost. The helper reads it instead.
    if !req.cgroup || sys::children_reaped_by_kernel() {
        return Ok(None);
    }
    // Unavailable in this process: `virt_hooks_exec::containment()` says why; no note on
    // every call.
    let Ok(setup) = cgroup::setup() else { return Ok(None) };
    let cg = match HookCgroup::create(setup, req.limits, notes) {
        Ok(cg) => cg,
        Err(e) => {
            notes.push(format!(
                "it ran under a per-hook subreaper: its cgroup could not be made ({e})"
            ));
            return Ok(None);
        }
    };
    match launch::launch(plan, Some(cg.dir())) {
        Ok(launched) => Ok(Some(Child::in_cgroup(launched.pid, launched.pidfd, req.new_group, cg))),
        Err(LaunchError::Clone(errno)) => {
            let err = io::Error::from_raw_os_error(errno);
            notes.push(format!(
                "it ran under a per-hook subreaper: it could not be started in its cgroup {} ({err})",
                cg.path().display()
            ));
            if cgroup::recurs(errno) {
                cgroup::give_up(format!(
                    "the kernel refuses to start a process in a cgroup (clone3: {err})"
                ));
            }
            Ok(None)
        }
        Err(e) => Err(SpawnError::from_launch(e, Containment::Cgroup)),
    }
}
