//! Limits that must hold against a hostile module: the timeout covers time spent in
//! host calls (a WASI sleep) as well as in wasm code, from a blocking caller and from
//! inside tokio; the memory cap covers all of a module's memories together.
//!
//! The time bounds asserted are generous (T + 2 s) so a loaded machine does not fail
//! them; the measured overshoot is printed (`--nocapture`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_on, inv, sandbox, sleeper, spinner, write_module};
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::{Driver, Hook, HookStatus, RegistryBuilder};
use virt_hooks_wasm::{EngineConfig, Sandbox, WasmHook, WasmOptions};

const T: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(2);
const THIRTY_SECONDS: u64 = 30_000_000_000;

fn with_timeout(t: Duration) -> WasmOptions {
    WasmOptions {
        timeout: Some(t),
        ..WasmOptions::default()
    }
}

fn report(what: &str, elapsed: Duration) {
    println!(
        "{what}: back after {elapsed:?}, overshoot {:?}",
        elapsed.saturating_sub(T)
    );
    assert!(elapsed < T + BOUND, "{what}: took {elapsed:?} under a {T:?} timeout");
}

fn sleeping_hook() -> (tempfile::TempDir, WasmHook) {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "sleep.wasm", &sleeper(THIRTY_SECONDS));
    let hook = WasmHook::load_in(sandbox(None), path, with_timeout(T)).unwrap();
    (tmp, hook)
}

#[test]
fn a_30s_wasi_sleep_is_stopped_by_a_short_timeout() {
    let (_tmp, hook) = sleeping_hook();
    let start = Instant::now();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    let elapsed = start.elapsed();
    assert!(
        matches!(out.status, HookStatus::TimedOut(t) if t == T),
        "{:?}",
        out.status
    );
    assert!(out.stdout.is_empty(), "it never woke");
    report("30 s sleep, direct call", elapsed);
}

#[test]
fn a_30s_wasi_sleep_is_stopped_through_fire_blocking() {
    let (_tmp, hook) = sleeping_hook();
    let registry = RegistryBuilder::new().hook(Driver::Qemu, hook).build();
    let event = QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>".into(),
    };
    let start = Instant::now();
    let failure = registry.fire_blocking(&event).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(failure.failed_hook().status, StatusRecord::TimedOut { after_ms: 300 }),
        "{:?}",
        failure.failed_hook().status
    );
    report("30 s sleep, Registry::fire_blocking", elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_wasi_sleep_is_stopped_inside_tokio() {
    let (_tmp, hook) = sleeping_hook();
    let hook = Arc::new(hook);
    let start = Instant::now();
    let out = hook.call(&inv("vm", "prepare")).await;
    assert!(
        matches!(out.status, HookStatus::TimedOut(t) if t == T),
        "{:?}",
        out.status
    );
    report("30 s sleep, WasmHook::call in tokio", start.elapsed());

    let registry = RegistryBuilder::new().hook(Driver::Qemu, Arc::clone(&hook)).build();
    let event = QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>".into(),
    };
    let start = Instant::now();
    assert!(registry.fire(&event).await.is_err());
    report("30 s sleep, Registry::fire in tokio", start.elapsed());
}

#[test]
fn a_30s_wasi_sleep_is_stopped_in_a_runtime_without_a_timer() {
    // The embedder's runtime need not enable time: the call brings its own timer.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (_tmp, hook) = sleeping_hook();
    let start = Instant::now();
    let out = rt.block_on(hook.call(&inv("vm", "prepare")));
    assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
    report("30 s sleep, current-thread runtime without time", start.elapsed());
}

#[test]
fn a_short_sleep_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "nap.wasm", &sleeper(20_000_000));
    let hook = WasmHook::load_in(sandbox(None), path, with_timeout(Duration::from_secs(5))).unwrap();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    assert!(out.status.is_success(), "{:?}", out.status);
    assert_eq!(out.stdout, b"woke\n");
    assert!(out.duration >= Duration::from_millis(20), "{:?}", out.duration);
}

#[test]
fn an_infinite_loop_still_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "loop.wasm", &spinner());
    let hook = WasmHook::load_in(sandbox(None), path, with_timeout(T)).unwrap();
    let start = Instant::now();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    assert!(
        matches!(out.status, HookStatus::TimedOut(t) if t == T),
        "{:?}",
        out.status
    );
    report("infinite loop, direct call", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out_inside_tokio() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "loop.wasm", &spinner());
    let hook = WasmHook::load_in(sandbox(None), path, with_timeout(T)).unwrap();
    let start = Instant::now();
    let out = hook.call(&inv("vm", "prepare")).await;
    assert!(
        matches!(out.status, HookStatus::TimedOut(t) if t == T),
        "{:?}",
        out.status
    );
    report("infinite loop, WasmHook::call in tokio", start.elapsed());
}

#[test]
fn dropping_the_call_frees_its_thread() {
    // One blocking thread: a second call can only run once the first one's is free.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sb = sandbox(None);
    let forever = WasmHook::load_in(
        Arc::clone(&sb),
        write_module(tmp.path(), "sleep.wasm", &sleeper(THIRTY_SECONDS)),
        with_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let spin = WasmHook::load_in(
        Arc::clone(&sb),
        write_module(tmp.path(), "loop.wasm", &spinner()),
        with_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let quick = WasmHook::load_in(
        sb,
        write_module(tmp.path(), "nap.wasm", &sleeper(1_000_000)),
        WasmOptions::default(),
    )
    .unwrap();
    rt.block_on(async {
        for abandoned in [&forever, &spin] {
            let gave_up = tokio::time::timeout(Duration::from_millis(100), abandoned.call(&inv("vm", "prepare"))).await;
            assert!(gave_up.is_err(), "it was still running");
            let start = Instant::now();
            let out = quick.call(&inv("vm", "prepare")).await;
            assert!(out.status.is_success(), "{:?}", out.status);
            println!("next call after dropping one: {:?}", start.elapsed());
            assert!(
                start.elapsed() < BOUND,
                "the dropped call kept its thread: {:?}",
                start.elapsed()
            );
        }
    });
}

/// A module with two memories of 1 page; `_start` grows the first by `a` pages and the
/// second by `b`, and exits 0 if both grew.
fn two_memories(a: u32, b: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory $a 1)
          (memory $b 1)
          (func (export "_start")
            (if (i32.eq (memory.grow $a (i32.const {a})) (i32.const -1)) (then (call $proc_exit (i32.const 10))))
            (if (i32.eq (memory.grow $b (i32.const {b})) (i32.const -1)) (then (call $proc_exit (i32.const 11))))))"#
    ))
    .expect("test WAT parses")
}

#[test]
fn the_memory_cap_counts_all_memories() {
    let tmp = tempfile::tempdir().unwrap();
    let sb = sandbox(None);
    let opts = WasmOptions {
        memory: 8 << 20,
        ..WasmOptions::default()
    };
    // Each memory grows to 7 MiB (112 pages): under the cap alone, 14 MiB together.
    let both = write_module(tmp.path(), "two.wasm", &two_memories(111, 111));
    let hook = WasmHook::load_in(Arc::clone(&sb), both, opts).unwrap();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    let HookStatus::Crashed(why) = &out.status else {
        panic!("two memories of 7 MiB under an 8 MiB cap: {:?}", out.status)
    };
    assert!(why.starts_with("memory limit of 8 MiB exceeded"), "{why}");

    // Together under the cap: runs.
    let small = write_module(tmp.path(), "small.wasm", &two_memories(55, 55));
    let hook = WasmHook::load_in(Arc::clone(&sb), small, opts).unwrap();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    assert!(out.status.is_success(), "{:?}", out.status);

    // One memory to 7 MiB: runs (the cap is not per memory halved).
    let one = write_module(tmp.path(), "one.wasm", &two_memories(111, 0));
    let hook = WasmHook::load_in(sb, one, opts).unwrap();
    let out = block_on(hook.call(&inv("vm", "prepare")));
    assert!(out.status.is_success(), "{:?}", out.status);
}

#[test]
fn many_memories_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let memories = "(memory 1) ".repeat(5);
    let bytes = wat::parse_str(format!(r#"(module {memories} (func (export "_start")))"#)).unwrap();
    let path = write_module(tmp.path(), "five.wasm", &bytes);
    // The pooling allocator refuses it as it compiles; without pooling, the sandbox does.
    let err = WasmHook::load_in(sandbox(None), &path, WasmOptions::default()).unwrap_err();
    let text = virt_hooks_core::error::chain(&err);
    assert!(text.contains("memories count of 5 exceeds"), "{text}");
    let on_demand = EngineConfig {
        pooling: false,
        ..EngineConfig::default()
    };
    let sb = Arc::new(Sandbox::new(on_demand, None).unwrap());
    let err = WasmHook::load_in(sb, &path, WasmOptions::default()).unwrap_err();
    let text = virt_hooks_core::error::chain(&err);
    assert!(text.contains("memories: 5, at most 4"), "{text}");
}
