//! Costs, not checks: run with `cargo test --release -p virt-hooks-wasm --test measure --
//! --ignored --nocapture`. Nothing here asserts a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::{Driver, EventArgs, Hook, Invocation, RegistryBuilder};
use virt_hooks_wasm::{CacheSource, EngineConfig, Sandbox, WasmHook, WasmOptions};

/// Reads all of stdin and exits 0 (the smallest real hook).
fn reader() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 1024))
            (i32.store (i32.const 4) (i32.const 32768))
            (loop $more
              (i32.store (i32.const 16) (i32.const 0))
              (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
              (br_if $more (i32.load (i32.const 16))))))"#,
    )
    .expect("WAT")
}

/// Outside a runtime a WASM call finishes on its first poll.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a blocking-mode WASM call completes on its first poll"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn event() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain>".to_string() + &"x".repeat(14_000) + "</domain>",
    }
}

/// Median and minimum µs per call over `rounds` batches of `batch` calls (the minimum
/// is the steadier figure on a busy machine).
fn per_call(rounds: usize, batch: usize, mut f: impl FnMut()) -> Stat {
    for _ in 0..batch {
        f();
    }
    Stat(
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..batch {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / batch as f64
            })
            .collect(),
    )
}

struct Stat(Vec<f64>);

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        write!(f, "median {:.1} µs, min {:.1} µs", median(self.0.clone()), min)
    }
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn warm_call_and_cache_hit_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("reader.wasm");
    std::fs::write(&path, reader()).unwrap();
    let sb = Arc::new(Sandbox::new(EngineConfig::default(), None).unwrap());
    let hook = WasmHook::load_in(Arc::clone(&sb), &path, WasmOptions::default()).unwrap();
    let registry = RegistryBuilder::new().hook(Driver::Qemu, hook.clone()).build();
    let ev = event();
    let blocking = per_call(41, 200, || assert!(registry.fire_blocking(&ev).is_ok()));
    println!("warm call, fire_blocking (no runtime): {blocking}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let in_tokio = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..41 {
            let t = Instant::now();
            for _ in 0..200 {
                assert!(registry.fire(&ev).await.is_ok());
            }
            v.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
        }
        Stat(v)
    });
    println!("warm call, fire inside tokio: {in_tokio}");

    let inv = Invocation::new(Driver::Qemu, EventArgs::new(["vm", "prepare", "begin", "-"]), None);
    let direct = per_call(41, 200, || {
        let out = block_on(hook.call(&inv));
        assert!(out.status.is_success());
    });
    println!("warm call, WasmHook::call, no input: {direct}");

    // Disk cache hit: a new sandbox (as in a new process) loads the module.
    let cache = tmp.path().join("cache");
    let _prime = Sandbox::new(EngineConfig::default(), Some(cache.clone()))
        .unwrap()
        .load(&path)
        .unwrap();
    let hits: Vec<f64> = (0..21)
        .map(|_| {
            let sb = Sandbox::new(EngineConfig::default(), Some(cache.clone())).unwrap();
            let t = Instant::now();
            let m = sb.load(&path).unwrap();
            let us = t.elapsed().as_secs_f64() * 1e6;
            assert_eq!(m.source(), CacheSource::Disk);
            us
        })
        .collect();
    println!("disk cache hit (Sandbox::load): {}", Stat(hits));
    // The trust check a disk read now adds (plus one fstat): the dir and its ancestors.
    let policy = virt_hooks_core::backend::TrustPolicy::current_user();
    let check = per_call(21, 100, || assert!(policy.check_dir(&cache).is_ok()));
    println!("trust check of the cache dir ({}): {check}", cache.display());
    let compiles: Vec<f64> = (0..11)
        .map(|_| {
            let sb = Sandbox::new(EngineConfig::default(), None).unwrap();
            let t = Instant::now();
            sb.load(&path).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    println!("compile (Sandbox::load, no cache): {}", Stat(compiles));
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn sleeping_module_under_a_short_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sleep.wasm");
    // poll_oneoff with one relative monotonic clock subscription of 2 s.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i64.store (i32.const 0) (i64.const 0))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 2000000000))
        (i64.store (i32.const 32) (i64.const 0))
        (i32.store16 (i32.const 40) (i32.const 0))
        (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))))"#;
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    let sb = Arc::new(Sandbox::new(EngineConfig::default(), None).unwrap());
    let opts = WasmOptions {
        timeout: Some(Duration::from_millis(300)),
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sb, &path, opts).unwrap();
    let inv = Invocation::new(Driver::Qemu, EventArgs::new(["vm", "prepare", "begin", "-"]), None);
    let t = Instant::now();
    let out = block_on(hook.call(&inv));
    println!(
        "2 s sleep under a 300 ms timeout: {:?} after {:?}",
        out.status,
        t.elapsed()
    );
}

/// `N` (default 100 000) warm calls in a row: the steadiest figure for comparing two
/// builds, and a loop to run under `perf`.
#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn warm_call_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("reader.wasm");
    std::fs::write(&path, reader()).unwrap();
    let sb = Arc::new(Sandbox::new(EngineConfig::default(), None).unwrap());
    let hook = WasmHook::load_in(Arc::clone(&sb), &path, WasmOptions::default()).unwrap();
    let registry = RegistryBuilder::new().hook(Driver::Qemu, hook.clone()).build();
    let ev = event();
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let t = Instant::now();
    for _ in 0..n {
        assert!(registry.fire_blocking(&ev).is_ok());
    }
    println!(
        "{n} warm calls through fire_blocking: {:.2} µs/call",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
