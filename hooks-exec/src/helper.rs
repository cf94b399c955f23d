//! The per-hook subreaper, where a hook cannot have a cgroup: a helper process that is
//! the child subreaper for that one hook. Everything the hook starts stays a descendant
//! of the helper whatever it does (an orphan is reparented to the nearest subreaper
//! above it, the helper), so when the helper has no child left, nothing of the hook is
//! left either; and the caller's own children, never under the helper, are never
//! touched.
//!
//! The helper is a `fork` of the caller that never execs (a library has no helper binary
//! of its own to run): it runs [`helper_main`] only, which keeps the rules of `raw.rs` (no
//! allocation, no lock: the caller may have other threads). It closes every descriptor
//! but its own, resets every signal action and keeps every signal blocked (it waits on a
//! `signalfd`), becomes a subreaper, starts the hook (see `launch.rs`), and then serves
//! the caller over a `SOCK_SEQPACKET` pair:
//!
//! - helper → caller: `Started(pid)` (sent by the hook's process itself, just before it
//!   execs, so that the caller can pin the hook before any of its code runs), then
//!   `Running` or `SpawnFailed(step, errno)`, then `Exited(wait status)` when the hook
//!   ends, and `Killed(escaped)` after a kill;
//! - caller → helper: `T` (TERM the hook's group, a kill follows), `K` (kill everything),
//!   or a hang-up (the caller is gone or dropped the call: kill everything).
//!
//! When the hook exits by itself and no kill was asked for, the helper exits at once and
//! the hook's background processes go on, reparented above it, as in libvirt. Otherwise
//! it kills: SIGKILL to the hook's group while its leader is unreaped, then to each child
//! it has, round after round, reaping as they die: each death hands it the dead one's
//! children, so it goes on until it has no child at all, which is when the hook's last
//! process is gone.
//!
//! The cost is a copy of the caller's page tables per call (the hook itself is started
//! from the helper without one).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};

use crate::launch::{self, LaunchError, Plan, Step};
use crate::{procfs, raw, sys};

const STARTED: u32 = 1;
const SPAWN_FAILED: u32 = 2;
const EXITED: u32 = 3;
const KILLED: u32 = 4;
const RUNNING: u32 = 5;
/// A step of the helper's own setup failed (the step number is this plus one of these).
const HELPER_SETUP: u32 = 100;
const SETUP_DESCRIPTORS: u32 = 1;
const SETUP_SIGNALS: u32 = 2;
const SETUP_SUBREAPER: u32 = 3;
const SETUP_SIGNALFD: u32 = 4;

const TERM: u8 = b'T';
const KILL: u8 = b'K';

/// The helper gives up killing after this long (a process stuck in the kernel, a fork
/// bomb that outruns it) and says so.
pub(crate) const KILL_LIMIT_MS: u64 = 5000;

/// A message of the helper's: kind and three numbers.
type Msg = [u8; 16];

fn encode(kind: u32, a: i32, b: i32, c: i32) -> Msg {
    let mut m = [0u8; 16];
    for (slot, v) in m
        .chunks_exact_mut(4)
        .zip([kind.to_ne_bytes(), a.to_ne_bytes(), b.to_ne_bytes(), c.to_ne_bytes()])
    {
        slot.copy_from_slice(&v);
    }
    m
}

fn decode(m: &Msg) -> (u32, i32, i32, i32) {
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&m[i * 4..i * 4 + 4]);
        w
    };
    (
        u32::from_ne_bytes(word(0)),
        i32::from_ne_bytes(word(1)),
        i32::from_ne_bytes(word(2)),
        i32::from_ne_bytes(word(3)),
    )
}

/// What the helper reported after a kill.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Killed {
    /// Processes killed one by one that were not in the hook's process group.
    pub(crate) escaped: usize,
    /// Processes still alive when the helper gave up (stuck in the kernel, or a fork bomb
    /// faster than the kill).
    pub(crate) leftover: usize,
    /// The helper died before it could kill (the hook killed it, or the OOM killer did):
    /// only the hook itself was killed, and what it started is loose.
    pub(crate) helper_died: bool,
}

/// The caller's end of a helper.
#[derive(Debug)]
pub(crate) struct Helper {
    /// The helper's pid (our child, not reaped until `reaped`).
    pid: pid_t,
    /// The hook's pid (the helper's child).
    pub(crate) hook: pid_t,
    /// Pins the hook, so that it can be killed even if the helper dies first.
    hook_pidfd: Option<OwnedFd>,
    sock: OwnedFd,
    /// The hook's wait status, once reported.
    pub(crate) status: Option<c_int>,
    /// Whether the helper stays after `Exited` (it got `T` first): a kill is expected.
    staying: bool,
    killed: Option<Killed>,
    /// The helper hung up.
    gone: bool,
    reaped: bool,
}

/// Why [`Helper::start`] failed.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The hook could not be started (as from [`launch::launch`]).
    Launch(LaunchError),
    /// The helper could not be made or set up.
    Helper(io::Error),
}

impl Helper {
    /// Forks the helper, which starts the hook as `plan` says. Returns once the hook runs
    /// (or failed to start).
    pub(crate) fn start(plan: &Plan<'_>) -> Result<Helper, StartError> {
        let (mine, theirs) = sys::seqpacket_pair().map_err(StartError::Helper)?;
        let ctx = Ctx {
            plan,
            control: theirs.as_raw_fd(),
        };
        // The helper starts with every signal blocked: none of our handlers runs in it.
        let mask = raw::set_signal_mask(!0);
        // SAFETY: the child runs `helper_main` only, which allocates nothing, takes no lock
        // and exits without returning (see `raw.rs`).
        let forked = unsafe { sys::fork() };
        if let Ok(0) = forked {
            helper_main(&ctx);
        }
        raw::set_signal_mask(mask);
        let pid = forked.map_err(StartError::Helper)?;
        drop(theirs);
        let mut helper = Helper {
            pid,
            hook: 0,
            hook_pidfd: None,
            sock: mine,
            status: None,
            staying: false,
            killed: None,
            gone: false,
            reaped: false,
        };
        let failure = loop {
            let mut msg: Msg = [0; 16];
            let len = match sys::recv(helper.sock.as_fd(), &mut msg, true) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break StartError::Helper(e),
                Ok(len) => len,
            };
            match (len, decode(&msg)) {
                (16, (STARTED, hook, _, _)) => {
                    helper.hook = hook;
                    // Pinned at once. The hook sent this before it exec'd, so for its pid to
                    // name another process here, it would have had to run, end, be reaped
                    // and have its pid handed out again (after a whole cycle of pid_max
                    // forks) in the moment since. Its parent is not checked: a hook that
                    // kills its helper is reparented, and must still be killable.
                    helper.hook_pidfd = sys::pidfd_open(hook).ok();
                }
                (16, (RUNNING, _, _, _)) if helper.hook > 0 => return Ok(helper),
                (16, (SPAWN_FAILED, step, errno, _)) => break spawn_failure(step, errno),
                (0, _) => {
                    break StartError::Helper(io::Error::other(
                        "the hook's helper process died before the hook was running",
                    ))
                }
                _ => break StartError::Helper(io::Error::other("the hook's helper process sent nonsense")),
            }
        };
        helper.gone = true;
        if helper.hook > 0 {
            // The hook may be running, helper-less: the leader at least goes.
            if let Some(fd) = &helper.hook_pidfd {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
        }
        helper.reap();
        Err(failure)
    }

    /// Readable when the helper has something to say (or hung up).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether the helper hung up (it exited, or died).
    pub(crate) fn hung_up(&self) -> bool {
        self.gone
    }

    /// Reads what the helper said, waiting for one message if `wait`.
    pub(crate) fn receive(&mut self, mut wait: bool) -> io::Result<()> {
        while !self.gone {
            let mut msg: Msg = [0; 16];
            match sys::recv(self.sock.as_fd(), &mut msg, wait) {
                Ok(0) => self.gone = true,
                Ok(16) => match decode(&msg) {
                    (EXITED, status, staying, _) => {
                        self.status = Some(status);
                        self.staying = staying != 0;
                    }
                    (KILLED, escaped, leftover, status) => {
                        if status != -1 && self.status.is_none() {
                            self.status = Some(status);
                        }
                        self.killed = Some(Killed {
                            escaped: escaped.max(0) as usize,
                            leftover: leftover.max(0) as usize,
                            helper_died: false,
                        });
                    }
                    _ => return Err(io::Error::other("the hook's helper process sent nonsense")),
                },
                Ok(_) => return Err(io::Error::other("the hook's helper process sent a short message")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.gone = true;
                    return Err(e);
                }
            }
            wait = false;
        }
        Ok(())
    }

    /// Whether the hook ended and the helper is leaving (no kill will happen).
    pub(crate) fn finished(&self) -> bool {
        self.status.is_some() && !self.staying
    }

    /// Asks for SIGTERM to the hook's group; a kill must follow.
    pub(crate) fn term(&mut self) {
        if !self.gone && sys::send(self.sock.as_fd(), &[TERM]).is_err() {
            // Gone: whatever it said last is all there is.
            let _ = self.receive(false);
            self.gone = true;
        }
    }

    /// Waits up to `grace` for the hook to end.
    pub(crate) fn wait_status(&mut self, grace: Duration) -> io::Result<()> {
        let until = Instant::now() + grace;
        while self.status.is_none() && !self.gone {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = [libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            let _ = sys::poll(&mut pfd, ms);
            self.receive(false)?;
        }
        Ok(())
    }

    /// Kills everything the hook started, waits for the helper to say it is done, and
    /// reaps it.
    pub(crate) fn kill(&mut self) -> Killed {
        if !self.finished() && !self.gone {
            if sys::send(self.sock.as_fd(), &[KILL]).is_ok() {
                while self.killed.is_none() && !self.gone {
                    if self.receive(true).is_err() {
                        break;
                    }
                }
            } else {
                // It hung up: what it said before is in the socket, then the end.
                let _ = self.receive(false);
                self.gone = true;
            }
        }
        if self.gone && self.killed.is_none() && !self.finished() {
            // The helper died (SIGKILL from outside, OOM): the hook's processes are
            // orphans now. Its leader at least is still pinned.
            tracing::warn!(
                hook = self.hook,
                "the hook's helper process died; only the hook itself could be killed"
            );
            if let Some(fd) = &self.hook_pidfd {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
        }
        let killed = self.killed.unwrap_or(Killed {
            escaped: 0,
            leftover: 0,
            helper_died: !self.finished(),
        });
        if killed.leftover > 0 {
            tracing::warn!(
                hook = self.hook,
                leftover = killed.leftover,
                "processes started by a hook were still there when the kill gave up"
            );
        }
        self.reap_process();
        killed
    }

    /// Reaps the helper: at once if it is leaving, else after a kill.
    pub(crate) fn reap(&mut self) {
        if !self.reaped && !self.finished() && !self.gone && self.killed.is_none() {
            self.kill();
        }
        self.reap_process();
    }

    fn reap_process(&mut self) {
        if self.reaped {
            return;
        }
        // Once reaped, its pid may name another child of ours: waited for once only.
        self.reaped = true;
        loop {
            match sys::waitpid(self.pid, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECHILD: someone else reaped it (SIGCHLD ignored).
                _ => break,
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.reap();
    }
}

/// A `SpawnFailed` message as an error.
fn spawn_failure(step: i32, errno: i32) -> StartError {
    if step < HELPER_SETUP as i32 {
        let step = [Step::Signals, Step::Group, Step::Stdio, Step::Descriptors, Step::Exec]
            .into_iter()
            .find(|s| *s as i32 == step);
        return match step {
            Some(step) => StartError::Launch(LaunchError::Child(step, errno)),
            None => StartError::Launch(LaunchError::Clone(errno)),
        };
    }
    let what = match step as u32 - HELPER_SETUP {
        SETUP_DESCRIPTORS => "closing the caller's descriptors",
        SETUP_SIGNALS => "resetting its signal actions",
        SETUP_SUBREAPER => "becoming a child subreaper",
        SETUP_SIGNALFD => "making a signalfd",
        _ => "setting up",
    };
    let err = io::Error::from_raw_os_error(errno);
    StartError::Helper(io::Error::new(
        err.kind(),
        format!("the hook's helper process failed {what}: {err}"),
    ))
}

/// What the helper reads: the hook's plan and its end of the socket.
struct Ctx<'a> {
    plan: &'a Plan<'a>,
    control: RawFd,
}

fn send_raw(fd: RawFd, msg: &Msg) {
    // SAFETY: the kernel reads the 16 bytes of `msg`. MSG_NOSIGNAL: a caller that is gone
    // is an error here, not a SIGPIPE (which is blocked anyway).
    unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
}

fn fail_setup(fd: RawFd, what: u32, errno: i32) -> ! {
    send_raw(fd, &encode(SPAWN_FAILED, (HELPER_SETUP + what) as i32, errno, 0));
    raw::exit_now(0)
}

/// The helper's whole life. Never returns.
fn helper_main(ctx: &Ctx<'_>) -> ! {
    let plan = ctx.plan;
    let control = ctx.control;
    let keep = [control, plan.stdin.unwrap_or(-1), plan.stdout, plan.stderr];
    if let Err(e) = raw::close_from_3_but(&keep) {
        fail_setup(control, SETUP_DESCRIPTORS, e);
    }
    if let Err(e) = raw::reset_signal_actions() {
        fail_setup(control, SETUP_SIGNALS, e);
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        fail_setup(control, SETUP_SUBREAPER, raw::errno());
    }
    let sigfd = match child_signalfd() {
        Ok(fd) => fd,
        Err(e) => fail_setup(control, SETUP_SIGNALFD, e),
    };
    // The hook's process announces itself on our socket, just before it execs.
    let plan = &Plan {
        announce: Some((control, encode(STARTED, 0, 0, 0))),
        ..*plan
    };
    let hook = match launch::launch(plan, None) {
        Ok(l) => l.pid,
        Err(LaunchError::Child(step, errno)) => {
            send_raw(control, &encode(SPAWN_FAILED, step as i32, errno, 0));
            raw::exit_now(0)
        }
        Err(LaunchError::Clone(errno)) => {
            send_raw(control, &encode(SPAWN_FAILED, 0, errno, 0));
            raw::exit_now(0)
        }
    };
    // The pipes are the hook's now: the caller must see their end when the hook's is.
    for fd in [plan.stdin.unwrap_or(-1), plan.stdout, plan.stderr] {
        if fd >= 0 {
            raw::close(fd);
        }
    }
    send_raw(control, &encode(RUNNING, hook, 0, 0));
    let mut state = State {
        hook,
        group: if plan.new_group { hook } else { 0 },
        status: None,
        kill_coming: false,
        sigfd,
        control,
    };
    state.serve()
}

/// A `signalfd` for SIGCHLD (blocked, as every signal is in the helper).
fn child_signalfd() -> Result<c_int, i32> {
    // SAFETY: an all-zero sigset_t is a valid (empty) set; sigemptyset and sigaddset only
    // write inside it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `set` is a live local.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
    }
    // SAFETY: reads `set`; returns a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(raw::errno());
    }
    Ok(fd)
}

struct State {
    hook: pid_t,
    /// The hook's process group, 0 when it has none of its own.
    group: pid_t,
    /// The hook's wait status, once reaped.
    status: Option<c_int>,
    /// `T` came: stay after the hook ends, until the kill.
    kill_coming: bool,
    sigfd: c_int,
    control: c_int,
}

enum Command {
    None,
    Term,
    Kill,
}

impl State {
    fn serve(&mut self) -> ! {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.control,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.sigfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two initialised pollfd in a live local array; poll writes their revents.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if fds[0].revents != 0 {
                match self.command() {
                    Command::Kill => self.kill_all_and_exit(),
                    Command::Term => self.term(),
                    Command::None => {}
                }
            }
            if fds[1].revents != 0 {
                self.drain_signalfd();
                self.reap_some();
                if self.status.is_some() {
                    // A request may have come meanwhile: it decides whether we stay.
                    match self.command() {
                        Command::Kill => self.kill_all_and_exit(),
                        Command::Term => self.kill_coming = true,
                        Command::None => {}
                    }
                    let status = self.status.unwrap_or(0);
                    send_raw(self.control, &encode(EXITED, status, i32::from(self.kill_coming), 0));
                    if !self.kill_coming {
                        // Its background processes live on, as in libvirt.
                        raw::exit_now(0);
                    }
                    self.wait_for_kill();
                }
            }
        }
    }

    /// Reads one request without waiting; a hang-up is a kill.
    fn command(&mut self) -> Command {
        let mut byte = [0u8; 1];
        // SAFETY: the kernel writes at most one byte into `byte`.
        let n = unsafe { libc::recv(self.control, byte.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        match (n, byte[0]) {
            (1, TERM) => Command::Term,
            (1, _) => Command::Kill,
            (0, _) => Command::Kill,
            _ if raw::errno() == libc::EAGAIN || raw::errno() == libc::EINTR => Command::None,
            _ => Command::Kill,
        }
    }

    fn term(&mut self) {
        self.kill_coming = true;
        if self.status.is_none() {
            // The leader is not reaped: its pid, and so its group id, are still its own.
            let target = if self.group != 0 { -self.group } else { self.hook };
            let _ = raw::kill(target, libc::SIGTERM);
            let _ = raw::kill(target, libc::SIGCONT);
        }
    }

    /// After the hook ended with a kill on its way: nothing but the kill (or a hang-up).
    fn wait_for_kill(&mut self) -> ! {
        loop {
            let mut fds = [libc::pollfd {
                fd: self.control,
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one initialised pollfd in a live local array.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
            if let Command::Kill = self.command() {
                self.kill_all_and_exit();
            }
        }
    }

    fn drain_signalfd(&self) {
        let mut info = [0u8; 128];
        // Non-blocking: reads until empty. Only the wake-up matters.
        while raw::read_all(self.sigfd, &mut info).is_ok_and(|n| n == info.len()) {}
    }

    /// Reaps the children that have exited: the hook (its status kept) and orphans of the
    /// hook's that ended by themselves. Whether none is left.
    fn reap_some(&mut self) -> bool {
        loop {
            match raw::reap_one(-1) {
                Ok(Some((pid, status))) => {
                    if pid == self.hook {
                        self.status = Some(status);
                    }
                }
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }

    /// SIGKILL to everything under the helper until nothing is; reports and exits.
    ///
    /// Each pass walks the whole tree below the helper and kills every process in it,
    /// each before its children are listed (a killed process forks no more, so the list
    /// is whole). Nothing is reaped until a pass finds none alive: a reaped pid frees its
    /// place under a process limit (`pids.max`, `RLIMIT_NPROC`), and a fork bomb refills
    /// a freed place at once (reaping as they died left 339 of one after 5 s).
    fn kill_all_and_exit(&mut self) -> ! {
        let start = raw::now_millis();
        let reported = self.status.is_some();
        // Ahead of a fork bomb for the CPU where that is allowed (root); else as it is.
        // SAFETY: integer arguments only; it changes this process's priority.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) };
        if self.status.is_none() {
            let target = if self.group != 0 { -self.group } else { self.hook };
            let _ = raw::kill(target, libc::SIGKILL);
        }
        let mut counted = PidSet::new();
        let mut escaped: i32 = 0;
        let leftover = loop {
            let alive = self.kill_pass(&mut counted, &mut escaped);
            if alive == 0 && self.reap_some() {
                break 0;
            }
            if raw::now_millis().saturating_sub(start) > KILL_LIMIT_MS {
                break alive;
            }
            if alive > 0 {
                // Until one of them dies, or a moment passes.
                let mut fds = [libc::pollfd {
                    fd: self.sigfd,
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one initialised pollfd in a live local array.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 1) };
                self.drain_signalfd();
            }
        };
        // What is dead is ours to reap, whatever is left alive.
        self.reap_some();
        let status = match (reported, self.status) {
            (false, Some(s)) => s,
            _ => -1,
        };
        let leftover = i32::try_from(leftover).unwrap_or(i32::MAX);
        send_raw(self.control, &encode(KILLED, escaped, leftover, status));
        raw::exit_now(0)
    }

    /// One pass over the tree below the helper: SIGKILL to each process in it. How many
    /// of them were alive (not zombies).
    fn kill_pass(&self, counted: &mut PidSet, escaped: &mut i32) -> usize {
        let me = sys::getpid();
        let (hook, group) = (self.hook, self.group);
        let mut alive = 0;
        let mut pending = PidStack::new();
        let mut note = |p: &procfs::Proc, pending: &mut PidStack| {
            if !p.alive() {
                return;
            }
            alive += 1;
            if p.pid != hook && counted.insert(p.pid) && (group == 0 || p.pgid != group) {
                *escaped = escaped.saturating_add(1);
            }
            // Too many to hold: its children come to us when it dies, for the next pass.
            pending.push(p.pid);
        };
        for_each_child_of(me, |pid| {
            // Looked at first (once killed it may be a zombie by the time we look, and
            // go uncounted); our child, not reaped: the pid is still this process's.
            let seen = procfs::read_stat(pid);
            let _ = raw::kill(pid, libc::SIGKILL);
            if let Some(p) = seen {
                note(&p, &mut pending);
            }
        });
        while let Some(parent) = pending.pop() {
            for_each_child_of(parent, |pid| {
                // Not our child: pinned, then checked to be the child of the one it was
                // listed under (or ours, reparented since), so that a pid reaped and
                // handed out again meanwhile is never signalled.
                let Ok(fd) = raw::pidfd_open(pid) else { return };
                if let Some(p) = procfs::read_stat(pid).filter(|p| p.ppid == parent || p.ppid == me) {
                    let _ = raw::pidfd_kill(fd, libc::SIGKILL);
                    note(&p, &mut pending);
                }
                raw::close(fd);
            });
        }
        alive
    }
}

/// Calls `each` with the pid of each child of `pid` (those of all its threads).
fn for_each_child_of(pid: pid_t, mut each: impl FnMut(pid_t)) {
    let mut path = [0u8; 48];
    let Some(tasks) = raw::proc_path(&mut path, b"/proc/", u64::from(pid.unsigned_abs()), b"/task") else {
        return;
    };
    let Ok(dir) = raw::open(tasks, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) else {
        return;
    };
    let mut any = false;
    let _ = raw::for_each_entry(dir, |name| {
        let Some(tid) = raw::parse_decimal(name) else {
            return true;
        };
        let mut rel = [0u8; 40];
        if let Some(children) = raw::proc_path(&mut rel, b"", tid, b"/children") {
            if let Ok(fd) = raw::openat(dir, children, libc::O_RDONLY | libc::O_CLOEXEC) {
                any = true;
                let _ = raw::for_each_pid_in(fd, &mut each);
                raw::close(fd);
            }
        }
        true
    });
    raw::close(dir);
    if !any {
        for_each_child_by_scan(pid, each);
    }
}

/// Without `children` files (a kernel without CONFIG_PROC_CHILDREN): all of /proc.
fn for_each_child_by_scan(parent: pid_t, mut each: impl FnMut(pid_t)) {
    let Ok(dir) = raw::open(c"/proc", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) else {
        return;
    };
    let _ = raw::for_each_entry(dir, |name| {
        if let Some(pid) = raw::parse_decimal(name).and_then(|n| pid_t::try_from(n).ok()) {
            if procfs::read_stat(pid).is_some_and(|p| p.ppid == parent) {
                each(pid);
            }
        }
        true
    });
    raw::close(dir);
}

/// The processes a kill pass has yet to look below, without allocating; when full it
/// takes no more (their children are reparented to the helper as they die, and the next
/// pass finds them).
struct PidStack {
    pids: [pid_t; 1024],
    len: usize,
}

impl PidStack {
    fn new() -> Self {
        PidStack {
            pids: [0; 1024],
            len: 0,
        }
    }

    fn push(&mut self, pid: pid_t) {
        if let Some(slot) = self.pids.get_mut(self.len) {
            *slot = pid;
            self.len += 1;
        }
    }

    fn pop(&mut self) -> Option<pid_t> {
        self.len = self.len.checked_sub(1)?;
        self.pids.get(self.len).copied()
    }
}

/// A fixed-size set of pids (open addressing), to count each process once without
/// allocating. When full it stops counting new ones.
struct PidSet {
    slots: [pid_t; 1024],
    len: usize,
}

impl PidSet {
    fn new() -> Self {
        PidSet {
            slots: [0; 1024],
            len: 0,
        }
    }

    /// Whether `pid` (> 0) was not in it yet, and is now.
    fn insert(&mut self, pid: pid_t) -> bool {
        if pid <= 0 || self.len >= self.slots.len() - 1 {
            return false;
        }
        let n = self.slots.len();
        let mut i = (pid as usize).wrapping_mul(2654435761) % n;
        loop {
            match self.slots.get_mut(i) {
                Some(slot) if *slot == pid => return false,
                Some(slot) if *slot == 0 => {
                    *slot = pid;
                    self.len += 1;
                    return true;
                }
                _ => i = (i + 1) % n,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        assert_eq!(decode(&encode(KILLED, 3, 1, -1)), (KILLED, 3, 1, -1));
    }

    #[test]
    fn pid_sets_count_each_once() {
        let mut set = PidSet::new();
        assert!(set.insert(42));
        assert!(!set.insert(42));
        assert!(set.insert(42 + 1024));
        assert!(!set.insert(0));
        let added = (1..5000).filter(|&p| set.insert(p)).count();
        assert_eq!(set.len, 1023, "it fills up, then refuses ({added} added)");
    }
}
