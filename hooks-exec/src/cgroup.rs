//! A cgroup v2 of its own for each exec hook: what the hook starts stays in it whatever
//! it does (a new session, a double fork), nothing else is ever in it, and
//! `cgroup.kill` kills all of it at once, forks in flight included.
//!
//! Where: `<this process's cgroup>/virt-hooks/<pid>-<start>-<n>`. The v2 hierarchy is
//! found in `/proc/self/mountinfo` (on a hybrid host it is mounted beside the v1
//! controllers, e.g. at `/sys/fs/cgroup/unified`) and this process's place in it from the
//! `0::` line of `/proc/self/cgroup`. Under systemd that is the service's own cgroup
//! (libvirtd's, for hooks it runs). `virt-hooks` holds no process, so it may enable the
//! `memory` and `pids` controllers for the hooks' cgroups (cgroup v2 lets only a cgroup
//! without processes do so: the "no internal processes" rule) when its parent passes them
//! down. Hook cgroups are removed once empty; one a hook's daemon still lives in is
//! removed later, by this process or, once it is gone, by the next one that probes.
//!
//! Every step is checked once per process ([`setup`]) and each call falls back to the
//! per-hook subreaper when any step fails: containment is never a reason to fail a hook.
//! A cgroup that a user could write (a delegated subtree anywhere above) is refused: its
//! owner could move the hook's processes out of it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

use crate::procfs;

/// The cgroup under this process's own that holds the hooks' cgroups.
pub(crate) const PARENT: &str = "virt-hooks";

/// Where this process makes hook cgroups, and what they can do.
#[derive(Debug)]
pub(crate) struct Setup {
    /// `<own cgroup>/virt-hooks`, as a path.
    pub(crate) parent: PathBuf,
    /// The same, as `/proc/<pid>/cgroup` names it.
    parent_name: String,
    /// `<pid>-<start time>-`: names made by this process.
    prefix: String,
    next: AtomicU64,
    /// Controllers enabled for the hook cgroups.
    pub(crate) memory: bool,
    pub(crate) pids: bool,
}

static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();

/// Set when a call found that cgroups cannot work here after all (a seccomp filter that
/// refuses `clone3`, a read-only cgroupfs): later calls go straight to the subreaper.
static GIVEN_UP: OnceLock<String> = OnceLock::new();

/// This process's cgroup setup, probed at the first call; `Err` says why hooks cannot
/// get a cgroup here.
pub(crate) fn setup() -> Result<&'static Setup, &'static str> {
    if let Some(why) = GIVEN_UP.get() {
        return Err(why);
    }
    match SETUP.get_or_init(probe) {
        Ok(s) => Ok(s),
        Err(why) => Err(why),
    }
}

/// No more cgroups in this process, for this reason.
pub(crate) fn give_up(why: String) {
    tracing::warn!(reason = %why, "exec hooks get no cgroup from now on");
    let _ = GIVEN_UP.set(why);
}

/// Whether a failure with this errno will happen again on every call (rather than
/// pass, as a full pids limit or a lack of memory may).
pub(crate) fn recurs(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | libc::EROFS
    )
}

fn probe() -> Result<Setup, String> {
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own_cgroup(&own).ok_or("this process is in no cgroup v2 (no `0::` line in /proc/self/cgroup)")?;
    let (mount, dir) = locate(own)?;
    let parent = dir.join(PARENT);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", parent.display())),
    }
    check_owners(&mount.point, &parent)?;
    if !parent.join("cgroup.kill").exists() {
        return Err(format!(
            "{} has no cgroup.kill (it needs Linux 5.14 or later)",
            parent.display()
        ));
    }
    // Pass down what the parent may have; `virt-hooks` holds no process, so it can.
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| available.split_ascii_whitespace().any(|a| a == *c))
        .collect();
    if !wanted.is_empty() {
        let change: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        if let Err(e) = fs::write(parent.join("cgroup.subtree_control"), change.join(" ")) {
            tracing::debug!(cgroup = %parent.display(), error = %e, "cannot enable controllers for hook cgroups");
        }
    }
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |c: &str| enabled.split_ascii_whitespace().any(|e| e == c);
    let me = procfs::read_stat(crate::sys::getpid()).ok_or("cannot read /proc/self/stat")?;
    let setup = Setup {
        parent_name: format!("{}/{PARENT}", own.trim_end_matches('/')),
        prefix: format!("{}-{}-", me.pid, me.start),
        next: AtomicU64::new(0),
        memory: has("memory"),
        pids: has("pids"),
        parent,
    };
    setup.sweep();
    Ok(setup)
}

/// The cgroup2 mount and the directory of the cgroup `own` (as `/proc/<pid>/cgroup`
/// names it), checked to belong to root or this user all the way down.
fn locate(own: &str) -> Result<(Mount, PathBuf), String> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mount = find_cgroup2(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
    let dir = cgroup_dir(&mount, own).ok_or_else(|| {
        format!(
            "its cgroup {own} is not under the cgroup2 mount at {}",
            mount.point.display()
        )
    })?;
    check_owners(&mount.point, &dir)?;
    Ok((mount, dir))
}

/// What [`setup`] would find in a process in the cgroup `own` (as `/proc/<pid>/cgroup`
/// names it), creating nothing: where hook cgroups would go and which controllers they
/// would get. For telling people what another process (a libvirt daemon) gives its hooks.
pub(crate) fn preview(own: &str) -> Result<(PathBuf, bool, bool), String> {
    let (mount, dir) = locate(own)?;
    let parent = dir.join(PARENT);
    // Made already (by an earlier call), it says what it passes down; else what it could.
    let (kill_file, controllers) = if parent.is_dir() {
        check_owners(&mount.point, &parent)?;
        (parent.join("cgroup.kill"), parent.join("cgroup.subtree_control"))
    } else {
        (dir.join("cgroup.kill"), dir.join("cgroup.subtree_control"))
    };
    if !kill_file.exists() && dir != mount.point {
        return Err(format!(
            "{} has no cgroup.kill (it needs Linux 5.14 or later)",
            dir.display()
        ));
    }
    let enabled = fs::read_to_string(controllers).unwrap_or_default();
    let has = |c: &str| enabled.split_ascii_whitespace().any(|e| e == c);
    Ok((parent, has("memory"), has("pids")))
}

/// What the hooks' cgroups under `parent` are and give, for people.
pub(crate) fn describe(parent: &Path, memory: bool, pids: bool) -> String {
    let controllers = match (memory, pids) {
        (true, true) => "memory and pids limits apply; CPU time and peak memory are recorded".to_owned(),
        (true, false) => {
            "memory limits apply, pids limits do not (no pids controller); CPU time and peak memory are recorded"
                .to_owned()
        }
        (false, true) => "pids limits apply; CPU time is recorded; memory limits and peak memory are \
                          unavailable (no memory controller)"
            .to_owned(),
        (false, false) => "CPU time is recorded; memory and pids limits and peak memory are unavailable (no \
                           memory or pids controller)"
            .to_owned(),
    };
    format!("a cgroup v2 of its own under {} ({controllers})", parent.display())
}

/// The cgroup2 mount: where it is, and which cgroup its root is.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
}

/// The first `cgroup2` line of `/proc/self/mountinfo`.
fn find_cgroup2(mountinfo: &str) -> Option<Mount> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = before.split(' ');
        let root = unescape(fields.nth(3)?);
        let point = unescape(fields.next()?);
        Some(Mount {
            root: String::from_utf8(root).ok()?,
            point: PathBuf::from(OsStr::from_bytes(&point)),
        })
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')));
        match octal.and_then(|n| u8::try_from(n).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// A process's cgroup v2 path, from its `/proc/<pid>/cgroup`.
pub(crate) fn own_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/') && !p.ends_with(" (deleted)"))
}

/// The directory of the cgroup `own` (as `/proc/self/cgroup` names it) under `mount`.
fn cgroup_dir(mount: &Mount, own: &str) -> Option<PathBuf> {
    let relative = if mount.root == "/" {
        own
    } else {
        own.strip_prefix(mount.root.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if relative.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(relative)
    })
}

/// Every cgroup from the mount down to `dir` must belong to root or to this process's
/// user: the owner of a delegated one (and of its `cgroup.procs`) could move a hook's
/// processes out of the hook's cgroup.
fn check_owners(mount: &Path, dir: &Path) -> Result<(), String> {
    let euid = crate::sys::geteuid();
    let below = dir
        .strip_prefix(mount)
        .map_err(|_| format!("{} is not under {}", dir.display(), mount.display()))?;
    let mut at = mount.to_path_buf();
    for step in std::iter::once(None).chain(below.components().map(Some)) {
        if let Some(c) = step {
            at.push(c);
        }
        for file in [at.clone(), at.join("cgroup.procs")] {
            let meta = fs::metadata(&file).map_err(|e| format!("cannot stat {}: {e}", file.display()))?;
            if meta.uid() != 0 && meta.uid() != euid {
                return Err(format!(
                    "{} belongs to uid {} (a delegated cgroup), who could move hooks out of theirs",
                    file.display(),
                    meta.uid()
                ));
            }
        }
    }
    Ok(())
}

/// Hook cgroups that were not empty when their call ended (a daemon the hook left): tried
/// again at each new cgroup, removed once empty.
static LEFT_BEHIND: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl Setup {
    /// Removes the empty hook cgroups of processes that have exited (the name says who
    /// made each); those of live processes are theirs to remove.
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.parent) else {
            return;
        };
        for entry in entries.flatten().take(4096) {
            let name = entry.file_name();
            let Some((pid, start)) = creator(name.as_bytes()) else {
                continue;
            };
            let alive = procfs::read_stat(pid).is_some_and(|p| p.start == start);
            if !alive {
                // Fails (EBUSY) while a process is still in it.
                let _ = remove(&entry.path());
            }
        }
    }

    /// What the hooks' cgroups are and give, for people.
    pub(crate) fn describe(&self) -> String {
        describe(&self.parent, self.memory, self.pids)
    }
}

/// `<pid>-<start>-<n>` → (pid, start).
fn creator(name: &[u8]) -> Option<(libc::pid_t, u64)> {
    let mut parts = name.split(|&b| b == b'-');
    let pid = crate::raw::parse_decimal(parts.next()?)?;
    let start = crate::raw::parse_decimal(parts.next()?)?;
    crate::raw::parse_decimal(parts.next()?)?;
    parts
        .next()
        .is_none()
        .then_some((libc::pid_t::try_from(pid).ok()?, start))
}

/// Limits for a hook's cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub(crate) memory_max: Option<u64>,
    pub(crate) pids_max: Option<u64>,
}

/// What a hook's cgroup measured.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) cpu: Option<Duration>,
    pub(crate) memory_peak: Option<u64>,
}

/// One hook's cgroup. Dropping it removes it, or leaves it for later if a process is
/// still in it.
#[derive(Debug)]
pub(crate) struct HookCgroup {
    path: PathBuf,
    /// As `/proc/<pid>/cgroup` names it.
    name: String,
    dir: OwnedFd,
    /// It has the memory controller (and so `memory.peak`).
    memory: bool,
    /// Held by the watchdog, which kills it if this process dies mid-call.
    watched: Option<crate::watchdog::Watched>,
}

impl HookCgroup {
    /// Makes a new, empty cgroup for one call, with `limits`; a limit that cannot apply
    /// here is named in `notes`.
    pub(crate) fn create(setup: &Setup, limits: Limits, notes: &mut Vec<String>) -> io::Result<HookCgroup> {
        retry_left_behind();
        let mut made = None;
        for _ in 0..16 {
            let n = setup.next.fetch_add(1, Ordering::Relaxed);
            let leaf = format!("{}{n}", setup.prefix);
            let path = setup.parent.join(&leaf);
            match fs::create_dir(&path) {
                Ok(()) => {
                    made = Some((path, leaf));
                    break;
                }
                // Left by an earlier process with our pid and start time: impossible
                // unless the clock went back; take another name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", path.display()),
                    ))
                }
            }
        }
        let (path, leaf) = made.ok_or_else(|| io::Error::other("no free hook cgroup name"))?;
        let dir = match rustix::fs::open(
            &path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())));
            }
        };
        let mut cgroup = HookCgroup {
            name: format!("{}/{leaf}", setup.parent_name),
            path,
            dir,
            memory: setup.memory,
            watched: None,
        };
        // Before the hook exists: there is no moment when this process could die and
        // leave it running.
        match crate::watchdog::watch(cgroup.dir.as_fd()) {
            Ok(w) => cgroup.watched = Some(w),
            Err(e) => notes.push(format!(
                "it would outlive this process if this process died during the call: no watchdog ({e})"
            )),
        }
        let mut limit = |what: &str, file: &str, enabled: bool, value: Option<u64>| {
            let Some(value) = value else { return };
            let applied = if enabled {
                cgroup
                    .write(file, value.to_string().as_bytes())
                    .map_err(|e| e.to_string())
            } else {
                Err(format!("no {what} controller for {}", setup.parent.display()))
            };
            if let Err(why) = applied {
                notes.push(format!("its {what} limit ({value}) is not enforced: {why}"));
            }
        };
        limit("memory", "memory.max", setup.memory, limits.memory_max);
        limit("pids", "pids.max", setup.pids, limits.pids_max);
        // A tree the hook makes below its cgroup stays shallow and small enough for
        // `remove_below` to take whole (a deeper one was never swept, and each left
        // behind made every later event walk it). Core files, no controller needed.
        for (file, value) in [
            ("cgroup.max.depth", MAX_HOOK_DEPTH),
            ("cgroup.max.descendants", MAX_HOOK_DESCENDANTS),
        ] {
            if let Err(e) = cgroup.write(file, value.to_string().as_bytes()) {
                tracing::debug!(cgroup = %cgroup.path.display(), file, error = %e, "cannot bound the hook's cgroup tree");
            }
        }
        Ok(cgroup)
    }

    /// Its directory, for `CLONE_INTO_CGROUP`.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, file: &str, value: &[u8]) -> io::Result<()> {
        let fd = rustix::fs::openat(&self.dir, file, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
        let written = rustix::io::write(&fd, value)?;
        if written != value.len() {
            return Err(io::Error::other(format!("short write to {file}")));
        }
        Ok(())
    }

    fn read(&self, file: &str) -> io::Result<String> {
        let fd = rustix::fs::openat(&self.dir, file, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        io::read_to_string(fs::File::from(fd))
    }

    /// The processes in it now.
    pub(crate) fn procs(&self) -> Vec<libc::pid_t> {
        let mut pids = Vec::new();
        if let Ok(text) = self.read("cgroup.procs") {
            procfs::for_each_pid(text.as_bytes(), false, |p| pids.push(p));
        }
        pids
    }

    /// SIGKILL to every process in it, atomically with respect to forks.
    pub(crate) fn kill(&self) -> io::Result<()> {
        self.write("cgroup.kill", b"1")
    }

    /// Whether a live process is in it (zombies do not count).
    pub(crate) fn populated(&self) -> bool {
        // Unreadable: assume the worst, so that it is not removed under a process.
        self.read("cgroup.events").map_or(true, |e| {
            e.lines()
                .any(|l| l.split_once(' ').is_some_and(|(k, v)| k == "populated" && v != "0"))
        })
    }

    /// Waits up to `limit` for it to be empty; whether it is.
    pub(crate) fn wait_empty(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if !self.populated() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether `pid` is (or was, as a zombie) in it.
    pub(crate) fn holds(&self, pid: libc::pid_t) -> bool {
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|t| own_cgroup(&t).is_some_and(|name| name == self.name))
    }

    /// CPU time (`cpu.stat`'s `usage_usec`) and, with the memory controller, peak memory
    /// (`memory.peak`, Linux 5.19 or later).
    pub(crate) fn usage(&self) -> Usage {
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
        };
        let cpu = self
            .read("cpu.stat")
            .ok()
            .and_then(|t| field(&t, "usage_usec"))
            .map(Duration::from_micros);
        let memory_peak = self
            .memory
            .then(|| self.read("memory.peak").ok()?.trim().parse().ok())
            .flatten();
        Usage { cpu, memory_peak }
    }
}

impl Drop for HookCgroup {
    fn drop(&mut self) {
        // The call is over: whatever is left in it (a daemon of a hook that succeeded)
        // outlives this process, as in libvirt.
        drop(self.watched.take());
        // Fails (EBUSY) while a process is still in it.
        if remove(&self.path).is_err() {
            let mut left = LEFT_BEHIND.lock().unwrap_or_else(PoisonError::into_inner);
            left.push(std::mem::take(&mut self.path));
        }
    }
}

fn retry_left_behind() {
    let mut left = LEFT_BEHIND.lock().unwrap_or_else(PoisonError::into_inner);
    left.retain(|path| match remove(path) {
        Ok(()) => false,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    });
}

/// Removes an empty cgroup and the empty cgroups below it (a hook that ran a program
/// using this crate has its own `virt-hooks` inside). Fails (EBUSY) while a process is
/// in any of them.
fn remove(path: &Path) -> io::Result<()> {
    remove_below(path, 8)
}

/// How deep the cgroups a hook may make below its own go; `remove_below` looks deeper.
const MAX_HOOK_DEPTH: u32 = 4;
/// How many cgroups a hook may make below its own.
const MAX_HOOK_DESCENDANTS: u32 = 64;

fn remove_below(path: &Path, depth: u32) -> io::Result<()> {
    match fs::remove_dir(path) {
        // Only a cgroup with cgroups below it needs a look inside (cgroupfs says EBUSY,
        // other file systems ENOTEMPTY).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) && depth > 0 => {}
        done => return done,
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            // Cgroups are the directories; the rest are its interface files.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_below(&entry.path(), depth - 1)?;
            }
        }
    }
    fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_beside_v1_controllers() {
        assert_eq!(
            find_cgroup2(HYBRID),
            Some(Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup/unified".into()
            })
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(find_cgroup2(unified).unwrap().point, Path::new("/sys/fs/cgroup"));
        // Only v1: nothing to use.
        assert_eq!(find_cgroup2(&HYBRID.replace("cgroup2", "cgroup")), None);
        // A mount point with a space, as the kernel escapes it.
        let spaced = "41 31 0:38 /a\\040b /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(spaced),
            Some(Mount {
                root: "/a b".into(),
                point: "/mnt/my cg".into()
            })
        );
        assert_eq!(find_cgroup2("garbage\n- - -\n\n"), None);
    }

    #[test]
    fn finds_its_own_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/libvirtd.service\n";
        assert_eq!(own_cgroup(text), Some("/system.slice/libvirtd.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert_eq!(own_cgroup("0::/gone (deleted)\n"), None);
        assert_eq!(own_cgroup("0::relative\n"), None);
    }

    #[test]
    fn places_it_under_the_mount() {
        let mount = Mount {
            root: "/".into(),
            point: "/sys/fs/cgroup/unified".into(),
        };
        assert_eq!(cgroup_dir(&mount, "/").unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            cgroup_dir(&mount, "/system.slice/libvirtd.service").unwrap(),
            Path::new("/sys/fs/cgroup/unified/system.slice/libvirtd.service")
        );
        assert_eq!(cgroup_dir(&mount, "/a/../../etc"), None);
        // A mount of a subtree (a container's view): only what is inside it.
        let sub = Mount {
            root: "/lxc/c1".into(),
            point: "/sys/fs/cgroup".into(),
        };
        assert_eq!(cgroup_dir(&sub, "/lxc/c1/x").unwrap(), Path::new("/sys/fs/cgroup/x"));
        assert_eq!(cgroup_dir(&sub, "/lxc/c10"), None);
        assert_eq!(cgroup_dir(&sub, "/other"), None);
    }

    #[test]
    fn names_say_who_made_them() {
        assert_eq!(creator(b"4242-98765-3"), Some((4242, 98765)));
        for bad in [&b"virt"[..], b"1-2", b"1-2-3-4", b"a-2-3", b"1--3"] {
            assert_eq!(creator(bad), None, "{bad:?}");
        }
    }

    /// A hook's cgroup with an empty `virt-hooks` inside (the hook ran a program that
    /// uses this crate) is removed whole.
    #[test]
    fn removes_empty_cgroups_below() {
        let tmp = tempfile::tempdir().unwrap();
        let hook = tmp.path().join("1-2-3");
        fs::create_dir_all(hook.join("virt-hooks/4-5-6")).unwrap();
        remove(&hook).unwrap();
        assert!(!hook.exists());
    }

    /// A cgroup a user owns, anywhere from the mount down, is refused.
    #[test]
    fn a_delegated_cgroup_is_refused() {
        if crate::sys::geteuid() != 0 {
            eprintln!("SKIPPED a_delegated_cgroup_is_refused: needs root (to chown)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        let dir = mount.join("system.slice/user-owned/leaf");
        fs::create_dir_all(&dir).unwrap();
        for d in [
            mount.to_path_buf(),
            mount.join("system.slice"),
            mount.join("system.slice/user-owned"),
            dir.clone(),
        ] {
            fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(check_owners(mount, &dir), Ok(()));
        std::os::unix::fs::chown(mount.join("system.slice/user-owned/cgroup.procs"), Some(65534), None).unwrap();
        let err = check_owners(mount, &dir).unwrap_err();
        assert!(err.contains("user-owned/cgroup.procs belongs to uid 65534"), "{err}");
        std::os::unix::fs::chown(mount.join("system.slice/user-owned/cgroup.procs"), Some(0), None).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        assert!(check_owners(mount, &dir)
            .unwrap_err()
            .contains("leaf belongs to uid 65534"));
    }
}
