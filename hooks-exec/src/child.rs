//! The spawned hook as an owned value. It is reaped exactly once; until it is, dropping
//! it (an error path, a panic, a dropped call) kills the hook and everything it started
//! and reaps them, so that no error leaves a process running or a zombie behind.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;
use crate::tree::{self, Sweep};

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
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terminated {
    pub(crate) exit: Exit,
    /// Processes that had left the hook's process group (or, without one, descended
    /// from it) and were killed one by one.
    pub(crate) escaped: usize,
}

/// A hook this crate spawned and has not reaped yet.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: libc::pid_t,
    /// It leads its own process group (spawned with setpgid(0, 0)).
    group: bool,
    pidfd: Option<OwnedFd>,
    /// Set once it is reaped: from then on its pid may name another process.
    exit: Option<Exit>,
}

impl Child {
    /// Takes charge of a pid that was just spawned and [`tree::register`]ed.
    pub(crate) fn new(pid: libc::pid_t, group: bool) -> Self {
        Child {
            pid,
            group,
            pidfd: sys::pidfd_open(pid).ok(),
            exit: None,
        }
    }

    /// Readable once the hook has exited, where the kernel has pidfds.
    pub(crate) fn pidfd(&self) -> Option<&OwnedFd> {
        self.pidfd.as_ref()
    }

    fn reaped(&mut self, exit: Exit) -> Exit {
        self.exit = Some(exit);
        tree::unregister(self.pid);
        exit
    }

    /// `waitpid`, blocking or not; `None` while it runs.
    pub(crate) fn wait(&mut self, block: bool) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
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
                // Someone else reaped it (SIGCHLD ignored, a stray waitpid(-1)): it is gone.
                Some(libc::ECHILD) => {
                    self.reaped(Exit::Signal(libc::SIGKILL));
                    return Err(err);
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

    /// Stops the hook and everything it started. Its group gets TERM, up to `grace` for
    /// the hook to go, then KILL, as before; what left the group (setsid, setpgid,
    /// orphans reparented to a subreaper) is found from `/proc` and gets SIGKILL. All are
    /// reaped if they are ours.
    pub(crate) fn terminate(&mut self, grace: Duration) -> io::Result<Terminated> {
        if let Some(exit) = self.exit {
            return Ok(Terminated { exit, escaped: 0 });
        }
        let mut sweep = Sweep::new(self.pid, self.group);
        // Frozen, nothing in the group can fork, so the walk can see all that left it.
        // Looked for before TERM: once the hook dies, its children are no longer its.
        self.signal(libc::SIGSTOP);
        sweep.catch();
        sweep.kill();
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        let waited = self.wait_exit(grace);
        // Whatever the group started during the grace.
        self.signal(libc::SIGSTOP);
        sweep.catch();
        sweep.kill();
        // The rest of the group (children that ignored TERM) goes too.
        self.signal(libc::SIGKILL);
        let exit = self.wait(true);
        sweep.reap();
        waited?;
        Ok(Terminated {
            exit: exit?.unwrap_or(Exit::Signal(libc::SIGKILL)),
            escaped: sweep.escaped(),
        })
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
            match &self.pidfd {
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
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // An error or a panic got here before the hook was reaped: no grace.
            if let Err(e) = self.terminate(Duration::ZERO) {
                tracing::warn!(pid = self.pid, error = %e, "killing an abandoned hook failed");
            }
        }
        if self.exit.is_none() {
            // Left registered: its pid stays ours (unreaped), and no other call's sweep
            // takes it for an orphan.
            tracing::warn!(pid = self.pid, "an abandoned hook could not be reaped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsFd;

    fn alive(pid: libc::pid_t) -> bool {
        sys::kill(pid, 0).is_ok()
    }

    fn running(pid: libc::pid_t) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
    }

    /// `sh -c script` in its own group, its stdout kept open here.
    fn spawn_sh(script: &str) -> crate::spawn::Spawned {
        let argv = [c"/bin/sh".to_owned(), c"-c".to_owned(), CString::new(script).unwrap()];
        match crate::spawn::spawn(c"/bin/sh", &argv, &[], false, true) {
            Ok(s) => s,
            Err(_) => panic!("cannot spawn /bin/sh"),
        }
    }

    fn read_line(fd: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut byte = 0u8;
        while matches!(sys::read(fd.as_fd(), std::slice::from_mut(&mut byte)), Ok(1)) && byte != b'\n' {
            out.push(byte);
        }
        String::from_utf8(out).unwrap()
    }

    /// The error path: a panic while the hook runs kills and reaps it and what escaped
    /// its group.
    #[test]
    fn a_panic_kills_and_reaps_the_hook_and_its_escapee() {
        let spawned = spawn_sh("setsid sh -c 'echo $$; exec sleep 30' & wait");
        let leader = spawned.child.pid;
        let escapee: libc::pid_t = read_line(&spawned.stdout).parse().unwrap();
        assert!(running(escapee));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _spawned = spawned;
            panic!("supervisor bug");
        }));
        assert!(panicked.is_err());
        // Reaped: not even a zombie is left of the hook.
        assert!(!alive(leader), "the hook {leader} is still there");
        // A non-blocking waitpid on a pid that must no longer be our child.
        assert!(sys::waitpid(leader, libc::WNOHANG).is_err());
        // Killed; not our child (no subreaper here), so init reaps it.
        assert!(!running(escapee), "the escaped sleep {escapee} survived");
    }
}
