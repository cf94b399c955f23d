//! Each exec hook is contained exactly: a timeout kills every process the hook started,
//! however it detached, and never a process the embedder started itself.
//!
//! Tests named `*_in_a_subreaper` run in a fresh copy of this binary that made itself a
//! child subreaper (the flag is process-wide), as an embedder following the old advice
//! would. Each runs under both containments: a cgroup of the hook's own (where this
//! process can make one) and the per-hook subreaper. Tests of what only a cgroup can do
//! say so and skip where this process cannot make one (not root, no cgroup v2), or
//! where the controller they need is not enabled.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use virt_hooks_core::outcome::Containment;
use virt_hooks_core::{Driver, HookStatus, Invocation};
use virt_hooks_exec::{ExecHook, ExecOptions};

const IN_CHILD: &str = "HOOKS_EXEC_TEST_IN_SUBREAPER";

/// Runs `body` in a copy of this test binary that is a child subreaper.
fn in_subreaper(test: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_CHILD).is_some_and(|v| v == test) {
        virt_hooks_exec::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        body();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(IN_CHILD, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the copy printed (skips included) shows in this test's output too.
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a subreaper:\n{stdout}\n{stderr}"
    );
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn inv() -> Invocation {
    Invocation::new(
        Driver::Qemu,
        virt_hooks_core::EventArgs::new(["vm1", "prepare", "begin", "-"]),
        None,
    )
}

/// A cgroup where one can be made, then always the per-hook subreaper.
const CONTAINMENTS: [bool; 2] = [true, false];

fn with_timeout(path: &Path, ms: u64, cgroup: bool) -> ExecHook {
    ExecHook::with_options(
        path,
        ExecOptions {
            timeout: Some(Duration::from_millis(ms)),
            cgroup,
            ..Default::default()
        },
    )
}

/// Whether this process gives hooks cgroups; if not, says so (the test is skipped).
fn cgroups_here(test: &str) -> bool {
    let c = virt_hooks_exec::containment();
    if c.kind != Containment::Cgroup {
        eprintln!("SKIPPED {test}: hooks get no cgroup here ({c})");
        return false;
    }
    true
}

fn read_pid(file: &Path) -> libc::pid_t {
    fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

/// Has a /proc entry that is not a zombie.
fn running(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

fn dead_within(pid: libc::pid_t, within: Duration) -> bool {
    let until = Instant::now() + within;
    while running(pid) {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// SIGKILL to a process a test started or expected dead, whatever the test's outcome.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if running(self.0) {
            // SAFETY: kill takes no pointers; the pid was seen running just now and is
            // one this test's hook or the test itself started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// A hook that detaches `sleep 30` as a daemon does (a new session, then its parent
/// exits, so it is orphaned before the timeout), notes its pid in `pidfile`, and hangs.
fn daemonize_then_hang(pidfile: &Path) -> String {
    let f = pidfile.display();
    format!(
        "#!/bin/sh\n\
         setsid sh -c 'sh -c \"echo \\$\\$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 30\" &' </dev/null >/dev/null 2>&1\n\
         while [ ! -s {f} ]; do sleep 0.01; done\n\
         sleep 30\n"
    )
}

/// Waits for a file a hook writes (by rename, so it is whole once it exists).
fn wait_for(file: &Path) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The embedder's case: it is a subreaper (as the docs used to advise) and, while a hook
/// hangs, starts a long-lived child of its own (another guest's VMM). The hook's timeout
/// kills the hook's daemon, and leaves the embedder's child alone.
#[test]
fn a_timeout_spares_the_embedders_own_child_in_a_subreaper() {
    in_subreaper("a_timeout_spares_the_embedders_own_child_in_a_subreaper", || {
        for cgroup in CONTAINMENTS {
            let tmp = tempfile::tempdir().unwrap();
            let pidfile = tmp.path().join("daemon");
            let hook = with_timeout(
                &script(tmp.path(), "hook", &daemonize_then_hang(&pidfile)),
                1000,
                cgroup,
            );
            let (embedder, out) = std::thread::scope(|s| {
                let vmm = s.spawn(|| {
                    // Started while the hook runs: after it, and not by this crate.
                    assert!(wait_for(&pidfile), "the hook never started its daemon");
                    Command::new("sleep").arg("30").spawn().expect("spawn sleep")
                });
                let out = hook.run_blocking(&inv());
                (vmm.join().unwrap(), out)
            });
            let vmm = KillOnDrop(embedder.id() as libc::pid_t);
            assert!(out.status.is_timeout(), "{:?}", out.status);
            let daemon = KillOnDrop(read_pid(&pidfile));
            assert!(
                dead_within(daemon.0, Duration::from_secs(2)),
                "the hook's daemon {} survived its timeout ({:?})",
                daemon.0,
                out.containment
            );
            assert!(
                running(vmm.0),
                "the hook's timeout killed the embedder's own child {} ({:?})",
                vmm.0,
                out.containment
            );
            let mut embedder = embedder;
            let _ = embedder.kill();
            let _ = embedder.wait();
        }
    });
}

/// Without a subreaper anywhere, a daemon the hook detached (orphaned, so reparented to
/// init, before the timeout) dies with the hook's timeout all the same.
#[test]
fn a_timeout_kills_a_detached_daemon_without_a_subreaper() {
    for cgroup in CONTAINMENTS {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("daemon");
        let hook = with_timeout(&script(tmp.path(), "hook", &daemonize_then_hang(&pidfile)), 300, cgroup);
        let out = hook.run_blocking(&inv());
        assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
        let daemon = KillOnDrop(read_pid(&pidfile));
        assert!(
            dead_within(daemon.0, Duration::from_secs(2)),
            "the detached sleep {} survived the timeout ({:?})",
            daemon.0,
            out.containment
        );
    }
}

/// The record, and the report's JSON, say which containment each call had.
#[test]
fn the_report_says_which_containment_was_used() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(tmp.path(), "ok", "#!/bin/sh\nexit 0\n");
    let expected = virt_hooks_exec::containment().kind;
    if expected != Containment::Cgroup {
        eprintln!(
            "NOTE the_report_says_which_containment_was_used: hooks get no cgroup here; checking the subreaper only"
        );
    }
    for (cgroup, want) in [(true, expected), (false, Containment::Subreaper)] {
        let options = ExecOptions {
            cgroup,
            ..Default::default()
        };
        let registry = virt_hooks_core::RegistryBuilder::new()
            .hook(Driver::Qemu, ExecHook::with_options(&hook, options))
            .build();
        let event = virt_hooks_core::RawEvent::new(Driver::Qemu, ["vm1", "prepare", "begin", "-"]);
        let report = registry.fire_blocking(&event).unwrap();
        assert_eq!(report.hooks[0].containment, Some(want));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["hooks"][0]["containment"], want.as_str(), "{json}");
        // Measured in a cgroup only.
        assert_eq!(report.hooks[0].cpu_us.is_some(), want == Containment::Cgroup, "{json}");
    }
}

/// A shell loop that burns CPU for a while (~100 ms on a slow machine).
const BUSY: &str = "#!/bin/sh\ni=0\nwhile [ $i -lt 100000 ]; do i=$((i+1)); done\n";

/// CPU time counts every process in the hook's cgroup, those that left its group
/// included; peak memory is there where the memory controller is.
#[test]
fn cpu_time_and_peak_memory_are_recorded_in_a_cgroup() {
    if !cgroups_here("cpu_time_and_peak_memory_are_recorded_in_a_cgroup") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let idle = ExecHook::new(script(tmp.path(), "idle", "#!/bin/sh\nexit 0\n")).run_blocking(&inv());
    let busy_path = script(tmp.path(), "busy", BUSY);
    // The busy loop runs in a new session, as a detached process would.
    let detached = script(
        tmp.path(),
        "detached",
        &format!(
            "#!/bin/sh\nsetsid {} </dev/null >/dev/null 2>&1 &\nwait\n",
            busy_path.display()
        ),
    );
    let busy = ExecHook::new(&detached).run_blocking(&inv());
    assert!(busy.status.is_success(), "{:?}", busy.status);
    let (idle_cpu, busy_cpu) = (idle.cpu_time.unwrap(), busy.cpu_time.unwrap());
    assert!(busy_cpu > idle_cpu, "busy {busy_cpu:?} vs idle {idle_cpu:?}");
    let c = virt_hooks_exec::containment();
    if c.memory {
        assert!(busy.memory_peak.is_some_and(|m| m > 0), "{:?}", busy.memory_peak);
    } else {
        eprintln!("SKIPPED peak memory: no memory controller for hook cgroups here ({c})");
        assert_eq!(busy.memory_peak, None);
    }
}

/// `memory_max` stops a hook that allocates past it, where the memory controller is;
/// elsewhere the record says the limit was not enforced.
#[test]
fn a_memory_limit_applies_where_the_controller_is() {
    let tmp = tempfile::tempdir().unwrap();
    let c = virt_hooks_exec::containment();
    let options = ExecOptions {
        memory_max: Some(16 << 20),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    if !c.memory {
        eprintln!("SKIPPED enforcing memory_max: no memory controller for hook cgroups here ({c})");
        let ok = script(tmp.path(), "ok", "#!/bin/sh\nexit 0\n");
        let out = ExecHook::with_options(&ok, options).run_blocking(&inv());
        assert!(out.status.is_success(), "{:?}", out.status);
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("memory limit") && w.contains("not enforced")),
            "{:?}",
            out.warnings
        );
        return;
    }
    // Holds 64 MiB in the shell's memory.
    let hog = script(
        tmp.path(),
        "hog",
        "#!/bin/sh\nx=$(head -c 67108864 /dev/zero | tr '\\0' x)\necho ${#x}\n",
    );
    let out = ExecHook::with_options(&hog, options).run_blocking(&inv());
    assert!(
        !out.status.is_success(),
        "it got past its memory limit: {:?}",
        out.status
    );
}

/// `max_processes` stops a hook that forks past it, where the pids controller is;
/// elsewhere the record says the limit was not enforced.
#[test]
fn a_process_limit_applies_where_the_controller_is() {
    let tmp = tempfile::tempdir().unwrap();
    let c = virt_hooks_exec::containment();
    let forker = script(
        tmp.path(),
        "forker",
        "#!/bin/sh\nn=0\nwhile [ $n -lt 20 ]; do sleep 5 & n=$((n+1)); done\nkill $(jobs -p) 2>/dev/null\nexit 0\n",
    );
    let options = ExecOptions {
        max_processes: Some(5),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let out = ExecHook::with_options(&forker, options).run_blocking(&inv());
    if c.pids {
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains("fork"), "{:?}: {stderr}", out.status);
    } else {
        eprintln!("SKIPPED enforcing max_processes: no pids controller for hook cgroups here ({c})");
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("pids limit") && w.contains("not enforced")),
            "{:?}",
            out.warnings
        );
    }
}

/// The directory of the cgroup named by a `/proc/<pid>/cgroup` text.
fn cgroup_dir_of(text: &str) -> PathBuf {
    let name = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim();
    let parent = virt_hooks_exec::containment().cgroup_parent.unwrap();
    parent.join(Path::new(name).file_name().unwrap())
}

/// A hook's cgroup is gone after its call; one a hook's daemon lives in stays until the
/// daemon is gone, and a later call removes it.
#[test]
fn a_hooks_cgroup_is_removed_once_empty() {
    if !cgroups_here("a_hooks_cgroup_is_removed_once_empty") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = script(tmp.path(), "plain", "#!/bin/sh\ncat /proc/self/cgroup\n");
    let out = ExecHook::new(&plain).run_blocking(&inv());
    let dir = cgroup_dir_of(&String::from_utf8_lossy(&out.stdout));
    assert!(!dir.exists(), "{} is still there", dir.display());

    let pidfile = tmp.path().join("daemon");
    let leaves = script(
        tmp.path(),
        "leaves",
        &format!(
            "#!/bin/sh\ncat /proc/self/cgroup\nsetsid sh -c 'echo $$ > {f}; exec sleep 30' </dev/null >/dev/null 2>&1 &\n\
             while [ ! -s {f} ]; do sleep 0.01; done\n",
            f = pidfile.display()
        ),
    );
    let out = ExecHook::new(&leaves).run_blocking(&inv());
    assert!(out.status.is_success(), "{:?}", out.status);
    let dir = cgroup_dir_of(&String::from_utf8_lossy(&out.stdout));
    let daemon = KillOnDrop(read_pid(&pidfile));
    assert!(running(daemon.0), "a successful hook's daemon was killed");
    assert!(dir.exists(), "{} was removed under its daemon", dir.display());
    let pid = daemon.0;
    drop(daemon);
    assert!(
        dead_within(pid, Duration::from_secs(2)),
        "the daemon {pid} survived SIGKILL"
    );
    // Its parent (init) reaps it; a zombie would not keep the cgroup populated anyway.
    let until = Instant::now() + Duration::from_secs(5);
    while dir.exists() && Instant::now() < until {
        let _ = ExecHook::new(&plain).run_blocking(&inv());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.exists(), "{} outlived its daemon", dir.display());
}

/// A hook cannot make a cgroup tree below its own deeper than the removal looks: one
/// twelve levels deep was never removed, and every later event walked it.
#[test]
fn a_hooks_cgroup_tree_stays_shallow_enough_to_be_removed() {
    if !cgroups_here("a_hooks_cgroup_tree_stays_shallow_enough_to_be_removed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deep = script(
        tmp.path(),
        "deep",
        "#!/bin/sh\ncat /proc/self/cgroup\n\
         m=$(awk '{for (i = 1; i <= NF; i++) if ($i == \"-\") { if ($(i+1) == \"cgroup2\") print $5; break }}' /proc/self/mountinfo | head -n 1)\n\
         cg=\"$m$(sed -n 's/^0:://p' /proc/self/cgroup)\"\n\
         mkdir -p \"$cg/a/b/c/d/e/f/g/h/i/j/k/l\" 2>/dev/null\nexit 0\n",
    );
    let out = ExecHook::new(&deep).run_blocking(&inv());
    assert!(out.status.is_success(), "{:?}", out.status);
    let dir = cgroup_dir_of(&String::from_utf8_lossy(&out.stdout));
    assert!(!dir.exists(), "{} and the tree below it are still there", dir.display());
}

/// A hook that kills its own helper (it is root: it can) gets a clear error, is killed
/// itself, and nothing hangs.
#[test]
fn a_hook_that_kills_its_helper_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("hook");
    let hook = script(
        tmp.path(),
        "parricide",
        &format!(
            "#!/bin/sh\necho $$ > {}\nkill -9 $PPID\nexec sleep 30\n",
            pidfile.display()
        ),
    );
    let options = ExecOptions {
        cgroup: false,
        timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    };
    let t = Instant::now();
    let out = ExecHook::with_options(&hook, options).run_blocking(&inv());
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    // Whenever it died (before or after the hook was reported running), it says so.
    match &out.status {
        HookStatus::Failed(e) => {
            let why = virt_hooks_core::error::chain(e);
            assert!(why.contains("helper process died"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    let pid = KillOnDrop(read_pid(&pidfile));
    assert!(
        dead_within(pid.0, Duration::from_secs(2)),
        "the hook {} survived",
        pid.0
    );
}

const AS_NOBODY: &str = "HOOKS_EXEC_TEST_AS_NOBODY";
const NOBODY: u32 = 65534;

/// Runs `body` in a copy of this test binary running as nobody with at most `nproc`
/// processes (a normal user's limit, which root would not be held to): a fork bomb in it
/// stays that size. Skipped loudly where this process cannot change its user.
fn as_nobody(test: &str, nproc: u64, body: impl FnOnce()) {
    if std::env::var_os(AS_NOBODY).is_some_and(|v| v == test) {
        body();
        return;
    }
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root to run a copy of itself as nobody");
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(AS_NOBODY, test)
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: nproc,
                rlim_max: nproc,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} as nobody:\n{stdout}\n{stderr}"
    );
}

/// The live processes whose command line contains `marker`.
fn marked(marker: &str) -> Vec<libc::pid_t> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) && running(pid) {
            found.push(pid);
        }
    }
    found
}

/// Stops then kills every process marked `marker`, until none is left (a bomb that got
/// away must not outlive its test).
fn kill_marked(marker: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let pids = marked(marker);
        if pids.is_empty() {
            return;
        }
        for sig in [libc::SIGSTOP, libc::SIGKILL] {
            for &pid in &pids {
                // SAFETY: kill takes no pointers; these run as nobody, as this copy does.
                unsafe { libc::kill(pid, sig) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A hook that turns into a fork bomb of new sessions: each process leaves its group,
/// forks two and exits, so every one is an orphan of the helper, and the user's process
/// limit keeps a few hundred alive, refilled as fast as any dies. Its timeout kills all of
/// it (killing child by child and reaping as they died freed a slot for each one killed:
/// 339 were still there when the helper gave up after 5 s).
#[test]
fn a_setsid_fork_bomb_dies_with_its_timeout_under_the_subreaper() {
    as_nobody(
        "a_setsid_fork_bomb_dies_with_its_timeout_under_the_subreaper",
        300,
        || {
            let tmp = tempfile::tempdir().unwrap();
            let marker = format!("VHBOMB{}", std::process::id());
            let hook = script(
                tmp.path(),
                "bomb",
                &format!(
                    "#!/usr/bin/perl\n\
                 use POSIX qw(setsid);\n\
                 $SIG{{TERM}} = 'IGNORE'; $0 = '{marker}';\n\
                 if (fork() == 0) {{\n\
                   while (1) {{ setsid(); my $a = fork(); my $b = fork();\n\
                     if ((defined $a && $a == 0) || (defined $b && $b == 0)) {{ next }}\n\
                     exit 0 if (defined $a || defined $b); select(undef, undef, undef, 0.005) }}\n\
                 }}\n\
                 sleep 1000;\n"
                ),
            );
            let out = with_timeout(&hook, 1000, false).run_blocking(&inv());
            let left = marked(&marker);
            kill_marked(&marker);
            assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
            assert_eq!(out.containment, Some(Containment::Subreaper));
            assert!(
                left.is_empty(),
                "{} bomb processes outlived the kill: {out:?}",
                left.len()
            );
            assert!(
                out.warnings.iter().all(|w| !w.contains("still running")),
                "{:?}",
                out.warnings
            );
        },
    );
}

const DOOMED_CALLER: &str = "HOOKS_EXEC_TEST_DOOMED_CALLER";

/// The caller is SIGKILLed in the middle of a call (the OOM killer, an operator's
/// `kill -9`): the hook and the daemon it detached die with it, under either containment,
/// rather than run on untimed (in a cgroup they did, for good: nothing was left to time
/// them out).
#[test]
fn a_hook_dies_with_its_caller() {
    const TEST: &str = "a_hook_dies_with_its_caller";
    if let Some(hook) = std::env::var_os(DOOMED_CALLER) {
        // The copy: runs the hook until it is killed.
        let cgroup = std::env::var_os("HOOKS_EXEC_TEST_CGROUP").is_some();
        let out = with_timeout(Path::new(&hook), 60_000, cgroup).run_blocking(&inv());
        panic!("the call was expected to be cut off by a kill: {out:?}");
    }
    for cgroup in CONTAINMENTS {
        if cgroup && !cgroups_here(TEST) {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let daemon_file = tmp.path().join("daemon");
        let hook_file = tmp.path().join("hook");
        let hook = script(
            tmp.path(),
            "hang",
            &daemonize_then_hang(&daemon_file).replacen(
                "#!/bin/sh\n",
                &format!("#!/bin/sh\necho $$ > {0}.tmp; mv {0}.tmp {0}\n", hook_file.display()),
                1,
            ),
        );
        let mut caller = Command::new(std::env::current_exe().unwrap());
        caller
            .args([TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(DOOMED_CALLER, &hook);
        if cgroup {
            caller.env("HOOKS_EXEC_TEST_CGROUP", "1");
        }
        let mut caller = caller.spawn().unwrap();
        assert!(wait_for(&daemon_file) && wait_for(&hook_file), "the hook did not start");
        let (hook_pid, daemon) = (KillOnDrop(read_pid(&hook_file)), KillOnDrop(read_pid(&daemon_file)));
        caller.kill().unwrap();
        caller.wait().unwrap();
        let mode = if cgroup { "in a cgroup" } else { "under a helper" };
        assert!(
            dead_within(hook_pid.0, Duration::from_secs(5)),
            "{mode}: the hook {} outlived its caller",
            hook_pid.0
        );
        assert!(
            dead_within(daemon.0, Duration::from_secs(5)),
            "{mode}: the hook's daemon {} outlived its caller",
            daemon.0
        );
    }
}

/// A root hook moves a child of its that ignores SIGTERM out of its cgroup (into the
/// caller's own), keeping its process group: the timeout still kills it, through the
/// group, and the record says what happened.
#[test]
fn a_process_moved_out_of_the_hooks_cgroup_is_killed_through_its_group() {
    const TEST: &str = "a_process_moved_out_of_the_hooks_cgroup_is_killed_through_its_group";
    if !cgroups_here(TEST) {
        return;
    }
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
    let mount = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4).map(str::to_owned))
        .unwrap();
    let procs = Path::new(&mount).join(own.trim_start_matches('/')).join("cgroup.procs");
    let tmp = tempfile::tempdir().unwrap();
    let moved_file = tmp.path().join("moved");
    let hook = script(
        tmp.path(),
        "mover",
        &format!(
            "#!/bin/sh\n(trap '' TERM; exec sleep 30) &\necho $! > {procs}\necho $! > {f}.tmp; mv {f}.tmp {f}\nsleep 30\n",
            procs = procs.display(),
            f = moved_file.display()
        ),
    );
    let out = with_timeout(&hook, 1000, true).run_blocking(&inv());
    let moved = KillOnDrop(read_pid(&moved_file));
    assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
    assert!(
        dead_within(moved.0, Duration::from_secs(2)),
        "the process moved out of the hook's cgroup survived: {out:?}"
    );
    assert!(
        out.warnings.iter().any(|w| w.contains("moved out of its cgroup")),
        "{:?} (stderr: {})",
        out.warnings,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `source` (C, with pthreads) into `dir/name`; `None` (the test skips, loudly)
/// without a C compiler.
fn compile_c(dir: &Path, name: &str, source: &str) -> Option<PathBuf> {
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, source).unwrap();
    let out = dir.join(name);
    match Command::new("cc")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-pthread")
        .status()
    {
        Ok(s) if s.success() => Some(out),
        other => {
            eprintln!("SKIPPED: cannot compile {name} with cc: {other:?}");
            None
        }
    }
}

/// A process alive by any thread (its leader may be a zombie while the others run).
fn alive_by_any_thread(pid: libc::pid_t) -> bool {
    fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
        tasks.flatten().any(|t| {
            fs::read_to_string(t.path().join("stat"))
                .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
        })
    })
}

/// A process whose leader thread called `exit` (not `exit_group`) while a second thread
/// runs on looks dead (`Z`) and is not: `cgroup.kill` passed it by, and the helper's
/// kill neither counted it nor looked below it. Its timeout kills it, and the child its
/// thread started, under either containment; needs no root powers at all.
#[test]
fn a_process_with_a_dead_leader_thread_dies_with_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("zleader.pid");
    let childfile = tmp.path().join("child");
    let Some(program) = compile_c(
        tmp.path(),
        "zleader",
        &format!(
            r#"#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
static void *run(void *arg) {{
    (void)arg;
    pid_t child = fork();
    if (child == 0) {{ setsid(); execl("/bin/sleep", "sleep", "1000", (char *)0); _exit(1); }}
    FILE *f = fopen("{child}.tmp", "w"); fprintf(f, "%d\n", child); fclose(f);
    rename("{child}.tmp", "{child}");
    f = fopen("{pid}.tmp", "w"); fprintf(f, "%d\n", getpid()); fclose(f);
    rename("{pid}.tmp", "{pid}");
    for (;;) pause();
}}
int main(void) {{
    signal(SIGTERM, SIG_IGN);
    pthread_t t;
    pthread_create(&t, 0, run, 0);
    syscall(SYS_exit, 0);
}}
"#,
            child = childfile.display(),
            pid = pidfile.display()
        ),
    ) else {
        return;
    };
    for cgroup in CONTAINMENTS {
        if cgroup && !cgroups_here("a_process_with_a_dead_leader_thread_dies_with_its_timeout") {
            continue;
        }
        let _ = fs::remove_file(&pidfile);
        let _ = fs::remove_file(&childfile);
        let hook = script(
            tmp.path(),
            "hook",
            &format!(
                "#!/bin/sh\ntrap '' TERM\nsetsid {} </dev/null >/dev/null 2>&1 &\nexec sleep 1000\n",
                program.display()
            ),
        );
        let out = with_timeout(&hook, 1000, cgroup).run_blocking(&inv());
        let mode = if cgroup { "in a cgroup" } else { "under a helper" };
        assert!(wait_for(&pidfile), "{mode}: the program did not start: {out:?}");
        let (zleader, child) = (KillOnDrop(read_pid(&pidfile)), KillOnDrop(read_pid(&childfile)));
        assert!(
            matches!(out.status, HookStatus::TimedOut(_)),
            "{mode}: {:?}",
            out.status
        );
        let until = Instant::now() + Duration::from_secs(2);
        while alive_by_any_thread(zleader.0) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive_by_any_thread(zleader.0),
            "{mode}: the process with a dead leader thread survived: {:?}",
            out.warnings
        );
        assert!(
            dead_within(child.0, Duration::from_secs(2)),
            "{mode}: its thread's child survived: {:?}",
            out.warnings
        );
    }
}
