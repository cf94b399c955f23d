//! The dispatcher compiles WASM plugins in a child of itself, bounded by the plugin's
//! timeout; `check` compiles ahead of events and warms the cache; dispatchers racing
//! on a cold cache compile once.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{installed, libvirt_env};
use predicates::prelude::*;
use predicates::str::contains;

/// One function with many locals live across many blocks: cheap to validate, costly
/// to compile (20,000 x 12,000: 29 s and 3.7 GB in a release build).
fn costly_module(locals: usize, blocks: usize) -> Vec<u8> {
    let mut wat = String::from(r#"(module (memory (export "memory") 1) (func (export "_start") (local"#);
    wat.push_str(&" i64".repeat(locals));
    wat.push(')');
    for b in 0..blocks {
        let (a, c) = ((b * 7919) % locals, (b * 104_729 + 13) % locals);
        wat.push_str(&format!(
            "(block (local.set {a} (i64.add (local.get {a}) (local.get {c}))) (br_if 0 (i64.eqz (local.get {c}))) (local.set {c} (i64.const {b})))"
        ));
    }
    wat.push_str("))");
    wat::parse_str(wat).unwrap()
}

/// The installed dispatcher as libvirt runs it, with a WASM cache at `cache`.
fn dispatch(hooks: &Path, cache: &Path, op: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(hooks.join("qemu"));
    libvirt_env(&mut cmd)
        .env("VIRT_HOOKS_WASM_CACHE", cache)
        .args(["web1", op, "begin", "-"])
        .write_stdin("<domain/>\n")
        .timeout(Duration::from_secs(120));
    cmd
}

#[test]
fn a_plugin_built_to_exhaust_the_compiler_fails_its_event_at_its_timeout() {
    let (tmp, hooks, plugins) = installed();
    let cache = tmp.path().join("cache");
    fs::write(plugins.join("10-costly.wasm"), costly_module(20_000, 12_000)).unwrap();
    fs::write(plugins.join("10-costly.wasm.toml"), "timeout = 2\n").unwrap();
    let start = Instant::now();
    dispatch(&hooks, &cache, "prepare")
        .assert()
        .failure()
        .stderr(contains("10-costly.wasm"))
        .stderr(contains("compiling it took longer than 2.0 s"));
    // It ended at its limit, not after the minutes this compile takes in a debug build.
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    // The failure is recorded beside the cache entry when the compile had the
    // processor (a busy test machine may starve it): the next event then fails at once.
    let recorded = fs::read_dir(&cache)
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".failed"));
    let next = dispatch(&hooks, &cache, "start").assert().failure();
    let said = String::from_utf8_lossy(&next.get_output().stderr).into_owned();
    assert_eq!(
        said.contains("an earlier attempt with no less time and memory failed"),
        recorded,
        "{said}"
    );
}

#[test]
fn check_compiles_ahead_and_warms_the_cache_for_events() {
    let (tmp, hooks, plugins) = installed();
    let cache = tmp.path().join("cache");
    let module = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
    fs::write(plugins.join("20-ok.wasm"), module).unwrap();
    assert_cmd::Command::new(common::exe())
        .env("VIRT_HOOKS_WASM_CACHE", &cache)
        .args(["--hooks-dir", hooks.to_str().unwrap(), "check", "qemu"])
        .assert()
        .success();
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // An event now loads it from the cache: no compiler child runs.
    dispatch(&hooks, &cache, "prepare")
        .env("HOOKCTL_LOG", "virt_hooks_wasm=debug")
        .assert()
        .success()
        .stderr(contains("compiled a WASM module in a child").not());
}

#[test]
fn dispatchers_racing_on_a_cold_cache_compile_once() {
    let (tmp, hooks, plugins) = installed();
    let cache = tmp.path().join("cache");
    fs::write(plugins.join("30-shared.wasm"), costly_module(400, 300)).unwrap();
    fs::write(plugins.join("30-shared.wasm.toml"), "timeout = 60\n").unwrap();
    // What a libvirtd restart fires: `reconnect` for every running guest at once.
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut cmd = std::process::Command::new(hooks.join("qemu"));
            cmd.env_clear()
                .env("LC_ALL", "C")
                .env("PATH", "/usr/bin:/bin")
                .env("VIRT_HOOKS_WASM_CACHE", &cache)
                .env("HOOKCTL_LOG", "virt_hooks_wasm=debug")
                .args([format!("vm{i}").as_str(), "reconnect", "begin", "-"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let mut compiles = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        compiles += stderr.matches("compiled a WASM module in a child").count();
    }
    assert_eq!(
        compiles, 1,
        "eight dispatchers compiled the same module {compiles} times"
    );
}

#[test]
fn a_guest_named_like_the_compiler_switch_is_dispatched_as_any_guest() {
    let (tmp, hooks, plugins) = installed();
    let cache = tmp.path().join("cache");
    let module = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
    fs::write(plugins.join("20-ok.wasm"), module).unwrap();
    for name in ["--compile-wasm", "hookctl-compile-wasm"] {
        let mut cmd = assert_cmd::Command::new(hooks.join("qemu"));
        libvirt_env(&mut cmd)
            .env("VIRT_HOOKS_WASM_CACHE", &cache)
            .args([name, "prepare", "begin", "-"])
            .write_stdin("<domain/>\n")
            .assert()
            .success();
    }
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 2, "{audit}");
    assert!(audit.contains(r#""object":"--compile-wasm""#), "{audit}");
}
