//! Helpers shared by the limit and cache tests: small WAT modules and a way to call a
//! hook outside any runtime.
#![allow(dead_code)]

pub mod heap;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt_hooks_core::{Driver, EventArgs, Invocation};
use virt_hooks_wasm::{EngineConfig, Sandbox};

/// A module that sleeps `nanos` through one relative monotonic `poll_oneoff` clock
/// subscription (what `std::thread::sleep` compiles to), then prints `woke` and exits 0.
pub fn sleeper(nanos: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 512) "woke\n")
          (func (export "_start")
            ;; subscription: userdata, tag 0 (clock), clock id 1 (monotonic), timeout, precision, flags 0
            (i64.store (i32.const 0) (i64.const 7))
            (i32.store8 (i32.const 8) (i32.const 0))
            (i32.store (i32.const 16) (i32.const 1))
            (i64.store (i32.const 24) (i64.const {nanos}))
            (i64.store (i32.const 32) (i64.const 0))
            (i32.store16 (i32.const 40) (i32.const 0))
            (if (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256))
              (then unreachable))
            (i32.store (i32.const 300) (i32.const 512))
            (i32.store (i32.const 304) (i32.const 5))
            (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 312)))))"#
    ))
    .expect("test WAT parses")
}

/// A module that prints `text` (ASCII, no quotes or backslashes) and exits 0.
pub fn printer(text: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 512) "{text}")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 512))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#,
        len = text.len()
    ))
    .expect("test WAT parses")
}

/// A module that loops forever.
pub fn spinner() -> Vec<u8> {
    wat::parse_str(r#"(module (func (export "_start") (loop $forever (br $forever))))"#).expect("test WAT parses")
}

pub fn write_module(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("writes the module");
    p
}

pub fn sandbox(cache: Option<&Path>) -> Arc<Sandbox> {
    Arc::new(Sandbox::new(EngineConfig::default(), cache.map(Path::to_owned)).expect("engine"))
}

pub fn inv(object: &str, op: &str) -> Invocation {
    Invocation::new(Driver::Qemu, EventArgs::new([object, op, "begin", "-"]), None)
}

/// Outside a runtime a WASM call finishes on its first poll.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a blocking-mode WASM call completes on its first poll"),
    }
}
