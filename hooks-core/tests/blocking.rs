//! `fire_blocking` called from inside a tokio runtime: from an async task of a
//! multi-thread runtime the worker is handed off, so hooks that need the runtime (its
//! timers) still finish; from a blocking thread it simply blocks.

use std::sync::mpsc;
use std::time::Duration;

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::testing::MockHook;
use virt_hooks_core::{Driver, HookOutcome, Registry, RegistryBuilder};

fn sleeping_hook() -> Registry {
    RegistryBuilder::new()
        .hook(
            Driver::Qemu,
            MockHook::from_fn("sleeps on tokio's timer", |_| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                HookOutcome::success()
            }),
        )
        .build()
}

fn prepare() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>".into(),
    }
}

/// Runs `body` on a thread of its own and fails the test, rather than hanging it, when
/// it does not finish.
fn finishes<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(body()));
    rx.recv_timeout(Duration::from_secs(20))
        .expect("fire_blocking hung: the hook waited on a timer no thread drives")
}

#[test]
fn fire_blocking_inside_an_async_task_of_a_one_worker_runtime_does_not_starve_its_timers() {
    let report = finishes(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async { tokio::spawn(async { sleeping_hook().fire_blocking(&prepare()) }).await })
    });
    let report = report.expect("the task finished").expect("the hook succeeded");
    assert_eq!(report.hooks.len(), 1);
    assert!(report.succeeded());
}

#[test]
fn fire_blocking_from_spawn_blocking_runs_the_hooks() {
    let report = finishes(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async { tokio::task::spawn_blocking(|| sleeping_hook().fire_blocking(&prepare())).await })
    });
    assert!(report
        .expect("the task finished")
        .expect("the hook succeeded")
        .succeeded());
}
