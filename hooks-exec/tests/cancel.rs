//! Cancelling an exec hook and awaiting its end (issue 21, item 4): when
//! `Registry::fire_until` returns, the hook and everything it started are gone from
//! `/proc` (killed and reaped), with or without a runtime. Dropping a `fire` future left
//! them there for up to a few milliseconds, with nothing to await.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::{Cancel, Driver, Failure, Registry, RegistryBuilder};
use virt_hooks_exec::ExecHook;

/// A hook that records its pid, a background child's and a `setsid` grandchild's in
/// `dir`, then sleeps.
fn sleeper(dir: &Path) -> PathBuf {
    let path = dir.join("qemu");
    let body = format!(
        "#!/bin/sh\n\
         sleep 300 & echo $! > {d}/child\n\
         setsid sh -c 'echo $$ > {d}/grandchild.tmp; mv {d}/grandchild.tmp {d}/grandchild; exec sleep 300' &\n\
         echo $$ > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid\n\
         sleep 300\n",
        d = dir.display()
    );
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn registry(hook: &Path) -> Registry {
    registry_with(ExecHook::new(hook))
}

fn registry_with(hook: ExecHook) -> Registry {
    RegistryBuilder::new()
        .hook(Driver::Qemu, hook)
        .hook(Driver::Qemu, virt_hooks_core::testing::MockHook::succeeding("after"))
        .build()
}

fn prepare() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>\n".into(),
    }
}

/// The pids the hook wrote, once all three are there.
fn pids(dir: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let read: Vec<Option<u32>> = ["pid", "child", "grandchild"]
            .iter()
            .map(|f| fs::read_to_string(dir.join(f)).ok().and_then(|s| s.trim().parse().ok()))
            .collect();
        if read.iter().all(Option::is_some) {
            return read.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "the hook never wrote its pids");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process still runs: in `/proc` and not a zombie. (The hook's own process
/// is reaped by the call; an orphan of it is reaped by whoever adopted it, init in cgroup
/// mode, the per-hook helper otherwise.)
fn running(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.chars().next().unwrap_or('?'))?;
    (state != 'Z' && state != 'X').then_some(stat)
}

fn assert_cancelled(report: &virt_hooks_core::Report, pids: &[u32], took: Duration) {
    assert!(report.cancelled, "{report:?}");
    assert_eq!(report.hooks.len(), 1, "the hook after it ran: {:?}", report.hooks);
    assert_eq!(
        report.hooks[0].failure,
        Some(Failure::Cancelled),
        "{:?}",
        report.hooks[0]
    );
    // The hook's own process: reaped by the call.
    assert!(
        !Path::new(&format!("/proc/{}", pids[0])).exists(),
        "the hook was not reaped"
    );
    for pid in pids {
        if let Some(stat) = running(*pid) {
            panic!("pid {pid} still runs after the call returned: {stat}");
        }
    }
    assert!(took < Duration::from_secs(20), "the call took {took:?} to end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_returns_once_every_process_is_reaped() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(&sleeper(tmp.path()));
    let cancel = Cancel::new();
    let dir = tmp.path().to_owned();
    let canceller = cancel.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        let pids = pids(&dir);
        canceller.cancel();
        (pids, Instant::now())
    });
    // Stopped: not an abort-policy failure to the caller's match, but the report says.
    let result = registry.fire_until(&prepare(), &cancel).await;
    let (pids, cancelled_at) = watcher.await.unwrap();
    let report = match result {
        Ok(r) => r,
        Err(failure) => failure.into_report(),
    };
    assert_cancelled(&report, &pids, cancelled_at.elapsed());
}

#[test]
fn a_cancelled_blocking_call_returns_once_every_process_is_reaped() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(&sleeper(tmp.path()));
    let cancel = Cancel::new();
    let firing = {
        let (registry, cancel) = (registry.clone(), cancel.clone());
        std::thread::spawn(move || registry.fire_blocking_until(&prepare(), &cancel))
    };
    let pids = pids(tmp.path());
    let cancelled_at = Instant::now();
    cancel.cancel();
    // At prepare a cut hook fails the event; the caller tells it from a refusal.
    let failure = firing.join().unwrap().expect_err("a hook cut at prepare fails it");
    assert!(failure.is_cancelled());
    assert_cancelled(&failure.into_report(), &pids, cancelled_at.elapsed());
}

#[test]
fn a_call_made_after_the_cancel_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = registry(&sleeper(tmp.path()));
    let cancel = Cancel::new();
    cancel.cancel();
    let report = registry.fire_blocking_until(&prepare(), &cancel).unwrap();
    assert!(report.cancelled && report.hooks.is_empty(), "{report:?}");
    assert!(!tmp.path().join("pid").exists(), "the hook ran");
}

/// Without a cgroup the per-hook helper adopts every orphan of the hook: when the call
/// returns, none of them is even a zombie.
#[test]
fn under_the_helper_a_cancelled_call_leaves_nothing_in_proc() {
    let tmp = tempfile::tempdir().unwrap();
    let options = virt_hooks_exec::ExecOptions {
        cgroup: false,
        ..virt_hooks_exec::ExecOptions::default()
    };
    let registry = registry_with(ExecHook::with_options(sleeper(tmp.path()), options));
    let cancel = Cancel::new();
    let firing = {
        let (registry, cancel) = (registry.clone(), cancel.clone());
        std::thread::spawn(move || registry.fire_blocking_until(&prepare(), &cancel))
    };
    let pids = pids(tmp.path());
    cancel.cancel();
    let report = match firing.join().unwrap() {
        Ok(r) => r,
        Err(failure) => failure.into_report(),
    };
    assert_eq!(report.hooks[0].failure, Some(Failure::Cancelled));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is still in /proc"
        );
    }
}
