//! The spawned hook as an owned value, contained either in a cgroup of its own (the hook
//! is our child) or under a helper that is its subreaper (the helper is our child, the
//! hook the helper's). It is reaped exactly once; until it is, dropping it (an error
//! path, a panic, a dropped call) kills the hook and everything it started and reaps
//! what is ours, so that no error leaves a process running or a zombie behind.
//!
//! Either way, what is killed is exactly what the hook started: the members of its
//! cgroup, or the helper's descendants. A child of this process that the hook did not
//! start is never in either.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use virt_hooks_core::outcome::Containment;

use crate::cgroup::{HookCgroup, Usage};
use crate::helper::Helper;
use crate::{procfs, sys};

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
}

fn decode(status: libc::c_int) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// What [`Child::terminate`] did.
#[derive(Debug, Clone)]
pub(crate) struct Terminated {
    pub(crate) exit: Exit,
    /// Processes that had left the hook's process group (or, without one, descended
    /// from it) and were killed with the rest.
    pub(crate) escaped: usize,
    /// The hook had ended by itself before the kill could start: nothing was killed.
    pub(crate) finished_first: bool,
    /// What the kill could not reach or make sure of, for the record.
    pub(crate) not_killed: Option<String>,
}

/// Dead processes are normally gone within microseconds of SIGKILL; one stuck in the
/// kernel (a hung NFS read) is not waited for longer than this.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// A hook this crate spawned, not reaped yet.
#[derive(Debug)]
pub(crate) struct Child {
    /// The hook's pid.
    pub(crate) pid: libc::pid_t,
    /// It leads its own process group.
    group: bool,
    kind: Kind,
    /// Set once it is reaped (or its end reported): from then on its pid may name
    /// another process.
    exit: Option<Exit>,
}

#[derive(Debug)]
enum Kind {
    /// Our child, in `cgroup` (taken when the call is finished).
    Cgroup {
        pidfd: Option<OwnedFd>,
        cgroup: Option<HookCgroup>,
    },
    /// The helper's child.
    Helper(Helper),
}

impl Child {
    /// Takes charge of a hook just started in `cgroup`.
    pub(crate) fn in_cgroup(pid: libc::pid_t, pidfd: Option<OwnedFd>, group: bool, cgroup: HookCgroup) -> Self {
        // Our child, not reaped: its pid is still its own.
        let pidfd = pidfd.or_else(|| sys::pidfd_open(pid).ok());
        Child {
            pid,
            group,
            kind: Kind::Cgroup {
                pidfd,
                cgroup: Some(cgroup),
            },
            exit: None,
        }
    }

    /// Takes charge of a hook its helper just started.
    pub(crate) fn under_helper(helper: Helper, group: bool) -> Self {
        Child {
            pid: helper.hook,
            group,
            kind: Kind::Helper(helper),
            exit: None,
        }
    }

    /// Which containment it has.
    pub(crate) fn containment(&self) -> Containment {
        match self.kind {
            Kind::Cgroup { .. } => Containment::Cgroup,
            Kind::Helper(_) => Containment::Subreaper,
        }
    }

    /// Readable once the hook has exited (for a helper: once it has something to say).
    /// `None` where the kernel has no pidfds: look every few milliseconds.
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            Kind::Cgroup { pidfd, .. } => pidfd.as_ref().map(|fd| fd.as_fd()),
            Kind::Helper(h) => Some(h.fd()),
        }
    }

    fn reaped(&mut self, exit: Exit) -> Exit {
        self.exit = Some(exit);
        exit
    }

    /// Its exit, once it has ended (waiting for it if `block`); `None` while it runs.
    pub(crate) fn wait(&mut self, block: bool) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        if let Kind::Helper(h) = &mut self.kind {
            h.receive(block)?;
            return match h.status {
                Some(status) => Ok(Some(self.reaped(decode(status)))),
                None if block || h.hung_up() => {
                    Err(io::Error::other("the hook's helper process died before the hook ended"))
                }
                None => Ok(None),
            };
        }
        loop {
            // Our own child, not reaped yet: its pid is still its own.
            let err = match sys::waitpid(self.pid, if block { 0 } else { libc::WNOHANG }) {
                Ok(Some(status)) => return Ok(Some(self.reaped(decode(status)))),
                Ok(None) => return Ok(None),
                Err(err) => err,
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Someone else reaped it (a stray waitpid(-1)): it is gone.
                Some(libc::ECHILD) => {
                    self.reaped(Exit::Signal(libc::SIGKILL));
                    return Err(reaped_elsewhere());
                }
                _ => return Err(err),
            }
        }
    }

    /// To the hook's group, or to the hook alone when it has none. Never after it was
    /// reaped: the leader not being reaped is what keeps its pid and group id ours.
    fn signal(&self, sig: libc::c_int) {
        if self.exit.is_none() {
            // A negative pid addresses the group the child leads. Nothing can be done
            // about a failure here.
            let _ = sys::kill(if self.group { -self.pid } else { self.pid }, sig);
        }
    }

    /// Stops the hook and everything it started: SIGTERM to its group, up to `grace` for
    /// the hook to go, then SIGKILL to all of it (its cgroup, or everything under its
    /// helper), and reaps what is ours.
    pub(crate) fn terminate(&mut self, grace: Duration) -> io::Result<Terminated> {
        if let Some(exit) = self.exit {
            return Ok(Terminated {
                exit,
                escaped: 0,
                finished_first: true,
                not_killed: None,
            });
        }
        match &mut self.kind {
            Kind::Helper(h) => {
                let _ = h.receive(false);
                if !h.finished() {
                    h.term();
                    h.wait_status(grace)?;
                }
                if h.finished() {
                    // It ended before the helper read the request: nothing was killed.
                    let exit = decode(h.status.unwrap_or(0));
                    h.reap();
                    return Ok(Terminated {
                        exit: self.reaped(exit),
                        escaped: 0,
                        finished_first: true,
                        not_killed: None,
                    });
                }
                let killed = h.kill();
                let exit = h.status.map_or(Exit::Signal(libc::SIGKILL), decode);
                let not_killed = if killed.helper_died {
                    Some(
                        "its helper process died before the kill (the hook killed it, or the OOM killer did): \
                         only the hook itself was killed, and what it started may still run"
                            .to_owned(),
                    )
                } else {
                    (killed.leftover > 0).then(|| {
                        format!(
                            "{} of its processes were still alive when the kill gave up after {} s (stuck in the \
                             kernel, or forking faster than they could be killed)",
                            killed.leftover,
                            crate::helper::KILL_LIMIT_MS / 1000
                        )
                    })
                };
                Ok(Terminated {
                    exit: self.reaped(exit),
                    escaped: killed.escaped,
                    finished_first: false,
                    not_killed,
                })
            }
            Kind::Cgroup { .. } => self.terminate_cgroup(grace),
        }
    }

    fn terminate_cgroup(&mut self, grace: Duration) -> io::Result<Terminated> {
        let mut escaped = HashSet::new();
        self.note_escapees(&mut escaped);
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        let waited = self.wait_exit(grace);
        // And those that left during the grace.
        self.note_escapees(&mut escaped);
        if let Kind::Cgroup { cgroup: Some(cg), .. } = &self.kind {
            if let Err(e) = cg.kill() {
                tracing::warn!(cgroup = %cg.path().display(), error = %e, "cgroup.kill failed; killing its processes one by one");
                self.signal(libc::SIGKILL);
            }
            // Also one by one: `cgroup.kill` passes by a process whose leader thread
            // exited while others run on.
            kill_each(cg);
        }
        let mut not_killed = None;
        if let Kind::Cgroup { cgroup: Some(cg), .. } = &self.kind {
            if !cg.wait_empty(REAP_WAIT) {
                let left = cg.procs().len();
                tracing::warn!(cgroup = %cg.path().display(), left, "a killed process started by a hook has not exited yet");
                not_killed = Some(format!(
                    "{left} of its processes had not exited {} s after its cgroup was killed (stuck in the kernel)",
                    REAP_WAIT.as_secs()
                ));
            }
            // Only root can move a process out of the hook's cgroup; one that kept the
            // hook's process group is still reached through it (its leader is not reaped
            // yet, so the group id is the hook's).
            let moved = if self.group { moved_out(cg, self.pid) } else { 0 };
            if moved > 0 {
                self.signal(libc::SIGKILL);
                let moved_note = format!(
                    "{moved} of its processes had moved out of its cgroup (only root can): killed through its \
                     process group; one that also left the group is out of reach"
                );
                not_killed = Some(match not_killed {
                    Some(n) => format!("{n}; {moved_note}"),
                    None => moved_note,
                });
            }
        }
        let exit = self.wait(true);
        if let Kind::Cgroup { cgroup: Some(cg), .. } = &self.kind {
            reap_orphans(cg);
        }
        waited?;
        Ok(Terminated {
            exit: exit?.unwrap_or(Exit::Signal(libc::SIGKILL)),
            escaped: escaped.len(),
            finished_first: false,
            not_killed,
        })
    }

    /// The processes in its cgroup that are not in its group (for the report).
    fn note_escapees(&self, escaped: &mut HashSet<libc::pid_t>) {
        let Kind::Cgroup { cgroup: Some(cg), .. } = &self.kind else {
            return;
        };
        for pid in cg.procs() {
            if pid == self.pid {
                continue;
            }
            let left = !self.group || procfs::read_stat(pid).is_some_and(|p| p.pgid != self.pid);
            if left {
                escaped.insert(pid);
            }
        }
    }

    /// Waits up to `grace` for the hook to exit, without reaping it.
    fn wait_exit(&self, grace: Duration) -> io::Result<()> {
        let until = Instant::now() + grace;
        loop {
            if self.has_exited()? {
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.exit_fd() {
                Some(fd) => {
                    let mut pfd = [libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    // EINTR (or any error) just loops.
                    let _ = sys::poll(&mut pfd, ms);
                }
                None => std::thread::sleep(left.min(Duration::from_millis(1))),
            }
        }
    }

    /// Whether it has exited, without reaping it.
    fn has_exited(&self) -> io::Result<bool> {
        loop {
            // WNOWAIT leaves the child waitable; the pid is 0 while it runs.
            let options = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            match sys::waitid(sys::WaitId::Pid(self.pid), options) {
                Ok(pid) => return Ok(pid == self.pid),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.raw_os_error() == Some(libc::ECHILD) => return Err(reaped_elsewhere()),
                Err(err) => return Err(err),
            }
        }
    }

    /// Once the call is over: what its cgroup measured, and the end of its containment
    /// (the cgroup removed, or left until its last process exits; the helper reaped).
    pub(crate) fn finish(&mut self) -> Usage {
        match &mut self.kind {
            Kind::Cgroup { cgroup, .. } => cgroup.take().map(|cg| cg.usage()).unwrap_or_default(),
            Kind::Helper(h) => {
                h.reap();
                Usage::default()
            }
        }
    }
}

/// The hook, our child, was reaped by other code in this process: its status is lost.
fn reaped_elsewhere() -> io::Error {
    io::Error::other(
        "its exit status was lost: another part of this program reaped the hook's process (a `waitpid(-1)` or \
         `wait()` that takes any child); reap only your own children, by pid",
    )
}

/// The live processes of the process group `group` that are not in `cg` (a scan of
/// `/proc`: only after a kill).
fn moved_out(cg: &HookCgroup, group: libc::pid_t) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| procfs::read_stat(pid).is_some_and(|p| p.pgid == group && p.alive()) && !cg.holds(pid))
        .count()
}

/// Without `cgroup.kill`: SIGKILL to each process in the cgroup, pinned by a pidfd
/// first and checked to be in it still, so that a recycled pid is never signalled.
fn kill_each(cg: &HookCgroup) {
    for pid in cg.procs() {
        if let Ok(fd) = sys::pidfd_open(pid) {
            if cg.holds(pid) {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
        }
    }
}

/// In a subreaper, the hook's killed orphans came here: reaps them (only those that
/// were in the hook's cgroup; any other child of ours is left alone).
fn reap_orphans(cg: &HookCgroup) {
    if !sys::is_child_subreaper() {
        return;
    }
    for pid in children_of_self() {
        // Pinned, then checked: a pid reaped meanwhile by someone else is not waited for.
        let Ok(fd) = sys::pidfd_open(pid) else { continue };
        if cg.holds(pid) {
            let _ = sys::waitid(sys::WaitId::PidFd(fd.as_fd()), libc::WEXITED | libc::WNOHANG);
        }
    }
}

/// The pids of this process's children (those of every thread).
fn children_of_self() -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        // A thread that exited meanwhile handed its children to another one.
        if let Ok(list) = std::fs::read(task.path().join("children")) {
            procfs::for_each_pid(&list, false, |p| pids.push(p));
        }
    }
    pids
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // An error or a panic got here before the hook was reaped: no grace.
            if let Err(e) = self.terminate(Duration::ZERO) {
                tracing::warn!(pid = self.pid, error = %e, "killing an abandoned hook failed");
            }
        }
        // The cgroup (removed when empty) and the helper (reaped) clean up as they drop.
    }
}
