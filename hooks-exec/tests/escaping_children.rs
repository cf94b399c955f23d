//! What a hook starts dies with its timeout or a dropped call, even when it left the
//! hook's process group; a daemon left by a hook that succeeded lives on.
//!
//! Tests named `*_in_a_subreaper` run in a fresh copy of this binary that made itself a
//! child subreaper: the flag is process-wide, and orphans must come back to a process
//! that runs no other test (and be reaped by nobody else, so "no zombie" is checked).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hooks_core::{Driver, Hook, HookStatus, Invocation};
use hooks_exec::{ExecHook, ExecOptions};

const IN_CHILD: &str = "HOOKS_EXEC_TEST_IN_SUBREAPER";

/// Runs `body` in a copy of this test binary that is a child subreaper.
fn in_subreaper(test: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_CHILD).is_some_and(|v| v == test) {
        hooks_exec::become_subreaper().expect("PR_SET_CHILD_SUBREAPER");
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
        hooks_core::EventArgs::new(["vm1", "prepare", "begin", "-"]),
        None,
    )
}

fn with_timeout(path: &Path, ms: u64) -> ExecHook {
    ExecHook::with_options(
        path,
        ExecOptions {
            timeout: Some(Duration::from_millis(ms)),
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
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Waits up to `within` for the pid to be gone entirely: not running, and not a zombie
/// either (kill(pid, 0) fails with ESRCH only once it is reaped).
fn gone_within(pid: libc::pid_t, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        // SAFETY: signal 0 only checks that the pid exists.
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
        // SAFETY: the pid is a sleep this test started and still holds (unreaped).
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
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("escapee");
        let hook = with_timeout(&script(tmp.path(), "hook", &setsid_then_hang(&pidfile)), 300);
        let t = Instant::now();
        let out = hook.run_blocking(&inv());
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
        assert!(
            out.warnings.iter().any(|w| w.contains("that had left it")),
            "{:?}",
            out.warnings
        );
        let escapee = read_pid(&pidfile);
        assert!(
            gone_within(escapee, Duration::from_secs(2)),
            "the setsid sleep {escapee} is still there (running: {})",
            running(escapee)
        );
    });
}

#[test]
fn timeout_kills_a_double_forked_daemon_in_a_subreaper() {
    in_subreaper("timeout_kills_a_double_forked_daemon_in_a_subreaper", || {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("daemon");
        let hook = with_timeout(&script(tmp.path(), "hook", &daemonize_then_hang(&pidfile)), 300);
        let t = Instant::now();
        let out = hook.run_blocking(&inv());
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
        assert!(out.status.is_timeout(), "{:?}", out.status);
        let daemon = read_pid(&pidfile);
        assert!(
            gone_within(daemon, Duration::from_secs(2)),
            "the orphaned sleep {daemon} is still there (running: {})",
            running(daemon)
        );
    });
}

#[test]
fn timeout_kills_a_setsid_escapee_without_a_subreaper() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("escapee");
    let hook = with_timeout(&script(tmp.path(), "hook", &setsid_then_hang(&pidfile)), 300);
    let out = hook.run_blocking(&inv());
    assert!(out.status.is_timeout(), "{:?}", out.status);
    let escapee = read_pid(&pidfile);
    // Killed; init, its parent now, reaps it.
    assert!(
        dead_within(escapee, Duration::from_secs(2)),
        "the setsid sleep {escapee} survived"
    );
}

#[test]
fn a_successful_hooks_daemon_survives_a_later_timeout_in_a_subreaper() {
    in_subreaper(
        "a_successful_hooks_daemon_survives_a_later_timeout_in_a_subreaper",
        || {
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
            let out = with_timeout(&leaves, 5000).run_blocking(&inv());
            assert!(out.status.is_success(), "{:?}", out.status);
            let daemon = Daemon(read_pid(&first));
            assert!(running(daemon.0), "the daemon of a successful hook was killed");
            // Reparented here, among the children a later sweep looks at.
            assert_eq!(parent_of(daemon.0), Some(me()));

            let second = tmp.path().join("second");
            let hangs = with_timeout(&script(tmp.path(), "hangs", &daemonize_then_hang(&second)), 300);
            let out = hangs.run_blocking(&inv());
            assert!(out.status.is_timeout(), "{:?}", out.status);
            let escapee = read_pid(&second);
            assert!(gone_within(escapee, Duration::from_secs(2)), "{escapee} survived");
            assert!(running(daemon.0), "a timeout killed the daemon an earlier hook left");
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
fn hook_with_a_background_sleep(dir: &Path) -> (ExecHook, PathBuf, PathBuf) {
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
    (ExecHook::new(p), hook_pid, bg_pid)
}

#[test]
fn dropping_the_call_kills_and_reaps_everything_in_a_subreaper() {
    in_subreaper("dropping_the_call_kills_and_reaps_everything_in_a_subreaper", || {
        let tmp = tempfile::tempdir().unwrap();
        let (hook, hook_pid, bg_pid) = hook_with_a_background_sleep(tmp.path());
        let _rt = drop_the_call_when(&hook, &bg_pid);
        let (hook_pid, bg_pid) = (read_pid(&hook_pid), read_pid(&bg_pid));
        assert!(
            gone_within(hook_pid, Duration::from_secs(5)),
            "the hook {hook_pid} is still there"
        );
        assert!(
            gone_within(bg_pid, Duration::from_secs(5)),
            "its sleep {bg_pid} is still there"
        );
    });
}

#[test]
fn dropping_the_call_kills_everything_without_a_subreaper() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook, hook_pid, bg_pid) = hook_with_a_background_sleep(tmp.path());
    let _rt = drop_the_call_when(&hook, &bg_pid);
    let (hook_pid, bg_pid) = (read_pid(&hook_pid), read_pid(&bg_pid));
    // Our child: reaped, not even a zombie.
    assert!(
        gone_within(hook_pid, Duration::from_secs(5)),
        "the hook {hook_pid} is still there"
    );
    // Init's child by now: dead is all we can ask.
    assert!(
        dead_within(bg_pid, Duration::from_secs(5)),
        "its sleep {bg_pid} survived"
    );
}
