//! One WASI call must not make the host work or allocate without bound: a single
//! `random_get` of 65 MB or `poll_oneoff` with 500 000 subscriptions is stopped by the
//! timeout within the usual bound, and the host's own heap stays small.
//!
//! The tests run one at a time (the heap counter is process-wide); the measured time
//! and peaks are printed (`--nocapture`). Bounds are generous.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::heap::{peak_during, reset_rss_peak, rss_peak_kib};
use common::{block_on, inv, sandbox, write_module};
use virt_hooks_core::{Hook, HookOutcome, HookStatus};
use virt_hooks_wasm::{WasmHook, WasmOptions};

#[global_allocator]
static HEAP: common::heap::Counting = common::heap::Counting;

const T: Duration = Duration::from_millis(300);
const BOUND: Duration = Duration::from_secs(2);
const MIB: usize = 1 << 20;

/// Serializes the tests, so a heap peak is one call's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Measured {
    out: HookOutcome,
    elapsed: Duration,
    heap: usize,
}

fn run(what: &str, wat: &str, timeout: Duration) -> Measured {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(wat).expect("test WAT parses");
    let path = write_module(tmp.path(), "m.wasm", &bytes);
    let opts = WasmOptions {
        timeout: Some(timeout),
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sandbox(None), path, opts).unwrap();
    let rss_base = reset_rss_peak();
    let start = Instant::now();
    let (out, heap) = peak_during(|| block_on(hook.call(&inv("vm", "prepare"))));
    let elapsed = start.elapsed();
    let rss = rss_base
        .zip(rss_peak_kib())
        .map_or("unknown".into(), |(b, p)| format!("{} MiB", p.saturating_sub(b) / 1024));
    println!(
        "{what}: {:?} after {elapsed:?}; host heap peak +{:.1} MiB, RSS peak +{rss} (guest memory included)",
        out.status,
        heap as f64 / MIB as f64
    );
    Measured { out, elapsed, heap }
}

/// Calls `random_get(0, 65 000 000)` in a loop (one call is the whole point; the loop
/// only makes sure a fast machine still reaches the timeout).
const RANDOM_BOMB: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1000)
  (func (export "_start")
    (loop $again
      (drop (call $random_get (i32.const 0) (i32.const 65000000)))
      (br $again))))"#;

#[test]
fn one_huge_random_get_is_stopped_by_the_timeout() {
    let m = run("random_get of 65 MB under a 300 ms timeout", RANDOM_BOMB, T);
    assert!(
        matches!(m.out.status, HookStatus::TimedOut(t) if t == T),
        "{:?}",
        m.out.status
    );
    assert!(m.elapsed < T + BOUND, "took {:?} under a {T:?} timeout", m.elapsed);
    assert!(m.heap < 8 * MIB, "the host allocated {} bytes for one call", m.heap);
}

/// `poll_oneoff` on `n` zeroed subscriptions (clock, realtime, relative, 0 ns: all
/// ready at once) at 0, events after them; exits with the event count, or 100 + errno.
fn poll_many(n: u32) -> String {
    let events = n * 48;
    let nevents = events + n * 32;
    let pages = (nevents + 4).div_ceil(65536);
    format!(
        r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") {pages})
          (func (export "_start") (local $errno i32)
            (local.set $errno (call $poll (i32.const 0) (i32.const {events}) (i32.const {n}) (i32.const {nevents})))
            (if (local.get $errno) (then (call $exit (i32.add (i32.const 100) (local.get $errno)))))
            (call $exit (i32.load (i32.const {nevents})))))"#
    )
}

#[test]
fn one_poll_with_half_a_million_subscriptions_is_refused_quickly() {
    let m = run("poll_oneoff with 500 000 subscriptions", &poll_many(500_000), T);
    assert!(!m.out.status.is_success(), "{:?}", m.out.status);
    assert!(m.elapsed < T + BOUND, "took {:?} under a {T:?} timeout", m.elapsed);
    assert!(m.heap < 64 * MIB, "the host allocated {} bytes for one call", m.heap);
}

#[test]
fn a_poll_with_a_few_subscriptions_still_works() {
    let m = run(
        "poll_oneoff with 64 subscriptions",
        &poll_many(64),
        Duration::from_secs(10),
    );
    assert!(matches!(m.out.status, HookStatus::Exited(64)), "{:?}", m.out.status);
}

#[test]
fn many_polls_in_a_row_reuse_their_handles() {
    // 20 000 polls of 3 subscriptions: far more handles than any one call may hold.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (func (export "_start") (local $i i32)
        (loop $again
          (if (call $poll (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 2048))
            (then (call $exit (i32.const 1))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $again (i32.lt_u (local.get $i) (i32.const 20000))))))"#;
    let m = run("20 000 polls of 3 subscriptions", wat, Duration::from_secs(60));
    assert!(m.out.status.is_success(), "{:?}", m.out.status);
}

#[test]
fn random_get_fills_exactly_the_buffer_across_chunks() {
    // 1 MiB + 5 bytes at offset 16; prints the 48 bytes around each end.
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 20)
      (func (export "_start")
        (if (call $random_get (i32.const 16) (i32.const 1048581)) (then (call $exit (i32.const 1))))
        (i32.store (i32.const 1200000) (i32.const 0))
        (i32.store (i32.const 1200004) (i32.const 48))
        (drop (call $fd_write (i32.const 1) (i32.const 1200000) (i32.const 1) (i32.const 1200016)))
        (i32.store (i32.const 1200000) (i32.const 1048565))
        (drop (call $fd_write (i32.const 1) (i32.const 1200000) (i32.const 1) (i32.const 1200016)))))"#;
    let m = run("random_get of 1 MiB + 5", wat, Duration::from_secs(10));
    assert!(m.out.status.is_success(), "{:?}", m.out.status);
    let out = &m.out.stdout;
    assert_eq!(out.len(), 96);
    assert_eq!(out[..16], [0; 16], "written before the buffer");
    assert_eq!(out[80..], [0; 16], "written past the buffer");
    assert!(out[16..48].iter().any(|&b| b != 0), "start not filled");
    assert!(out[48..80].iter().any(|&b| b != 0), "end not filled");
    assert_ne!(out[16..48], out[48..80]);
}

#[test]
fn random_get_out_of_bounds_traps() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start") (drop (call $random_get (i32.const 65530) (i32.const 16)))))"#;
    let m = run("random_get past the end of memory", wat, Duration::from_secs(10));
    assert!(matches!(m.out.status, HookStatus::Crashed(_)), "{:?}", m.out.status);
}

#[test]
fn a_huge_random_get_is_stopped_inside_tokio_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "m.wasm", &wat::parse_str(RANDOM_BOMB).unwrap());
    let opts = WasmOptions {
        timeout: Some(T),
        ..WasmOptions::default()
    };
    let hook = Arc::new(WasmHook::load_in(sandbox(None), path, opts).unwrap());
    let start = Instant::now();
    let out = rt.block_on(hook.call(&inv("vm", "prepare")));
    println!(
        "random_get of 65 MB in tokio: {:?} after {:?}",
        out.status,
        start.elapsed()
    );
    assert!(matches!(out.status, HookStatus::TimedOut(_)), "{:?}", out.status);
    assert!(start.elapsed() < T + BOUND, "took {:?}", start.elapsed());
}

/// A `Cancel` stops a spinning module from another thread, with no timeout set, and the
/// call returns once the module stopped (inline under a blocking caller, and on tokio's
/// blocking pool).
#[test]
fn a_cancel_stops_a_spinning_module_and_the_call_returns() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let spin = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;
    let path = write_module(tmp.path(), "spin.wasm", &wat::parse_str(spin).unwrap());
    let opts = WasmOptions {
        timeout: None,
        ..WasmOptions::default()
    };
    let hook = Arc::new(WasmHook::load_in(sandbox(None), path, opts).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for inside_tokio in [false, true] {
        let cancel = virt_hooks_core::Cancel::new();
        let canceller = cancel.clone();
        let timer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            canceller.cancel();
        });
        let invocation = inv("vm", "prepare").with_cancel(Some(cancel));
        let start = Instant::now();
        let out = if inside_tokio {
            rt.block_on(hook.call(&invocation))
        } else {
            virt_hooks_core::block_on(hook.call(&invocation))
        };
        timer.join().unwrap();
        assert!(
            matches!(out.status, HookStatus::Failed(virt_hooks_core::HookError::Cancelled)),
            "inside tokio: {inside_tokio}: {:?}",
            out.status
        );
        assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());
    }
}
