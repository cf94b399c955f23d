//! Runs on-disk hook scripts exactly as libvirt does, plus what libvirt lacks.
//!
//! The libvirt contract, to the byte: argv is `[full path, object, op, subop, extra]`
//! with no shell and no PATH lookup; the environment is cleared to `LC_ALL=C` plus
//! `LD_PRELOAD LD_LIBRARY_PATH DYLD_INSERT_LIBRARIES DYLD_FORCE_FLAT_NAMESPACE PATH HOME
//! USER LOGNAME TMPDIR` when the caller has them; every fd ≥ 3 is closed in the child
//! whatever the caller has open; every signal disposition is reset and the mask is
//! empty; stdin is a pipe carrying the document (EPIPE ignored) or `/dev/null`; stdout
//! and stderr are drained together; an exec failure is exit status 127 (ENOENT: the
//! file or its `#!` interpreter is missing) or 126 (anything else, e.g. no `#!` line).
//! No chdir, no setsid, no uid change.
//!
//! Added, all configurable in [`ExecOptions`]: a timeout that kills everything the hook
//! started and reports `TimedOut`; a drain limit so a background child holding the pipes
//! cannot block the caller after the hook exited; output caps that are reported, never
//! silent; memory and process-count limits where cgroups allow.
//!
//! # Containment
//!
//! Each call's processes are contained exactly, so that a timeout or a dropped call
//! kills everything the hook started, however it detached (`setsid`, a double fork, a
//! process that keeps changing its pid), and nothing else:
//!
//! - **A cgroup v2 of its own** wherever this process can make one: under its own
//!   cgroup, in `virt-hooks/` (found from `/proc/self/mountinfo` and `/proc/self/cgroup`,
//!   so hybrid hosts with the v2 hierarchy beside the v1 controllers work too; under
//!   systemd, that is the calling service's cgroup). The hook is created in it
//!   (`clone3` with `CLONE_INTO_CGROUP`): no fork can slip out before a move. A kill is
//!   `cgroup.kill`. The report records its CPU time and, with the memory controller,
//!   its peak memory, and [`ExecOptions::memory_max`] and [`ExecOptions::max_processes`]
//!   apply when the controllers are enabled for it. Needs Linux 5.14 and the right to
//!   write that cgroup (root, or a delegated subtree this process's user owns).
//! - **A per-hook subreaper** everywhere else: a helper process, forked for the call,
//!   that is the child subreaper of that hook alone. All the hook's orphans come back to
//!   it, and a kill goes on until it has no child left. It costs a copy of the caller's
//!   page tables per call (a `fork`).
//!
//! Which one a call got is in [`HookOutcome::containment`] (and the report, and
//! `hookctl`'s audit log); [`containment`] says which one this process gets and why.
//! A failure to contain a hook in a cgroup is never a failure of the hook: the
//! subreaper takes over and a warning says why.
//!
//! On timeout the hook's process group (it gets one whenever there is a timeout) gets
//! TERM and a short grace, then everything is killed. A hook that finishes in time keeps
//! its background processes, as in libvirt (in its cgroup, which is removed once they
//! are gone).
//!
//! **On drop**: dropping the future of [`Hook::call`] inside tokio (a caller's
//! `tokio::time::timeout`, the registry's timeout layer, a cancelled request) kills and
//! reaps the same way, and so does any error or panic in the supervision after a
//! successful spawn: no process is left running and no zombie is left behind. Outside
//! a runtime (`fire_blocking`) the wait happens inside the poll, so there is nothing to
//! drop mid-call: the hook's own timeout is what stops it.
//!
//! The hook's process is made as `posix_spawn` makes one (`CLONE_VM | CLONE_VFORK`, on
//! a stack of its own): no copy of the caller's page tables. Only the helper of the
//! subreaper (and, outside x86-64, the hook started into a cgroup) is a plain copy.
//!
//! ```no_run
//! use virt_hooks_core::{Driver, RegistryBuilder};
//! use virt_hooks_core::events::QemuEvent;
//! use virt_hooks_exec::{ExecHook, ExecOptions};
//! use std::time::Duration;
//!
//! let hook = ExecHook::with_options("/etc/libvirt/hooks/qemu", ExecOptions {
//!     timeout: Some(Duration::from_secs(30)),
//!     ..ExecOptions::default()
//! });
//! let registry = RegistryBuilder::new().hook(Driver::Qemu, hook).build();
//! let ev = QemuEvent::Prepare { name: "vm".into(), xml: "<domain/>\n".into() };
//! if let Err(failure) = registry.fire_blocking(&ev) {
//!     eprintln!("{failure}");
//! }
//! ```
//!
//! # Beside the driver's own children
//!
//! A driver that runs its guests' VMMs as child processes shares its process with the
//! hooks'. What it must and must not do, and what it gets
//! (`tests/driver_children.rs` checks each point from the driver's side: VMMs started
//! before and while a hook hangs, one exiting meanwhile; a plain driver, a subreaper, a
//! tokio driver with `tokio::process` VMMs, one that ignores SIGCHLD and one that reaps
//! with `waitpid(-1)`):
//!
//! - **Its own children are never touched**, whenever they started: a kill reaches the
//!   hook's cgroup or the descendants of its helper, and a VMM is in neither. A VMM that
//!   exits during a call stays a zombie for the driver to reap, with its own status.
//! - **Children of the driver's that are ours**: the hook itself, for the length of its
//!   call, where it has a cgroup; the helper (a `fork` of the driver that never execs),
//!   for the length of a call under the subreaper; and one watchdog per process, named
//!   `hooks-watchdog`, forked at the first cgroup call and alive as long as the driver
//!   (if it dies, the next call starts another). The watchdog holds the cgroup of every
//!   call in flight and kills them if the driver dies mid-call, so that a SIGKILLed
//!   driver leaves no untimed hook. Do not kill or reap any of them; being forks, they
//!   share the driver's pages copy-on-write (a driver that grows after the first call
//!   pays for the watchdog's copy of what it changes).
//! - **Reap by pid only** (`std::process::Child::wait`, `waitpid(pid)`, a pidfd,
//!   `tokio::process`). A `waitpid(-1)` or `wait()` that takes any child (a hand-written
//!   SIGCHLD handler) can take a hook's exit status where the hook is the driver's child:
//!   the call then fails, whatever the hook said (`its exit status was lost: another
//!   part of this program reaped the hook's process`), so an event it vets is refused;
//!   its processes are still killed at its timeout. Under the subreaper such a reaper
//!   takes only the helper, once the helper has reported, which costs nothing.
//! - **Ignoring SIGCHLD** (`SIG_IGN`, `SA_NOCLDWAIT`) makes the kernel reap every
//!   child at once, so no hook can be the driver's child: in such a process every call
//!   runs under the subreaper, and [`containment`] says why.
//! - **A child subreaper** ([`become_subreaper`], `PR_SET_CHILD_SUBREAPER`) is neither
//!   needed nor harmful. In a cgroup the hook's orphans are reparented to the driver while
//!   the call runs; a timeout kills and reaps them. A daemon left by a hook that
//!   succeeded becomes the driver's child in either containment (the helper exits and
//!   its orphans go up), and the driver must reap it once it exits, which it can only
//!   do safely (with `waitpid(-1, WNOHANG)`) while no call is in flight: a driver that
//!   cannot tell is better off not being a subreaper.
//! - **The cgroup** of a call is `<the driver's cgroup>/virt-hooks/<pid>-<start>-<n>`,
//!   made with `clone3(CLONE_INTO_CGROUP)`: it needs cgroup v2 (on a hybrid host, its
//!   mount beside the v1 controllers), Linux 5.14 (`cgroup.kill`), and the right to make
//!   a cgroup in the driver's own: root, with every cgroup from the mount down owned by
//!   root or the driver's user (one that belongs to another user, such as a subtree
//!   delegated to them, is refused, since its owner could move a hook out of its
//!   cgroup). Under systemd that is the unit's cgroup: give the unit `Delegate=yes`,
//!   which says that sub-cgroups of the unit's are the service's to make (systemd then
//!   leaves them alone; with the default `KillMode=control-group` it kills what is in
//!   them when the unit stops, so a successful hook's daemon lives as long as the
//!   driver's unit). Where the driver is at its first call decides where hook cgroups
//!   go for the life of the process: a driver that moves itself to another cgroup does
//!   so before it. Each failing step means the subreaper, never a failed hook
//!   ([`containment`] says which and why).
//! - **Memory and process limits** ([`ExecOptions::memory_max`],
//!   [`ExecOptions::max_processes`]) apply only where the driver's cgroup passes the
//!   `memory` and `pids` controllers down (its `cgroup.subtree_control`); cgroup v2
//!   lets a cgroup that holds processes pass `memory` down only at the root of the
//!   hierarchy, so under a systemd unit, where the driver's cgroup holds the driver,
//!   memory limits do not apply, and the record of a call that sets one says so.
//! - **The subreaper**, to choose it: [`ExecOptions::cgroup`] `false` for an
//!   [`ExecHook`]; for a hooks dir, an exec loader of the driver's own
//!   (`HooksDir::with_loader`) whose `load` sets it.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod cgroup;
mod check;
mod child;
mod env_cmd;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod helper;
mod interpreters;
mod launch;
mod procfs;
mod raw;
mod spawn;
mod supervise;
mod sys;
mod watchdog;

use std::ffi::{CString, OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use virt_hooks_core::backend::{HookLoader, HookSettings, TrustPolicy, Untrusted};
use virt_hooks_core::outcome::Containment;
use virt_hooks_core::{Hook, HookError, HookOutcome, HookStatus, Invocation, LoadError};

pub use check::check_executable;

/// The variables libvirt passes on from the daemon, in libvirt's order, after `LC_ALL=C`.
pub const ENV_WHITELIST: [&str; 9] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "DYLD_INSERT_LIBRARIES",
    "DYLD_FORCE_FLAT_NAMESPACE",
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
];

/// Limits for an exec hook. The defaults keep libvirt's behaviour (no timeout) and add
/// only what cannot change a well-behaved hook's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecOptions {
    /// Kill the hook's process group, and what it started outside it, after this long
    /// and report `TimedOut`. By default there is none, as in libvirt; 30 s is a
    /// sensible value for production hosts. An [`Invocation`] timeout, if shorter, wins.
    pub timeout: Option<Duration>,
    /// After SIGTERM, how long the group has before SIGKILL. By default 200 ms.
    pub kill_grace: Duration,
    /// After the hook exited, how long to keep reading pipes that a background process
    /// still holds open before returning with a warning. By default 1 s.
    pub drain_limit: Duration,
    /// Cap on each of stdout and stderr; more is read and dropped, and the record says
    /// so (a cut filter document fails the hook). By default 16 MiB.
    pub max_output: usize,
    /// Run each call in a cgroup v2 of its own where this process can make one (the
    /// default); `false`: always under a per-hook subreaper. A process that ignores
    /// SIGCHLD always gets the subreaper. See the crate docs.
    pub cgroup: bool,
    /// The most memory the hook's processes may use together, in bytes (`memory.max` of
    /// its cgroup). Applies only where its cgroup has the memory controller; elsewhere
    /// the record carries a warning. By default none.
    pub memory_max: Option<u64>,
    /// The most processes (and threads) the hook may have at once (`pids.max` of its
    /// cgroup). Applies only where its cgroup has the pids controller; elsewhere the
    /// record carries a warning. By default none.
    pub max_processes: Option<u64>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            timeout: None,
            kill_grace: Duration::from_millis(200),
            drain_limit: Duration::from_secs(1),
            max_output: 16 << 20,
            cgroup: true,
            memory_max: None,
            max_processes: None,
        }
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`).
///
/// Hooks do not need it any more: each call has a containment of its own (see the crate
/// docs), and a timeout kills exactly what the hook started, whether or not this process
/// is a subreaper. It is kept for programs that want orphans for their own reasons; such
/// a program inherits the daemons that successful hooks leave behind and must reap them
/// (see the crate docs, "Beside the driver's own children"). None of its own children is
/// ever touched by a hook's timeout.
///
/// # Errors
/// The `prctl` error (Linux only).
pub fn become_subreaper() -> std::io::Result<()> {
    sys::set_child_subreaper()
}

/// Which containment exec hooks get in this process, and why: see [`containment`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainmentInEffect {
    /// What calls get (unless [`ExecOptions::cgroup`] is false, or making a call's
    /// cgroup fails: then the subreaper, and the record says why).
    pub kind: Containment,
    /// Where the hooks' cgroups are made: `<this process's cgroup>/virt-hooks`.
    pub cgroup_parent: Option<PathBuf>,
    /// The memory controller is enabled for them: [`ExecOptions::memory_max`] applies
    /// and peak memory is recorded.
    pub memory: bool,
    /// The pids controller is enabled for them: [`ExecOptions::max_processes`] applies.
    pub pids: bool,
    /// A sentence for people: where the cgroups go and what they measure and limit, or
    /// why there are none.
    pub description: String,
}

impl std::fmt::Display for ContainmentInEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.description)
    }
}

/// Which containment exec hooks would get in the process `pid` (a libvirt daemon that
/// runs `hookctl` as its hook, say: the dispatcher runs in its cgroup), as this process
/// sees it, creating nothing. Root is assumed where `pid` is root's: a cgroup that
/// another user owns is refused as [`containment`] refuses it.
///
/// ```
/// let c = virt_hooks_exec::containment_of(std::process::id()).unwrap();
/// println!("exec hooks of this process would run in {c}");
/// ```
pub fn containment_of(pid: u32) -> std::io::Result<ContainmentInEffect> {
    // SA_NOCLDWAIT cannot be seen from outside; SIG_IGN can.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    if procfs::ignores_signal(&status, libc::SIGCHLD) {
        return Ok(subreaper_in_effect(sys::CHILDREN_REAPED_BY_KERNEL));
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let own =
        cgroup::own_cgroup(&text).ok_or_else(|| std::io::Error::other(format!("process {pid} is in no cgroup v2")))?;
    Ok(match cgroup::preview(own) {
        Ok((parent, memory, pids)) => ContainmentInEffect {
            kind: Containment::Cgroup,
            description: cgroup::describe(&parent, memory, pids),
            cgroup_parent: Some(parent),
            memory,
            pids,
        },
        Err(why) => subreaper_in_effect(&why),
    })
}

fn subreaper_in_effect(why: &str) -> ContainmentInEffect {
    ContainmentInEffect {
        kind: Containment::Subreaper,
        cgroup_parent: None,
        memory: false,
        pids: false,
        description: format!(
            "a per-hook subreaper (no cgroup: {why}); CPU time and peak memory are not recorded, memory and \
             pids limits do not apply"
        ),
    }
}

/// Which containment exec hooks get in this process: a cgroup v2 of their own (where,
/// and whether memory and process limits apply), or a per-hook subreaper (and why no
/// cgroup). The first call (of this or of any hook) looks once, and makes the
/// `virt-hooks` cgroup under this process's own if it can.
///
/// ```
/// let c = virt_hooks_exec::containment();
/// println!("exec hooks run in {c}");
/// ```
pub fn containment() -> ContainmentInEffect {
    if sys::children_reaped_by_kernel() {
        return subreaper_in_effect(sys::CHILDREN_REAPED_BY_KERNEL);
    }
    match cgroup::setup() {
        Ok(setup) => ContainmentInEffect {
            kind: Containment::Cgroup,
            cgroup_parent: Some(setup.parent.clone()),
            memory: setup.memory,
            pids: setup.pids,
            description: setup.describe(),
        },
        Err(why) => subreaper_in_effect(why),
    }
}

/// A hook that is an executable file, run as libvirt runs it.
#[derive(Debug, Clone)]
pub struct ExecHook {
    path: PathBuf,
    name: String,
    program: Arc<CString>,
    leading_args: Arc<[CString]>,
    /// `VIRT_HOOK_CONFIG_<KEY>=value` for its sidecar's `[config]`.
    config_env: Arc<[CString]>,
    options: ExecOptions,
}

impl ExecHook {
    /// A hook for the executable at `path`, with default options. `path` becomes argv\[0\]
    /// as given (libvirt passes the full path).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_options(path, ExecOptions::default())
    }

    /// A hook with chosen limits.
    pub fn with_options(path: impl Into<PathBuf>, options: ExecOptions) -> Self {
        let path = path.into();
        let program = Arc::new(cstring(path.as_os_str()));
        ExecHook {
            name: path.display().to_string(),
            path,
            program,
            leading_args: Arc::new([]),
            config_env: Arc::new([]),
            options,
        }
    }

    /// A hook as its settings file asks: its `timeout` (or the default one),
    /// `max_output`, `memory` (its cgroup's `memory.max`, where there is one) and
    /// `[config]`; what [`ExecLoader`] loads.
    pub fn with_settings(path: impl Into<PathBuf>, settings: &HookSettings) -> Self {
        let mut options = ExecOptions {
            timeout: settings.effective_timeout(None),
            ..ExecOptions::default()
        };
        if let Some(cap) = settings.max_output {
            options.max_output = usize::try_from(cap).unwrap_or(usize::MAX);
        }
        options.memory_max = settings.memory;
        Self::with_options(path, options).with_config(&settings.config)
    }

    /// The plugin's `[config]`, which the hook finds in its environment as
    /// `VIRT_HOOK_CONFIG_<KEY>` (the key upper-cased, `-` as `_`), the value as text:
    /// `max_vcpus = 8` is `VIRT_HOOK_CONFIG_MAX_VCPUS=8`. The only other variables than
    /// libvirt's (besides `VIRT_HOOK_STATE`), and only for hooks that have a config.
    pub fn with_config(mut self, config: &virt_hooks_core::backend::PluginConfig) -> Self {
        self.config_env = config
            .env()
            .map(|(name, value)| cstring(OsStr::new(&format!("{name}={value}"))))
            .collect();
        self
    }

    /// Arguments put between argv\[0\] and libvirt's four, for a hook run through a
    /// launcher (a plugin host, a sandbox wrapper): `program ARGS... object op subop
    /// extra`. Everything else (environment, stdin, limits, the process group) is as
    /// for any exec hook.
    ///
    /// ```
    /// let hook = virt_hooks_exec::ExecHook::new("/usr/bin/env").with_leading_args(["sh", "/etc/hook.sh"]);
    /// # let _ = hook;
    /// ```
    pub fn with_leading_args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        self.leading_args = args.into_iter().map(|a| cstring(a.as_ref())).collect();
        self
    }

    /// Its limits.
    pub fn options(&self) -> &ExecOptions {
        &self.options
    }

    /// Runs the hook on this thread, blocking until it is done.
    pub fn run_blocking(&self, inv: &Invocation) -> HookOutcome {
        self.job(inv).run()
    }

    fn job(&self, inv: &Invocation) -> Job {
        let mut argv = Vec::with_capacity(5 + self.leading_args.len());
        argv.push((*self.program).clone());
        argv.extend(self.leading_args.iter().cloned());
        argv.extend((0..4).map(|i| inv.args().c_str(i).to_owned()));
        let timeout = inv.timeout_with(self.options.timeout);
        let mut env = libvirt_env();
        // The one addition to libvirt's environment, for hooks that asked for state.
        if let Some(dir) = inv.state_dir() {
            let mut pair = OsString::from(STATE_ENV);
            pair.push("=");
            pair.push(dir);
            env.push(cstring(&pair));
        }
        env.extend(self.config_env.iter().cloned());
        Job {
            path: self.path.clone(),
            program: Arc::clone(&self.program),
            argv,
            env,
            input: inv.input_shared().cloned(),
            cancel: Vec::new(),
            cgroup: self.options.cgroup,
            cgroup_limits: cgroup::Limits {
                memory_max: self.options.memory_max,
                pids_max: self.options.max_processes,
            },
            limits: supervise::Limits {
                timeout,
                kill_grace: self.options.kill_grace,
                drain_limit: self.options.drain_limit,
                max_output: self.options.max_output,
            },
        }
    }
}

/// An argument as C wants it. A NUL cannot be passed through exec; libvirt's own
/// arguments never contain one, so it is cut there.
fn cstring(s: &OsStr) -> CString {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).unwrap_or_default()
}

/// The variable naming a hook's state directory (`state = true` in its settings).
pub const STATE_ENV: &str = "VIRT_HOOK_STATE";

/// `LC_ALL=C` plus the whitelisted variables the caller has, in libvirt's order.
fn libvirt_env() -> Vec<CString> {
    let mut env = Vec::with_capacity(1 + ENV_WHITELIST.len());
    env.push(CString::from(c"LC_ALL=C"));
    for name in ENV_WHITELIST {
        if let Some(value) = std::env::var_os(name) {
            let mut pair = OsString::from(name);
            pair.push("=");
            pair.push(value);
            env.push(cstring(&pair));
        }
    }
    env
}

/// Everything one run needs, owned, so it can move to a blocking thread.
struct Job {
    path: PathBuf,
    program: Arc<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    input: Option<Arc<[u8]>>,
    /// Hangs up when the caller's future is dropped (async calls only).
    /// Hang up when the call is dropped or cancelled.
    cancel: Vec<std::os::fd::OwnedFd>,
    /// A cgroup of its own where possible, with these limits.
    cgroup: bool,
    cgroup_limits: cgroup::Limits,
    limits: supervise::Limits,
}

impl Job {
    /// libvirt's rendering of a command in error messages: env, then argv.
    fn command_line(&self) -> String {
        let parts = self
            .env
            .iter()
            .chain(&self.argv)
            .map(|c| String::from_utf8_lossy(c.as_bytes()));
        parts.collect::<Vec<_>>().join(" ")
    }

    fn run(self) -> HookOutcome {
        let start = Instant::now();
        let spawned = spawn::spawn(spawn::Request {
            program: &self.program,
            argv: &self.argv,
            envp: &self.env,
            stdin_pipe: self.input.is_some(),
            new_group: self.limits.timeout.is_some(),
            cgroup: self.cgroup,
            limits: self.cgroup_limits,
        });
        let mut outcome = match spawned {
            // Renamed or removed since the event's scan: as if it had not been there.
            Err(spawn::SpawnError::Exec(libc::ENOENT, _))
                if std::fs::symlink_metadata(&self.path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                HookOutcome::failed(HookError::Gone {
                    path: self.path.clone(),
                })
            }
            Err(spawn::SpawnError::Exec(errno, containment)) => {
                let err = std::io::Error::from_raw_os_error(errno);
                let code = if errno == libc::ENOENT { 127 } else { 126 };
                let mut outcome = HookOutcome::exited(code)
                    .with_stderr(format!("cannot execute binary {}: {err}\n", self.path.display()));
                outcome.containment = Some(containment);
                outcome
            }
            Err(spawn::SpawnError::Setup(source)) => HookOutcome::failed(HookError::Spawn {
                path: self.path.clone(),
                source,
            }),
            Ok(spawned) => {
                let pid = spawned.child.pid;
                let input = self.input.as_deref().unwrap_or_default();
                match supervise::supervise(spawned, input, self.limits, &self.cancel) {
                    Ok(cap) if cap.cancelled => HookOutcome::failed(HookError::Cancelled),
                    Ok(cap) => self.outcome(pid, cap),
                    Err(e) => HookOutcome::failed(HookError::Io(e)),
                }
            }
        };
        outcome.duration = start.elapsed();
        outcome.command = Some(self.command_line());
        outcome
    }

    fn outcome(&self, pid: libc::pid_t, cap: supervise::Captured) -> HookOutcome {
        let status = match (cap.timed_out, cap.exit) {
            (true, _) => HookStatus::TimedOut(self.limits.timeout.unwrap_or_default()),
            (false, supervise::Exit::Code(c)) => HookStatus::Exited(c),
            (false, supervise::Exit::Signal(s)) => HookStatus::Signaled(s),
        };
        let mut outcome = HookOutcome::new(status)
            .with_stdout(cap.stdout.data)
            .with_stderr(cap.stderr.data);
        outcome.stdout_truncated = cap.stdout.truncated;
        outcome.stderr_truncated = cap.stderr.truncated;
        outcome.containment = Some(cap.containment);
        outcome.cpu_time = cap.usage.cpu;
        outcome.memory_peak = cap.usage.memory_peak;
        outcome.warnings.extend(cap.notes);
        if cap.timed_out {
            let escaped = match cap.escaped {
                0 => String::new(),
                1 => " (1 of them had left its process group)".to_owned(),
                n => format!(" ({n} of them had left its process group)"),
            };
            let whole = match cap.containment {
                Containment::Cgroup => "everything in its cgroup",
                _ => "everything under its helper",
            };
            let timeout = virt_hooks_core::backend::format_duration(self.limits.timeout.unwrap_or_default());
            outcome.warnings.push(if cap.not_killed.is_empty() {
                format!("timed out after {timeout}; it ({pid}) and {whole} were killed{escaped}")
            } else {
                format!("timed out after {timeout}; killing it ({pid}) and {whole} did not reach everything{escaped}:")
            });
        }
        outcome.warnings.extend(cap.not_killed);
        if cap.pipes_abandoned {
            outcome.warnings.push(format!(
                "a background process kept its stdout/stderr open {} after it exited; stopped reading (close or redirect them in background children)",
                virt_hooks_core::backend::format_duration(self.limits.drain_limit)
            ));
        }
        if cap.stdout.truncated || cap.stderr.truncated {
            tracing::warn!(hook = %self.path.display(), cap = self.limits.max_output, "hook output cut at the cap");
        }
        outcome
    }
}

#[async_trait]
impl Hook for ExecHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "exec"
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    /// It stops at its timeout itself: TERM, the kill grace, then the kill of everything
    /// in its containment and the reaping take a little longer than the grace.
    fn stop_grace(&self) -> Option<Duration> {
        Some(self.options.kill_grace.saturating_add(Duration::from_millis(500)))
    }

    async fn call(&self, inv: &Invocation) -> HookOutcome {
        let mut job = self.job(inv);
        // A caller's `Cancel` hangs up a pipe the supervisor polls, which then kills and
        // reaps before the call returns: the caller awaits the end.
        let _watching = match inv.cancel().map(virt_hooks_core::Cancel::watch) {
            Some(Ok((fd, watching))) => {
                job.cancel.push(fd);
                Some(watching)
            }
            Some(Err(e)) => return HookOutcome::failed(HookError::Io(e)),
            None => None,
        };
        // Inside a tokio runtime the wait happens on the blocking pool; elsewhere (e.g.
        // `fire_blocking`) right here, with no thread hand-off at all.
        match virt_hooks_core::backend::blocking_pool() {
            Some(rt) => {
                // The blocking task outlives a dropped future. Dropping `_dropped` with it
                // hangs up the pipe the supervisor polls, which then kills and reaps.
                let (watch, _dropped) = match sys::pipe() {
                    Ok(ends) => ends,
                    Err(e) => return HookOutcome::failed(HookError::Io(e)),
                };
                job.cancel.push(watch);
                match rt.spawn_blocking(move || job.run()).await {
                    Ok(outcome) => outcome,
                    Err(e) => HookOutcome::new(HookStatus::Crashed(format!("exec supervisor task failed: {e}"))),
                }
            }
            None => job.run(),
        }
    }
}

/// The exec backend's loader: claims executable regular files (libvirt's rule), after
/// every other backend has had its say.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecLoader;

impl HookLoader for ExecLoader {
    fn backend(&self) -> &'static str {
        "exec"
    }

    fn priority(&self) -> i32 {
        100
    }

    fn claims(&self, _path: &Path, meta: &Metadata) -> bool {
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }

    fn load(&self, path: &Path, settings: &HookSettings) -> Result<Arc<dyn Hook>, LoadError> {
        Ok(Arc::new(ExecHook::with_settings(path, settings)))
    }

    fn check(&self, path: &Path, _settings: &HookSettings) -> Result<(), LoadError> {
        check_executable(path)
    }

    /// A script's `#!` interpreter runs as root with it: it must pass the rule too (a
    /// root-owned script naming a user's `venv/bin/python3` would run that user's code),
    /// and so must its own interpreter (the kernel follows four), any path the
    /// line names (`#!/bin/sh /opt/x`), which must exist, and for `env` whatever env
    /// would run: its `-S` string is split as env splits it, and a command name is
    /// looked up in the `PATH` the hook runs with (this process's, as libvirt passes it
    /// on, or one the line sets). Every directory of that `PATH` must pass, for any
    /// hook; env may set only variables that name no code; words given to an
    /// interpreter are read as it reads them, and a bare name or an option that loads
    /// code by name is refused. What cannot be worked out before the hook runs is
    /// refused, saying why.
    fn check_dependencies(&self, path: &Path, trust: &TrustPolicy) -> Result<(), Untrusted> {
        interpreters::check_what_runs(path, trust, std::env::var_os("PATH").as_deref())
    }
}

static EXEC_LOADER: ExecLoader = ExecLoader;

virt_hooks_core::register_loader!(&EXEC_LOADER);

/// Makes sure this crate, and so its loader, is linked into the program. Call it once
/// from a binary that finds exec hooks only through a hooks directory.
pub fn link() {}
