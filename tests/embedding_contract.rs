//! The embedding contract with real exec hooks inside tokio: what an embedder's own
//! runtime, a full blocking pool, background processes and slow kills must not break.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::testing::MockHook;
use virt_hooks_core::{Driver, Guest, HookOutcome, Lifecycle, LifecycleError, RegistryBuilder};
use virt_hooks_exec::{ExecHook, ExecOptions};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn prepare() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>\n".into(),
    }
}

#[test]
fn fire_blocking_on_blocking_threads_runs_inline_even_when_the_pool_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(tmp.path(), "slow", "#!/bin/sh\ncat >/dev/null\nsleep 0.2\n");
    let registry = Arc::new(RegistryBuilder::new().hook(Driver::Qemu, ExecHook::new(&hook)).build());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let r = Arc::clone(&registry);
            rt.spawn_blocking(move || r.fire_blocking(&prepare()).is_ok())
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let mut ok = true;
        for call in calls {
            ok &= call.await.unwrap();
        }
        tx.send(ok).unwrap();
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)),
        Ok(true),
        "two fire_blocking calls filling a two-thread blocking pool must not wait for a third"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_the_pipes_does_not_turn_a_success_into_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(tmp.path(), "bg", "#!/bin/sh\ncat >/dev/null\nsleep 3 &\nexit 0\n");
    for registry in [
        RegistryBuilder::new()
            .hook(Driver::Qemu, ExecHook::new(&hook))
            .timeout(Some(Duration::from_millis(300)))
            .build(),
        RegistryBuilder::new()
            .hook(Driver::Qemu, ExecHook::new(&hook))
            .event_timeout(Some(Duration::from_millis(400)))
            .build(),
    ] {
        let report = registry.fire(&prepare()).await.expect("the hook exited 0 in time");
        let rec = &report.hooks[0];
        assert!(rec.success, "{:?}", rec.status);
        assert!(
            rec.warnings.iter().any(|w| w.contains("background process")),
            "{:?}",
            rec.warnings
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_kill_keeps_the_exec_hooks_own_report() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(
        tmp.path(),
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\necho 'important diagnostics' >&2\nsleep 30\n",
    );
    let options = ExecOptions {
        kill_grace: Duration::from_millis(500),
        ..ExecOptions::default()
    };
    let registry = RegistryBuilder::new()
        .hook(Driver::Qemu, ExecHook::with_options(&hook, options))
        .timeout(Some(Duration::from_millis(300)))
        .build();
    let started = Instant::now();
    let failure = registry.fire(&prepare()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let rec = failure.failed_hook();
    assert_eq!(rec.status, StatusRecord::TimedOut { after_ms: 300 });
    assert_eq!(
        rec.stderr, "important diagnostics\n",
        "the backend's report, not the layer's"
    );
    assert!(failure.to_string().contains("Child process ("), "{failure}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicking_hook_is_a_crash_and_the_cleanup_still_runs() {
    let recorder = Arc::new(virt_hooks_core::testing::RecordingHook::new("rec"));
    let registry = RegistryBuilder::new()
        .shared_hook(Some(Driver::Qemu), recorder.clone())
        .hook(
            Driver::Qemu,
            MockHook::always("panics", || -> HookOutcome { panic!("bug in a hook") }).matching(|e| e.op() == "started"),
        )
        .build();
    let guest = Guest::new(Driver::Qemu, "vm", "<domain/>\n");
    let err = Lifecycle::new(&registry).start(&guest).await.unwrap_err();
    let LifecycleError::Refused { failure, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        failure.failed_hook().status,
        StatusRecord::Crashed {
            message: "panicked: bug in a hook".into()
        }
    );
    assert_eq!(
        recorder.lines()[3..],
        ["vm stopped end -", "vm release end failed"],
        "the cleanup hooks ran"
    );
}
