//! Finds what a hook started outside its process group: descendants that called
//! `setsid` or `setpgid`, and, when this process is a child subreaper, the hook's
//! orphans that were reparented here. Read from `/proc` (no cgroups needed). Each
//! process is frozen with SIGSTOP as it is found, so nothing can fork away while the
//! tree is walked, and is pinned with a pidfd, so a recycled pid is never signalled.
//!
//! A process that keeps changing its pid (it forks, the parent exits, over and over)
//! can outrun a walk of `/proc`: by the time the walk reaches it, it is another
//! process. So a process group that an escapee made and that holds nothing but the
//! hook's processes is also stopped, and then killed, as a whole: the kernel gives a
//! group signal to a child being forked at that moment too. And in a subreaper, after
//! the kill, this process's new children (where such a process lands when its parent
//! dies, whatever its group) are killed and reaped as they appear, until none has for a
//! short while.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::sys;

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that a process a
/// hook detached (a double fork, `setsid`) is reparented here rather than to init when
/// its parent exits. A timed-out or dropped call can then find it and kill it too;
/// without this, one that was already orphaned when the call ended is out of reach.
///
/// A program that runs hooks, like `hookctl`, calls it once at start, before it runs
/// any. Such a program inherits the daemons that successful hooks leave behind (they
/// are left running, as libvirt does) and must reap them when they exit, if it lives
/// long. While one of its calls is being killed, a child of this process that started
/// after that call's hook and that this crate did not spawn counts as the hook's, so it
/// should not start other processes while hooks run.
///
/// # Errors
/// The `prctl` error (Linux only).
///
/// ```no_run
/// // First thing in main, before any hook runs.
/// hooks_exec::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
/// ```
pub fn become_subreaper() -> io::Result<()> {
    sys::set_child_subreaper()
}

/// Held (shared) from just before a spawn until its pid is registered, and (exclusive)
/// while a sweep looks for orphans: a sweep never sees a hook that a concurrent call
/// spawned but has not registered yet.
static SPAWN_GATE: RwLock<()> = RwLock::new(());

/// The hooks this crate spawned and has not reaped yet, in every thread: never taken
/// for another call's orphans.
static SUPERVISED: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Hold this across a spawn and the [`register`] of its pid.
pub(crate) fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWN_GATE.read().unwrap_or_else(PoisonError::into_inner)
}

fn sweeping() -> RwLockWriteGuard<'static, ()> {
    SPAWN_GATE.write().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn register(pid: libc::pid_t) {
    SUPERVISED.lock().unwrap_or_else(PoisonError::into_inner).push(pid);
}

pub(crate) fn unregister(pid: libc::pid_t) {
    let mut set = SUPERVISED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = set.iter().position(|&p| p == pid) {
        set.swap_remove(i);
    }
}

fn supervised() -> Vec<libc::pid_t> {
    SUPERVISED.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// One line of `/proc/<pid>/stat`, the fields we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: libc::pid_t,
    ppid: libc::pid_t,
    pgid: libc::pid_t,
    /// Start time in clock ticks after boot: with the pid, who it is.
    start: u64,
    /// Dead, not reaped yet.
    zombie: bool,
}

fn parse_stat(pid: libc::pid_t, stat: &[u8]) -> Option<Proc> {
    // The command name is in parentheses and may itself contain any byte but NUL.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let zombie = matches!(fields.next()?, "Z" | "X");
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Fields 6 to 21, then starttime (22).
    let start = fields.nth(16)?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgid,
        start,
        zombie,
    })
}

fn read_stat(pid: libc::pid_t) -> Option<Proc> {
    parse_stat(pid, &std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The pids of this process's children (those of every thread), from
/// `/proc/self/task/*/children`, oldest first: far quicker than a walk of `/proc`.
/// `None` where the kernel has no such file.
fn children_of_self() -> Option<Vec<libc::pid_t>> {
    if !Path::new("/proc/thread-self/children").exists() {
        return None;
    }
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread that exited meanwhile handed its children to another one.
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<libc::pid_t>().ok()),
            );
        }
    }
    Some(pids)
}

/// Every process we can see. Ones that exit meanwhile are simply missing.
fn scan() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(read_stat)
        .collect()
}

/// A process held by a pidfd where the kernel has them, so that a signal or a wait can
/// never reach another process that got the same pid.
#[derive(Debug)]
struct Pinned {
    pid: libc::pid_t,
    start: u64,
    /// Its process group when it was found.
    pgid: libc::pid_t,
    fd: Option<OwnedFd>,
}

impl Pinned {
    /// `None` if the process is gone, or its pid now names another one.
    fn new(p: &Proc) -> Option<Pinned> {
        let fd = match sys::pidfd_open(p.pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
            // No pidfds (old kernel, out of descriptors): signal by pid.
            Err(_) => None,
        };
        // The descriptor was opened before this check, so it is the process we saw.
        (read_stat(p.pid)?.start == p.start).then_some(Pinned {
            pid: p.pid,
            start: p.start,
            pgid: p.pgid,
            fd,
        })
    }

    fn signal(&self, sig: libc::c_int) {
        let r = match &self.fd {
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), sig),
            None => sys::kill(self.pid, sig),
        };
        if let Err(err) = r {
            if err.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(pid = self.pid, signal = sig, error = %err, "cannot signal a process the hook started");
            }
        }
    }

    fn has_exited(&self) -> bool {
        match &self.fd {
            Some(fd) => {
                let mut pfd = [libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // Readable once it has exited.
                matches!(sys::poll(&mut pfd, 0), Ok(1))
            }
            None => std::fs::read(format!("/proc/{}/stat", self.pid))
                .ok()
                .and_then(|s| {
                    let dead = s.rsplit(|&b| b == b')').next()?.trim_ascii_start().starts_with(b"Z");
                    Some(dead || parse_stat(self.pid, &s)?.start != self.start)
                })
                .unwrap_or(true),
        }
    }

    /// Reaps it if it is a dead child of ours; anything else (not ours, still alive) is
    /// left as it is.
    fn try_reap(&self) {
        // WNOHANG never blocks; any error (not our child) is the answer.
        let options = libc::WEXITED | libc::WNOHANG;
        let _ = match &self.fd {
            Some(fd) => sys::waitid(sys::WaitId::PidFd(fd.as_fd()), options),
            // Without a pidfd only a child of ours that is still this process.
            None if read_stat(self.pid).is_some_and(|p| p.start == self.start) => {
                sys::waitid(sys::WaitId::Pid(self.pid), options)
            }
            None => Ok(0),
        };
    }
}

/// Dead processes are normally gone within microseconds of SIGKILL; one stuck in the
/// kernel (a hung NFS read) is not waited for longer than this.
const REAP_WAIT: Duration = Duration::from_secs(1);

/// New processes can appear while the tree is walked (a process forks just before it is
/// frozen); after this many rounds, or this long, the walk gives up rather than chase a
/// fork bomb.
const MAX_ROUNDS: usize = 32;
const CATCH_LIMIT: Duration = Duration::from_secs(1);

/// In a subreaper, the mop-up after the kill ends once no new orphan has appeared for
/// this long (the children of a killed process are reparented here as it dies)...
const QUIET: Duration = Duration::from_millis(30);

/// ... or after this long in all, rather than chase a fork bomb forever.
const MOP_UP_LIMIT: Duration = Duration::from_secs(1);

/// Between two looks at this process's children while none is new.
const MOP_UP_POLL: Duration = Duration::from_millis(1);

/// Waits (briefly) for each of `pinned` to be dead, then reaps those that are ours.
fn settle(pinned: &[&Pinned]) {
    let until = Instant::now() + REAP_WAIT;
    while pinned.iter().any(|p| !p.has_exited()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A process is reparented when its parent exits, so all of them have their last
    // parent now.
    for p in pinned {
        p.try_reap();
    }
    if let Some(p) = pinned.iter().find(|p| !p.has_exited()) {
        tracing::warn!(pid = p.pid, "a killed process started by a hook has not exited yet");
    }
}

/// Where a pinned process is kept.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Member(usize),
    Escapee(usize),
}

/// What a hook left outside the reach of its group signal, found and frozen so that it
/// can be killed, then reaped.
#[derive(Debug)]
pub(crate) struct Sweep {
    leader: libc::pid_t,
    group: bool,
    me: libc::pid_t,
    /// The hook's start time, when this process is a subreaper: a child of ours that
    /// started after the hook and is not another call's hook is the hook's orphan.
    orphans_after: Option<u64>,
    /// In the hook's process group: the group signals reach them; pinned to reap them.
    members: Vec<Pinned>,
    /// Outside it: each gets SIGSTOP when found, SIGKILL from [`Sweep::kill`].
    escapees: Vec<Pinned>,
    /// Everything pinned so far, by (pid, start time).
    known: HashMap<(libc::pid_t, u64), Slot>,
    /// Process groups of escapees, holding nothing but the hook's processes when found:
    /// stopped and killed as a whole.
    groups: HashSet<libc::pid_t>,
}

impl Sweep {
    /// For the hook `leader` (not reaped yet); `group` says whether it leads its own
    /// process group (otherwise it shares ours and signals reach only the leader).
    pub(crate) fn new(leader: libc::pid_t, group: bool) -> Self {
        let orphans_after = if sys::is_child_subreaper() {
            read_stat(leader).map(|p| p.start)
        } else {
            None
        };
        Sweep {
            leader,
            group,
            me: sys::getpid(),
            orphans_after,
            members: Vec::new(),
            escapees: Vec::new(),
            known: HashMap::new(),
            groups: HashSet::new(),
        }
    }

    /// A child of ours (a subreaper) that started after the hook and that no call
    /// spawned: the hook's orphan, as far as anyone can tell.
    fn is_orphan(&self, p: &Proc, supervised: &[libc::pid_t]) -> bool {
        self.orphans_after.is_some_and(|after| {
            p.ppid == self.me
                && p.pid != self.leader
                && (p.start, p.pid) > (after, self.leader)
                && !supervised.contains(&p.pid)
                // A plain background child of another call's hook.
                && !(p.pgid != self.leader && supervised.contains(&p.pgid))
        })
    }

    /// How many processes had left the hook's group (or, without one, descended from it).
    pub(crate) fn escaped(&self) -> usize {
        self.escapees.len()
    }

    /// Finds and freezes everything the group signal does not reach, until a round finds
    /// nothing new. Call it with the group stopped, so that only what is outside the group
    /// can still fork.
    pub(crate) fn catch(&mut self) {
        let until = Instant::now() + CATCH_LIMIT;
        for _ in 0..MAX_ROUNDS {
            if !self.round() {
                return;
            }
            if Instant::now() >= until {
                break;
            }
        }
        tracing::warn!(
            hook = self.leader,
            "processes kept appearing while the hook's process tree was walked"
        );
    }

    /// One walk of `/proc`; whether it found a new escapee, or anything else that calls
    /// for another walk.
    fn round(&mut self) -> bool {
        // Only orphans can be mistaken for another call's hook, so only they need the gate.
        let _gate = self.orphans_after.is_some().then(sweeping);
        let supervised = supervised();
        // Orphans first, from the short list of our children: stopped within moments of
        // being seen, as a walk of all of /proc could not, so that one that keeps
        // changing its pid (each new one lands here) is caught before it forks again.
        let mut found = self.take_orphans(&supervised, libc::SIGSTOP);
        let procs = scan();
        let in_group = |p: &Proc| self.group && p.pgid == self.leader;
        let mut children: HashMap<libc::pid_t, Vec<usize>> = HashMap::new();
        for (i, p) in procs.iter().enumerate() {
            children.entry(p.ppid).or_default().push(i);
        }

        let mut roots = vec![self.leader];
        for p in &procs {
            // Escapees still there (not a recycled pid of one that was reaped).
            let escapee = matches!(self.known.get(&(p.pid, p.start)), Some(Slot::Escapee(_)));
            if in_group(p) || escapee || self.is_orphan(p, &supervised) {
                roots.push(p.pid);
            }
        }
        let mut seen = HashSet::new();
        while let Some(pid) = roots.pop() {
            if seen.insert(pid) {
                roots.extend(children.get(&pid).into_iter().flatten().map(|&i| procs[i].pid));
            }
        }

        for p in procs.iter().filter(|p| seen.contains(&p.pid)) {
            if p.pid == self.leader || p.pid == self.me || self.known.contains_key(&(p.pid, p.start)) {
                continue;
            }
            let Some(pinned) = Pinned::new(p) else {
                // Gone since the scan, and reaped. It may have forked first, and its
                // child, too new for this scan, is now elsewhere (reparented): look again.
                found = true;
                continue;
            };
            found |= self.take(p, pinned, libc::SIGSTOP);
        }
        self.freeze_groups(&procs, &seen, &supervised) || found
    }

    /// Stops, as a whole, each process group that an escapee is in and that holds
    /// nothing but the hook's processes (`seen`): unlike a SIGSTOP to each pid found,
    /// this also reaches a member that forked after the scan, and its child even if it
    /// is being forked right now. Never our own group, the hook's (it has its own
    /// signals) or another call's hook's. Whether a group was stopped for the first time:
    /// what it held then is not pinned yet.
    fn freeze_groups(&mut self, procs: &[Proc], seen: &HashSet<libc::pid_t>, supervised: &[libc::pid_t]) -> bool {
        let ours = sys::getpgrp();
        // Each group in the scan: whether all its members are the hook's.
        let mut only_the_hooks: HashMap<libc::pid_t, bool> = HashMap::new();
        for p in procs {
            *only_the_hooks.entry(p.pgid).or_insert(true) &= seen.contains(&p.pid);
        }
        let mut candidates: Vec<libc::pid_t> = self
            .escapees
            .iter()
            .map(|p| p.pgid)
            .filter(|g| !self.groups.contains(g))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut new = false;
        for group in candidates {
            if group <= 1 || group == ours || group == self.leader || supervised.contains(&group) {
                continue;
            }
            // Not in the scan (all gone), or something else is in it (a daemon an earlier
            // hook left, say).
            if only_the_hooks.get(&group) != Some(&true) {
                continue;
            }
            if self.signal_group(group, libc::SIGSTOP) {
                self.groups.insert(group);
                new = true;
            }
        }
        new
    }

    /// Signals a process group of escapees, if it is still the group they are in: a group
    /// id stays taken while any member is not reaped, so one of the escapees that still
    /// is, still in it, proves that the id was not recycled. Whether it was signalled.
    fn signal_group(&self, group: libc::pid_t, sig: libc::c_int) -> bool {
        let held = self
            .escapees
            .iter()
            .filter(|p| p.pgid == group)
            .any(|p| read_stat(p.pid).is_some_and(|now| now.start == p.start && now.pgid == group));
        // A negative pid addresses the group.
        held && sys::kill(-group, sig).is_ok()
    }

    /// SIGKILL to every escapee found so far and to their groups (the hook's group gets
    /// its own signals).
    pub(crate) fn kill(&self) {
        // The groups first: their ids are surely still theirs while the escapees in them
        // are stopped.
        for &group in &self.groups {
            self.signal_group(group, libc::SIGKILL);
        }
        for p in &self.escapees {
            p.signal(libc::SIGKILL);
        }
    }

    /// Waits (briefly) for everything found to be dead, then reaps what was reparented to
    /// us. In a subreaper, then kills and reaps the hook's orphans that still come here
    /// (see [`Sweep::mop_up`]). Call it after [`Sweep::kill`], the group's SIGKILL and the
    /// hook's reaping. The last walk ran with the group stopped, so it saw every member.
    pub(crate) fn reap(&mut self) {
        settle(&self.members.iter().chain(&self.escapees).collect::<Vec<_>>());
        let from = (self.members.len(), self.escapees.len());
        self.mop_up();
        settle(
            &self.members[from.0..]
                .iter()
                .chain(&self.escapees[from.1..])
                .collect::<Vec<_>>(),
        );
    }

    /// In a subreaper: kills (and reaps) the hook's orphans as they come here, until none
    /// has for [`QUIET`] (at most [`MOP_UP_LIMIT`]). A process that kept changing its pid
    /// can have escaped the walks, but it lands here whenever its parent dies; each one
    /// killed can fork no more, so only one that forked first is left to catch, and it
    /// comes here as its parent dies.
    fn mop_up(&mut self) {
        if self.orphans_after.is_none() {
            return;
        }
        let start = Instant::now();
        let mut last = start;
        loop {
            let new = {
                let _gate = sweeping();
                self.take_orphans(&supervised(), libc::SIGKILL)
            };
            let now = Instant::now();
            if new {
                last = now;
            } else if now - last >= QUIET {
                return;
            }
            if now - start >= MOP_UP_LIMIT {
                tracing::warn!(
                    hook = self.leader,
                    "orphans of the hook kept appearing after it was killed"
                );
                return;
            }
            if !new {
                std::thread::sleep(MOP_UP_POLL);
            }
        }
    }

    /// Records a process of the hook's just pinned: one in its group joins the members
    /// (the group gets its own signals); any other, an escapee, gets `sig`. Whether it was
    /// an escapee.
    fn take(&mut self, p: &Proc, pinned: Pinned, sig: libc::c_int) -> bool {
        let (slot, escapee) = if self.group && p.pgid == self.leader {
            self.members.push(pinned);
            (Slot::Member(self.members.len() - 1), false)
        } else {
            pinned.signal(sig);
            self.escapees.push(pinned);
            (Slot::Escapee(self.escapees.len() - 1), true)
        };
        self.known.insert((p.pid, p.start), slot);
        escapee
    }

    fn pinned(&self, slot: Slot) -> &Pinned {
        match slot {
            Slot::Member(i) => &self.members[i],
            Slot::Escapee(i) => &self.escapees[i],
        }
    }

    /// `sig` (SIGSTOP or SIGKILL) to the hook's new orphans among this process's
    /// children (but those in its group), which are pinned; whether there was any. The
    /// dead among them are reaped: every look stays quick, however many processes a hook
    /// went through. Call it with the spawn gate held.
    fn take_orphans(&mut self, supervised: &[libc::pid_t], sig: libc::c_int) -> bool {
        if self.orphans_after.is_none() {
            return false;
        }
        // Each is looked at as soon as it is read, the newest first: the one that is
        // running, of a process that keeps changing its pid, is caught before it can fork.
        let (pids, procs) = match children_of_self() {
            Some(mut pids) => {
                pids.reverse();
                (pids, Vec::new())
            }
            None => (Vec::new(), scan().into_iter().filter(|p| p.ppid == self.me).collect()),
        };
        let mut new = false;
        for p in pids.into_iter().filter_map(read_stat).chain(procs) {
            if !self.is_orphan(&p, supervised) {
                continue;
            }
            if let Some(&slot) = self.known.get(&(p.pid, p.start)) {
                if p.zombie {
                    self.pinned(slot).try_reap();
                }
                continue;
            }
            // One that is gone already (reaped elsewhere) counts too: it may have forked
            // first.
            new = true;
            if let Some(pinned) = Pinned::new(&p) {
                self.take(&p, pinned, sig);
                if p.zombie {
                    self.pinned(self.known[&(p.pid, p.start)]).try_reap();
                }
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let line = b"4242 (a) S 1 2 (b) R 77 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1234 56\n";
        assert_eq!(
            parse_stat(4242, line),
            Some(Proc {
                pid: 4242,
                ppid: 77,
                pgid: 4242,
                start: 987654,
                zombie: false,
            })
        );
        assert_eq!(parse_stat(1, b"1 (init) S 0"), None);
    }

    #[test]
    fn reads_this_process() {
        let (me, parent) = (sys::getpid(), std::os::unix::process::parent_id() as libc::pid_t);
        let p = read_stat(me).unwrap();
        assert_eq!(p.ppid, parent);
        assert!(scan().contains(&p));
    }
}
