//! What a hook starts dies with its timeout or a dropped call, even when it left the
//! hook's process group; a daemon left by a hook that succeeded lives on.
//!
//! Tests named `*_in_a_subreaper` run in a fresh copy of this binary that made itself a
//! child subreaper: the flag is process-wide, and orphans must come back to a process
//! that runs no other test (and be reaped by nobody else, so "no zombie" is checked).
//!
//! Each test runs under both containments: a cgroup of the hook's own (where this
//! process can make one) and the per-hook subreaper.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use virt_hooks_core::{Driver, Hook, HookStatus, Invocation};
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
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a subreaper:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
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

fn read_pid(file: &Path) -> libc::pid_t {
    fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

/// Has a /proc entry that is not a zombie.
fn running(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

fn me() -> libc::pid_t {
    // SAFETY: getpid takes nothing, touches no memory and cannot fail.
    unsafe { libc::getpid() }
}

/// Waits up to `within` for the pid to be gone entirely: not running, and not a zombie
/// either (kill(pid, 0) fails with ESRCH only once it is reaped).
fn gone_within(pid: libc::pid_t, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        // SAFETY: kill takes no pointers, and signal 0 only checks that the pid exists.
        let exists =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !exists {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// Kills and reaps a daemon a test expects to survive, whatever the test's outcome.
struct Daemon(libc::pid_t);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill takes no pointers, and waitpid accepts a null status pointer;
        // the pid is a sleep this test started and has not reaped, so it names no other
        // process.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// A hook that starts `sleep 30` in a new session (its pid in `pidfile`), waits until it
/// runs, then hangs.
fn setsid_then_hang(pidfile: &Path) -> String {
    let f = pidfile.display();
    format!(
        "#!/bin/sh\n\
         setsid sh -c 'echo $$ > {f}; exec sleep 30' </dev/null >/dev/null 2>&1 &\n\
         while [ ! -s {f} ]; do sleep 0.01; done\n\
         sleep 30\n"
    )
}

/// The same, with a daemon's double fork: the sleep is orphaned before the timeout, so
/// only a subreaper can still find it.
fn daemonize_then_hang(pidfile: &Path) -> String {
    let f = pidfile.display();
    format!(
        "#!/bin/sh\n\
         setsid sh -c 'sh -c \"echo \\$\\$ > {f}; exec sleep 30\" &' </dev/null >/dev/null 2>&1\n\
         while [ ! -s {f} ]; do sleep 0.01; done\n\
         sleep 30\n"
    )
}

#[test]
fn timeout_kills_a_setsid_escapee_in_a_subreaper() {
    in_subreaper("timeout_kills_a_setsid_escapee_in_a_subreaper", || {
        for cgroup in CONTAINMENTS {
            let tmp = tempfile::tempdir().unwrap();
            let pidfile = tmp.path().join("escapee");
            let hook = with_timeout(&script(tmp.path(), "hook", &setsid_then_hang(&pidfile)), 300, cgroup);
            let t = Instant::now();
            let out = hook.run_blocking(&inv());
            assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
            assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
            assert!(
                out.warnings
                    .iter()
                    .any(|w| w.contains("1 of them had left its process group")),
                "{:?} ({:?})",
                out.warnings,
                out.containment
            );
            let escapee = read_pid(&pidfile);
            assert!(
                gone_within(escapee, Duration::from_secs(2)),
                "the setsid sleep {escapee} is still there (running: {}, {:?})",
                running(escapee),
                out.containment
            );
        }
    });
}

#[test]
fn timeout_kills_a_double_forked_daemon_in_a_subreaper() {
    in_subreaper("timeout_kills_a_double_forked_daemon_in_a_subreaper", || {
        for cgroup in CONTAINMENTS {
            let tmp = tempfile::tempdir().unwrap();
            let pidfile = tmp.path().join("daemon");
            let hook = with_timeout(&script(tmp.path(), "hook", &daemonize_then_hang(&pidfile)), 300, cgroup);
            let t = Instant::now();
            let out = hook.run_blocking(&inv());
            assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
            assert!(out.status.is_timeout(), "{:?}", out.status);
            let daemon = read_pid(&pidfile);
            assert!(
                gone_within(daemon, Duration::from_secs(2)),
                "the orphaned sleep {daemon} is still there (running: {}, {:?})",
                running(daemon),
                out.containment
            );
        }
    });
}

#[test]
fn timeout_kills_a_setsid_escapee_without_a_subreaper() {
    for cgroup in CONTAINMENTS {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("escapee");
        let hook = with_timeout(&script(tmp.path(), "hook", &setsid_then_hang(&pidfile)), 300, cgroup);
        let out = hook.run_blocking(&inv());
        assert!(out.status.is_timeout(), "{:?}", out.status);
        let escapee = read_pid(&pidfile);
        // Killed; init, its parent now, reaps it.
        assert!(
            dead_within(escapee, Duration::from_secs(2)),
            "the setsid sleep {escapee} survived ({:?})",
            out.containment
        );
    }
}

#[test]
fn a_successful_hooks_daemon_survives_a_later_timeout_in_a_subreaper() {
    in_subreaper(
        "a_successful_hooks_daemon_survives_a_later_timeout_in_a_subreaper",
        || {
            for cgroup in CONTAINMENTS {
                let tmp = tempfile::tempdir().unwrap();
                let first = tmp.path().join("first");
                let leaves = script(
                    tmp.path(),
                    "leaves-a-daemon",
                    &format!(
                        "#!/bin/sh\n\
                     setsid sh -c 'echo $$ > {f}; exec sleep 30' </dev/null >/dev/null 2>&1 &\n\
                     while [ ! -s {f} ]; do sleep 0.01; done\n\
                     exit 0\n",
                        f = first.display()
                    ),
                );
                let out = with_timeout(&leaves, 5000, cgroup).run_blocking(&inv());
                assert!(out.status.is_success(), "{:?}", out.status);
                let daemon = Daemon(read_pid(&first));
                assert!(running(daemon.0), "the daemon of a successful hook was killed");
                // Reparented here (when its hook's helper left, under a subreaper).
                assert_eq!(parent_of(daemon.0), Some(me()));

                let second = tmp.path().join("second");
                let hangs = with_timeout(&script(tmp.path(), "hangs", &daemonize_then_hang(&second)), 300, cgroup);
                let out = hangs.run_blocking(&inv());
                assert!(out.status.is_timeout(), "{:?}", out.status);
                let escapee = read_pid(&second);
                assert!(gone_within(escapee, Duration::from_secs(2)), "{escapee} survived");
                assert!(
                    running(daemon.0),
                    "a timeout killed the daemon an earlier hook left ({:?})",
                    out.containment
                );
            }
        },
    );
}

/// Drops the call once the hook wrote `ready`, inside a tokio runtime. The runtime (and
/// so the blocking pool where the call is being killed) is returned to live on while the
/// caller checks.
#[must_use]
fn drop_the_call_when(hook: &ExecHook, ready: &Path) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let written = async {
            while !fs::read_to_string(ready).is_ok_and(|s| s.ends_with('\n')) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let inv = inv();
        let call = tokio::time::timeout(Duration::from_secs(5), hook.call(&inv));
        tokio::select! {
            done = call => panic!("the call ended by itself: {:?}", done.map(|o| o.status)),
            () = written => {}
        }
    });
    rt
}

/// No timeout (so no process group of its own): the hook and its background sleep.
fn hook_with_a_background_sleep(dir: &Path, cgroup: bool) -> (ExecHook, PathBuf, PathBuf) {
    let (hook_pid, bg_pid) = (dir.join("hook"), dir.join("bg"));
    let p = script(
        dir,
        "sleeper",
        &format!(
            "#!/bin/sh\necho $$ > {}\nsleep 30 &\necho $! > {}\nwait\n",
            hook_pid.display(),
            bg_pid.display()
        ),
    );
    let options = ExecOptions {
        cgroup,
        ..Default::default()
    };
    (ExecHook::with_options(p, options), hook_pid, bg_pid)
}

#[test]
fn dropping_the_call_kills_and_reaps_everything_in_a_subreaper() {
    in_subreaper("dropping_the_call_kills_and_reaps_everything_in_a_subreaper", || {
        for cgroup in CONTAINMENTS {
            let tmp = tempfile::tempdir().unwrap();
            let (hook, hook_pid, bg_pid) = hook_with_a_background_sleep(tmp.path(), cgroup);
            let _rt = drop_the_call_when(&hook, &bg_pid);
            let (hook_pid, bg_pid) = (read_pid(&hook_pid), read_pid(&bg_pid));
            assert!(
                gone_within(hook_pid, Duration::from_secs(5)),
                "the hook {hook_pid} is still there (cgroup: {cgroup})"
            );
            assert!(
                gone_within(bg_pid, Duration::from_secs(5)),
                "its sleep {bg_pid} is still there (cgroup: {cgroup})"
            );
        }
    });
}

#[test]
fn dropping_the_call_kills_everything_without_a_subreaper() {
    for cgroup in CONTAINMENTS {
        let tmp = tempfile::tempdir().unwrap();
        let (hook, hook_pid, bg_pid) = hook_with_a_background_sleep(tmp.path(), cgroup);
        let _rt = drop_the_call_when(&hook, &bg_pid);
        let (hook_pid, bg_pid) = (read_pid(&hook_pid), read_pid(&bg_pid));
        // Our child (or our helper's, reaped by it): not even a zombie.
        assert!(
            gone_within(hook_pid, Duration::from_secs(5)),
            "the hook {hook_pid} is still there (cgroup: {cgroup})"
        );
        // Init's child by now, or the helper's: dead is all we can ask.
        assert!(
            dead_within(bg_pid, Duration::from_secs(5)),
            "its sleep {bg_pid} survived (cgroup: {cgroup})"
        );
    }
}

/// A process that keeps changing its pid, as a hook may leave behind: each hop notes its
/// pid in `$1`, starts the next one in the background (a forked subshell, after `sleep
/// $3` unless `$3` is 0; with `$4` set to `setsid`, a fresh copy of the script in a new
/// session instead) and exits, so what is running is never the same process for more
/// than a moment. It stops by itself after `$2` hops, or at the next hop once `$1.stop`
/// exists. Every 200th hop is a fresh copy too, so that the forked subshells' nesting
/// stays bounded.
const HOPPER: &str = r#"#!/bin/sh
f=$1 n=$2 d=$3 s=$4
hop() {
    read pid _ < /proc/self/stat
    echo "$pid" >> "$f"
    [ -e "$f.stop" ] && exit 0
    n=$((n - 1))
    [ "$n" -le 0 ] && exec sleep 5
    [ "$d" = 0 ] || sleep "$d"
    if [ -n "$s" ] || [ $((n % 200)) = 0 ]; then
        $s "$0" "$f" "$n" "$d" $s </dev/null >/dev/null 2>&1 &
    else
        hop &
    fi
    exit 0
}
hop
"#;

fn stat_fields(pid: libc::pid_t) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit(')').next()?.split_whitespace().map(str::to_owned).collect())
}

/// The hops listed in a hopper's pid file that are still running (zombies are dead),
/// told from a recycled pid by their start time: not before the first hop's. On drop,
/// whatever the test's outcome, the hopper is told to stop and they get SIGKILL.
struct Hops<'a>(&'a Path);

impl Hops<'_> {
    fn alive(&self) -> Vec<libc::pid_t> {
        let pids: Vec<libc::pid_t> = fs::read_to_string(self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        // Fields 3 (state) and 22 (start time) of /proc/<pid>/stat.
        let start = |pid| -> Option<u64> { stat_fields(pid)?.get(19)?.parse().ok() };
        let running = |pid| stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X");
        let Some(first) = pids.first().and_then(|&p| start(p)) else {
            return Vec::new();
        };
        pids.into_iter()
            .filter(|&p| running(p) && start(p).is_some_and(|s| s >= first))
            .collect()
    }
}

impl Drop for Hops<'_> {
    fn drop(&mut self) {
        let _ = fs::write(self.0.with_extension("stop"), "");
        for pid in self.alive() {
            // SAFETY: kill takes no pointers and touches no memory of ours; the pid is a
            // hop of this test's hopper, seen running just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// How many times the hopper a test starts may hop: some seconds' worth, far more than
/// it has time for before the kill.
const HOPS: usize = 3000;

#[test]
fn timeout_kills_a_process_that_keeps_changing_its_pid_in_a_subreaper() {
    in_subreaper(
        "timeout_kills_a_process_that_keeps_changing_its_pid_in_a_subreaper",
        || {
            let tmp = tempfile::tempdir().unwrap();
            let hopper = script(tmp.path(), "hopper", HOPPER);
            // HOPPER_RUNS=n, with the test binary run directly, to measure.
            let runs: usize = std::env::var("HOPPER_RUNS").map_or(6, |v| v.parse().unwrap());
            let mut survived = Vec::new();
            for (run, cgroup) in (0..runs).flat_map(|r| CONTAINMENTS.map(|c| (r, c))) {
                // Hops in one session, with and without a pause, and in a new one each.
                let (delay, setsid) = [("0", ""), ("0.001", ""), ("0", "setsid")][run % 3];
                let pids = tmp.path().join(format!("hops{run}-{cgroup}"));
                let hook = script(
                    tmp.path(),
                    &format!("hook{run}-{cgroup}"),
                    &format!(
                        "#!/bin/sh\n\
                         setsid {h} {f} {HOPS} {delay} {setsid} </dev/null >/dev/null 2>&1 &\n\
                         while [ ! -s {f} ]; do sleep 0.01; done\n\
                         sleep 30\n",
                        h = hopper.display(),
                        f = pids.display()
                    ),
                );
                let hops = Hops(&pids);
                let t = Instant::now();
                let out = with_timeout(&hook, 300, cgroup).run_blocking(&inv());
                let took = t.elapsed();
                assert!(out.status.is_timeout(), "{:?}", out.status);
                // A survivor is free to hop on; a killed hop may take a moment to go.
                std::thread::sleep(Duration::from_millis(50));
                let alive = hops.alive();
                // All of them: one that ran out of hops outlived the kill by seconds.
                let hopped = fs::read_to_string(&pids).unwrap().lines().count();
                eprintln!(
                    "run {run} (sleep {delay} {setsid}, {:?}): {hopped} hops, took {took:?}, running: {alive:?}",
                    out.containment
                );
                if !alive.is_empty() || hopped >= HOPS || took > Duration::from_secs(5) {
                    survived.push((run, out.containment, delay, setsid, hopped, took, alive));
                }
            }
            assert!(
                survived.is_empty(),
                "it outlived the kill (run, containment, sleep, setsid, hops, took, running): {survived:?}"
            );
        },
    );
}
