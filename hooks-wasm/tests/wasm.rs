//! WASM hooks: the executable contract, the sandbox, the limits and the module cache.
//! Modules are WAT text compiled here with the `wat` crate.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::{Driver, EventArgs, Hook, HookOutcome, HookStatus, HooksDir, Invocation, RegistryBuilder};
use virt_hooks_wasm::{CacheSource, EngineConfig, Sandbox, WasmHook, WasmOptions};

const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 40) "\n ")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))
  (func $read_all (result i32) (local $len i32)
    (block $eof (loop $more
      (if (i32.gt_u (i32.add (local.get $len) (i32.const 131072)) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.const 1)))))
      (i32.store (i32.const 0) (i32.add (i32.const 65536) (local.get $len)))
      (i32.store (i32.const 4) (i32.const 65536))
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (br_if $eof (i32.eqz (i32.load (i32.const 16))))
      (local.set $len (i32.add (local.get $len) (i32.load (i32.const 16))))
      (br $more)))
    (local.get $len))
"#;

fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {PRELUDE} {body})")).expect("test WAT parses")
}

/// Prints argv (one per line), then stdin.
const ECHO: &str = r#"
  (func (export "_start") (local $argc i32) (local $i i32) (local $p i32)
    (drop (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $argc (i32.load (i32.const 8)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
      (local.set $p (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
      (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
      (call $write (i32.const 1) (i32.const 40) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $write (i32.const 1) (i32.const 65536) (call $read_all)))
"#;

fn write_module(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, bytes).unwrap();
    p
}

fn sandbox(cache: Option<&Path>) -> Arc<Sandbox> {
    Arc::new(Sandbox::new(EngineConfig::default(), cache.map(Path::to_owned)).unwrap())
}

fn inv(object: &str, op: &str, input: Option<&[u8]>) -> Invocation {
    Invocation::new(
        Driver::Qemu,
        EventArgs::new([object, op, "begin", "-"]),
        input.map(Into::into),
    )
}

fn call(hook: &WasmHook, inv: &Invocation) -> HookOutcome {
    futures_lite_block_on(hook.call(inv))
}

fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a blocking-mode WASM call completes on its first poll"),
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wasm")
}

#[test]
fn argv_stdin_stdout_and_exit_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "echo.wasm", &module(ECHO));
    let hook = WasmHook::load_in(sandbox(None), &path, WasmOptions::default()).unwrap();
    let out = call(&hook, &inv("vm1", "prepare", Some(b"<domain/>\n")));
    assert!(out.status.is_success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\nvm1\nprepare\nbegin\n-\n<domain/>\n", path.display())
    );
}

#[test]
fn proc_exit_is_the_status_and_stderr_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = module(
        r#"(data (i32.const 200) "not today")
           (func (export "_start") (call $write (i32.const 2) (i32.const 200) (i32.const 9)) (call $proc_exit (i32.const 3)))"#,
    );
    let hook = WasmHook::load_in(
        sandbox(None),
        write_module(tmp.path(), "x.wasm", &bytes),
        WasmOptions::default(),
    )
    .unwrap();
    let out = call(&hook, &inv("vm", "prepare", Some(b"")));
    assert!(matches!(out.status, HookStatus::Exited(3)), "{:?}", out.status);
    assert_eq!(out.stderr, b"not today");
    // proc_exit(0) is success too.
    let zero = module(r#"(func (export "_start") (call $proc_exit (i32.const 0)))"#);
    let hook = WasmHook::load_in(
        sandbox(None),
        write_module(tmp.path(), "z.wasm", &zero),
        WasmOptions::default(),
    )
    .unwrap();
    assert!(call(&hook, &inv("vm", "prepare", None)).status.is_success());
}

#[test]
fn an_infinite_loop_is_stopped_by_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = module(r#"(func (export "_start") (loop $forever (br $forever)))"#);
    let opts = WasmOptions {
        timeout: Some(Duration::from_millis(100)),
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sandbox(None), write_module(tmp.path(), "loop.wasm", &bytes), opts).unwrap();
    let start = Instant::now();
    let out = call(&hook, &inv("vm", "prepare", None));
    assert!(
        matches!(out.status, HookStatus::TimedOut(t) if t == Duration::from_millis(100)),
        "{:?}",
        out.status
    );
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
}

#[test]
fn a_memory_bomb_is_stopped_by_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = module(
        r#"(func (export "_start") (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))))"#,
    );
    let opts = WasmOptions {
        memory: 8 << 20,
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sandbox(None), write_module(tmp.path(), "bomb.wasm", &bytes), opts).unwrap();
    let out = call(&hook, &inv("vm", "prepare", None));
    let HookStatus::Crashed(why) = &out.status else {
        panic!("{:?}", out.status)
    };
    assert!(why.starts_with("memory limit of 8 MiB exceeded"), "{why}");
}

#[test]
fn opening_a_file_is_denied_inside_the_module() {
    let tmp = tempfile::tempdir().unwrap();
    // path_open on fd 3 (the first preopen, which does not exist): exit with its errno.
    let bytes = module(
        r#"(data (i32.const 200) "/etc/passwd")
           (func (export "_start")
             (call $proc_exit (call $path_open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 11)
                                               (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 300))))"#,
    );
    let hook = WasmHook::load_in(
        sandbox(None),
        write_module(tmp.path(), "open.wasm", &bytes),
        WasmOptions::default(),
    )
    .unwrap();
    let out = call(&hook, &inv("vm", "prepare", None));
    assert!(
        matches!(out.status, HookStatus::Exited(8)),
        "EBADF (8) expected: {:?}",
        out.status
    );
}

#[test]
fn broken_modules_are_load_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sb = sandbox(None);
    let cases = [
        ("junk.wasm", b"\0asm garbage".to_vec(), "invalid WebAssembly"),
        (
            "lib.wasm",
            wat::parse_str(r#"(module (func (export "run")))"#).unwrap(),
            "exports no `_start`",
        ),
        (
            "imports.wasm",
            wat::parse_str(r#"(module (import "env" "host_fn" (func)) (func (export "_start")))"#).unwrap(),
            "needs imports the sandbox does not provide",
        ),
        (
            "start-args.wasm",
            wat::parse_str(r#"(module (func (export "_start") (param i32)))"#).unwrap(),
            "`_start` is not a function taking and returning nothing",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = write_module(tmp.path(), name, &bytes);
        let err = WasmHook::load_in(Arc::clone(&sb), &path, WasmOptions::default()).unwrap_err();
        let text = virt_hooks_core::error::chain(&err);
        assert!(
            text.starts_with(&format!("cannot load hook `{}` (wasm): ", path.display())),
            "{text}"
        );
        assert!(text.contains(reason), "{text}");
    }
}

#[test]
fn a_second_sandbox_loads_from_the_disk_cache_and_a_corrupt_entry_is_recompiled() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let path = write_module(tmp.path(), "echo.wasm", &module(ECHO));
    let first = WasmHook::load_in(sandbox(Some(&cache)), &path, WasmOptions::default()).unwrap();
    assert_eq!(first.module().source(), CacheSource::Compiled);
    let second = WasmHook::load_in(sandbox(Some(&cache)), &path, WasmOptions::default()).unwrap();
    assert_eq!(second.module().source(), CacheSource::Disk);
    assert!(call(&second, &inv("vm", "prepare", Some(b"x"))).status.is_success());

    // Flip bytes in the middle of the cached artifact.
    let entry = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    let mut data = fs::read(&entry).unwrap();
    let mid = data.len() / 2;
    data[mid..mid + 16].iter_mut().for_each(|b| *b ^= 0xff);
    fs::write(&entry, data).unwrap();
    let third = WasmHook::load_in(sandbox(Some(&cache)), &path, WasmOptions::default()).unwrap();
    assert_eq!(
        third.module().source(),
        CacheSource::Compiled,
        "a corrupt entry is never trusted"
    );
    assert!(call(&third, &inv("vm", "prepare", Some(b"x"))).status.is_success());
    let fourth = WasmHook::load_in(sandbox(Some(&cache)), &path, WasmOptions::default()).unwrap();
    assert_eq!(fourth.module().source(), CacheSource::Disk, "and it was rewritten");
}

#[test]
fn output_past_the_cap_is_dropped_and_reported_not_a_trap() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = module(
        r#"(func (export "_start") (local $i i32)
             (loop $l (call $write (i32.const 1) (i32.const 65536) (i32.const 65536))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 20)))))"#,
    );
    let opts = WasmOptions {
        max_output: 100_000,
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sandbox(None), write_module(tmp.path(), "flood.wasm", &bytes), opts).unwrap();
    let out = call(&hook, &inv("vm", "prepare", None));
    assert!(out.status.is_success(), "{:?}", out.status);
    assert_eq!(out.stdout.len(), 100_000);
    assert!(out.stdout_truncated);
}

#[test]
fn the_example_modules_refuse_and_rewrite() {
    let tmp = tempfile::tempdir().unwrap();
    let sb = sandbox(None);
    let refuse = write_module(
        tmp.path(),
        "refuse.wasm",
        &wat::parse_file(examples().join("require-owner.wat")).unwrap(),
    );
    let hook = WasmHook::load_in(Arc::clone(&sb), &refuse, WasmOptions::default()).unwrap();
    let out = call(&hook, &inv("vm", "prepare", Some(b"<domain><name>vm</name></domain>")));
    assert!(matches!(out.status, HookStatus::Exited(1)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no <owner:owner> element"));
    let owned = b"<domain><metadata><owner:owner xmlns:owner='x'>alice</owner:owner></metadata></domain>";
    assert!(call(&hook, &inv("vm", "prepare", Some(owned))).status.is_success());
    assert!(
        call(&hook, &inv("vm", "started", Some(b"<domain/>")))
            .status
            .is_success(),
        "only prepare is checked"
    );

    let rewrite = write_module(
        tmp.path(),
        "rewrite.wasm",
        &wat::parse_file(examples().join("migrate-rewrite.wat")).unwrap(),
    );
    let hook = WasmHook::load_in(sb, &rewrite, WasmOptions::default()).unwrap();
    let xml = b"<domain><source bridge='br-legacy'/><source bridge='br-legacy'/></domain>\n";
    let out = call(&hook, &inv("vm", "migrate", Some(xml)));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "<domain><source bridge='br0'/><source bridge='br0'/></domain>\n"
    );
    assert!(
        call(&hook, &inv("vm", "migrate", Some(b"<domain/>"))).stdout.is_empty(),
        "nothing to change: no output"
    );
    assert!(
        call(&hook, &inv("vm", "prepare", Some(xml))).stdout.is_empty(),
        "other events: no output"
    );
}

/// The embedder's layout: `hooks_dir(DIR)` runs a module in `DIR/qemu.d/` (beside
/// scripts, no execute bit needed) and never one in `DIR/qemu.plugins/`, hookctl's
/// directory on a libvirt host, which `HooksDir::plugins` reads when asked for.
#[test]
fn an_embedders_hooks_dir_runs_modules_in_driver_d_and_not_in_plugins_dirs() {
    virt_hooks_wasm::link();
    let tmp = tempfile::tempdir().unwrap();
    let refuse = wat::parse_file(examples().join("require-owner.wat")).unwrap();
    let in_drop_ins = write_module(tmp.path(), "qemu.d/20-require-owner.wasm", &refuse);
    let in_plugins = write_module(tmp.path(), "qemu.plugins/20-require-owner.wasm", &refuse);
    let unowned = QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain><name>vm</name></domain>\n".into(),
    };
    for (hooks, module) in [
        (HooksDir::new(tmp.path()), &in_drop_ins),
        (HooksDir::plugins(tmp.path().join("qemu.plugins")), &in_plugins),
    ] {
        let failure = RegistryBuilder::new()
            .hooks_dir_with(hooks)
            .build()
            .fire_blocking(&unowned)
            .expect_err("the module refuses a guest without an owner");
        let ran: Vec<&str> = failure.report().hooks.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(ran, [module.display().to_string()], "{failure}");
        assert_eq!(failure.failed_hook().backend, "wasm");
    }
}

#[test]
fn many_concurrent_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "echo.wasm", &module(ECHO));
    let hook = WasmHook::load_in(sandbox(None), &path, WasmOptions::default()).unwrap();
    let registry = Arc::new(RegistryBuilder::new().hook(Driver::Qemu, hook).build());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = Arc::clone(&registry);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let name = format!("vm-{t}-{i}");
                    let report = r
                        .fire_blocking(&QemuEvent::Prepare {
                            name: name.clone(),
                            xml: "<x/>".into(),
                        })
                        .unwrap();
                    assert!(report.hooks[0].stdout.contains(&format!("\n{name}\n")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "echo.wasm", &module(ECHO));
    let hook = WasmHook::load_in(sandbox(None), &path, WasmOptions::default()).unwrap();
    let registry = RegistryBuilder::new().hook(Driver::Qemu, hook).build();
    let report = registry
        .fire(&QemuEvent::Prepare {
            name: "async-vm".into(),
            xml: "<x/>".into(),
        })
        .await
        .unwrap();
    assert!(report.hooks[0].stdout.contains("async-vm"));
}

/// Opens `/state/big` (fd 3 is the preopened state dir) for writing; its fd goes to 300.
/// `$write_or_exit` writes the buffer at 0..8 (an iovec) to it and exits with the errno
/// when a write is refused.
const STATE_OPEN: &str = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pwrite" (func $fd_pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_set_size" (func $set_size (param i32 i64) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 100)
  (data (i32.const 100) "big")
  (func $open
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 3)
                         (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))
      (then (call $proc_exit (i32.const 70)))))
  (func $write_or_exit (local $e i32)
    (local.set $e (call $fd_write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $e) (then (call $proc_exit (local.get $e)))))
"#;

/// WASI's `dquot` ("disk quota exceeded"), what a write past the cap returns.
const DQUOT: i32 = 19;

fn stateful_hook(tmp: &Path, name: &str, body: &str, state_max: u64) -> (WasmHook, PathBuf) {
    let bytes = wat::parse_str(format!("(module {STATE_OPEN} {body})")).unwrap();
    let state = tmp.join("state");
    fs::create_dir_all(&state).unwrap();
    let opts = WasmOptions {
        state_max,
        ..WasmOptions::default()
    };
    let hook = WasmHook::load_in(sandbox(None), write_module(tmp, name, &bytes), opts).unwrap();
    (hook, state)
}

fn with_state(inv: Invocation, state: &Path) -> Invocation {
    inv.with_state_dir(Some(Arc::from(state)))
}

/// Bytes and entries in a state directory as the cap counts them: each entry at the
/// larger of its length and its blocks, and the directory's own size past one page.
fn held(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir).unwrap();
    let (bytes, entries) = held_below(dir);
    (
        bytes + meta.len().max(meta.blocks() * 512).saturating_sub(4096),
        entries,
    )
}

fn held_below(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut entries) = (0, 0);
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        entries += 1;
        bytes += meta.len().max(meta.blocks() * 512);
        if meta.is_dir() {
            let (b, e) = held_below(&entry.path());
            bytes += b;
            entries += e;
        }
    }
    (bytes, entries)
}

fn refused_with_dquot(out: &HookOutcome) {
    assert!(
        matches!(out.status, HookStatus::Exited(DQUOT)),
        "{:?} {:?}",
        out.status,
        out.warnings
    );
    assert!(out.warnings.iter().any(|w| w.contains("state")), "{:?}", out.warnings);
}

#[test]
fn straight_line_writes_past_the_cap_are_refused_at_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    // 16 writes of 4 MiB in a row, no loop and no call between them, then exit 0:
    // no epoch point to sample at.
    let writes =
        "(drop (call $fd_write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8)))\n".repeat(16);
    let body = format!(
        r#"(func (export "_start")
             (call $open)
             (i32.store (i32.const 0) (i32.const 1024))
             (i32.store (i32.const 4) (i32.const 4194304))
             {writes}
             (call $proc_exit (i32.const 0)))"#
    );
    let (hook, state) = stateful_hook(tmp.path(), "burst.wasm", &body, 1 << 20);
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    let (bytes, _) = held(&state);
    assert!(bytes <= 1 << 20, "{bytes} bytes under a 1 MiB cap");
    // The module ignored the errors and exited 0: its call stands, with a warning.
    assert!(matches!(out.status, HookStatus::Exited(0)), "{:?}", out.status);
    let warning = out.warnings.join("\n");
    assert!(
        warning.contains("4194304 more bytes") && warning.contains("state_max of 1048576"),
        "{warning}"
    );
}

#[test]
fn a_module_filling_its_state_dir_gets_dquot_at_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // Writes 64 KiB at a time until a write fails.
    let (hook, state) = stateful_hook(
        tmp.path(),
        "fill.wasm",
        r#"(func (export "_start")
             (call $open)
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more (call $write_or_exit) (br $more)))"#,
        1 << 20,
    );
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    refused_with_dquot(&out);
    let size = fs::metadata(state.join("big")).unwrap().len();
    // Every byte up to the cap was allowed, none past it.
    assert!(size <= 1 << 20 && size > (1 << 20) - 65536, "{size} bytes written");
    // The next event starts from what is there and is refused at once.
    let out = call(&hook, &with_state(inv("vm", "started", None), &state));
    refused_with_dquot(&out);
    assert_eq!(fs::metadata(state.join("big")).unwrap().len(), size);
}

#[test]
fn a_sparse_file_counts_at_its_length() {
    let tmp = tempfile::tempdir().unwrap();
    // Seeks 100 MiB in and writes one byte; pwrites one byte at 200 MiB; extends with
    // set_size to 300 MiB. Each must be refused.
    let (hook, state) = stateful_hook(
        tmp.path(),
        "sparse.wasm",
        r#"(func (export "_start") (local $fd i32)
             (call $open)
             (local.set $fd (i32.load (i32.const 300)))
             (drop (call $fd_seek (local.get $fd) (i64.const 104857600) (i32.const 0) (i32.const 16)))
             (i32.store (i32.const 0) (i32.const 100))
             (i32.store (i32.const 4) (i32.const 1))
             (if (i32.ne (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)) (i32.const 19))
               (then (call $proc_exit (i32.const 1))))
             (if (i32.ne (call $fd_pwrite (local.get $fd) (i32.const 0) (i32.const 1) (i64.const 209715200) (i32.const 8)) (i32.const 19))
               (then (call $proc_exit (i32.const 2))))
             (if (i32.ne (call $set_size (local.get $fd) (i64.const 314572800)) (i32.const 19))
               (then (call $proc_exit (i32.const 3))))
             (call $proc_exit (i32.const 0)))"#,
        1 << 20,
    );
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    assert!(
        matches!(out.status, HookStatus::Exited(0)),
        "{:?} {:?}",
        out.status,
        out.warnings
    );
    assert_eq!(fs::metadata(state.join("big")).unwrap().len(), 0);
}

#[test]
fn a_state_dir_that_cannot_be_opened_fails_the_call_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook, _) = stateful_hook(
        tmp.path(),
        "any.wasm",
        r#"(func (export "_start") (call $proc_exit (i32.const 0)))"#,
        1 << 20,
    );
    let missing = tmp.path().join("gone");
    let out = call(&hook, &with_state(inv("vm", "start", None), &missing));
    let HookStatus::Crashed(why) = &out.status else {
        panic!("{:?}", out.status)
    };
    assert!(
        why.contains("cannot open its state directory") && why.contains("gone"),
        "{why}"
    );
}

#[test]
fn writing_through_an_unlinked_file_still_counts_against_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // Opens /state/big, unlinks it, and writes 64 KiB at a time through the descriptor.
    let (hook, state) = stateful_hook(
        tmp.path(),
        "unlinked.wasm",
        r#"(func (export "_start")
             (call $open)
             (if (call $path_unlink_file (i32.const 3) (i32.const 100) (i32.const 3))
               (then (call $proc_exit (i32.const 71))))
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more (call $write_or_exit) (br $more)))"#,
        1 << 20,
    );
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    refused_with_dquot(&out);
}

#[test]
fn the_cap_holds_at_the_objects_last_event_too() {
    let tmp = tempfile::tempdir().unwrap();
    // Writes 2 MiB (32 x 64 KiB) ignoring errors, then exits 0.
    let body = r#"(func (export "_start") (local $n i32)
             (call $open)
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more
               (drop (call $fd_write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8)))
               (local.set $n (i32.add (local.get $n) (i32.const 1)))
               (br_if $more (i32.lt_u (local.get $n) (i32.const 32))))
             (call $proc_exit (i32.const 0)))"#;
    let (hook, state) = stateful_hook(tmp.path(), "two-mib.wasm", body, 1 << 20);
    let release = Invocation::new(Driver::Qemu, EventArgs::new(["vm", "release", "end", "-"]), None);
    let out = call(&hook, &with_state(release, &state));
    assert!(matches!(out.status, HookStatus::Exited(0)), "{:?}", out.status);
    assert!(fs::metadata(state.join("big")).unwrap().len() <= 1 << 20);
}

#[test]
fn straight_line_creates_past_the_entry_cap_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // 1,500 directories and files made one after the other, no loop, names 0000-1499;
    // then exits 0 if exactly 501 were refused with dquot.
    let mut body = String::from(
        r#"(global $refused (mut i32) (i32.const 0))
           (func $count (param $e i32)
             (if (i32.eq (local.get $e) (i32.const 19))
               (then (global.set $refused (i32.add (global.get $refused) (i32.const 1))))))
           (func (export "_start")
             (call $open)"#,
    );
    let mut data = String::new();
    for i in 0..1500 {
        let at = 4096 + i * 8;
        data.push_str(&format!("(data (i32.const {at}) \"{i:04}\")\n"));
        if i % 2 == 0 {
            body.push_str(&format!(
                "(call $count (call $mkdir (i32.const 3) (i32.const {at}) (i32.const 4)))\n"
            ));
        } else {
            body.push_str(&format!(
                "(call $count (call $path_open (i32.const 3) (i32.const 0) (i32.const {at}) (i32.const 4) (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 304)))\n"
            ));
        }
    }
    body.push_str("(call $proc_exit (i32.ne (global.get $refused) (i32.const 501))))\n");
    body.push_str(&data);
    let (hook, state) = stateful_hook(tmp.path(), "many.wasm", &body, 64 << 20);
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    let (_, entries) = held(&state);
    assert_eq!(entries, 1000, "{:?}", out.warnings);
    // `big` counts too: 999 of the 1,500 were made, 501 refused with dquot.
    assert!(
        matches!(out.status, HookStatus::Exited(0)),
        "{:?} {:?}",
        out.status,
        out.warnings
    );
    assert!(
        out.warnings.iter().any(|w| w.contains("1000 files and directories")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn a_deep_tree_with_long_names_is_measured_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    // A chain of 900 directories with 250-byte names (225 KB of path, 55 x PATH_MAX),
    // each made in the one before it through a descriptor, the parent closed after.
    let name = "n".repeat(250);
    let body = format!(
        r#"(data (i32.const 4096) "{name}")
           (func (export "_start") (local $fd i32) (local $n i32) (local $e i32)
             (local.set $fd (i32.const 3))
             (loop $deeper
               (local.set $e (call $mkdir (local.get $fd) (i32.const 4096) (i32.const 250)))
               (if (local.get $e) (then (call $proc_exit (local.get $e))))
               (local.set $e (call $path_open (local.get $fd) (i32.const 0) (i32.const 4096) (i32.const 250)
                                (i32.const 2) (i64.const 16383) (i64.const 16383) (i32.const 0) (i32.const 304)))
               (if (local.get $e) (then (call $proc_exit (i32.div_u (local.get $n) (i32.const 10)))))
               (if (i32.ne (local.get $fd) (i32.const 3)) (then (drop (call $fd_close (local.get $fd)))))
               (local.set $fd (i32.load (i32.const 304)))
               (local.set $n (i32.add (local.get $n) (i32.const 1)))
               (br_if $deeper (i32.lt_u (local.get $n) (i32.const 900))))
             (call $proc_exit (i32.const 0)))"#
    );
    let (hook, state) = stateful_hook(tmp.path(), "deep.wasm", &body, 64 << 20);
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    assert!(
        matches!(out.status, HookStatus::Exited(0)),
        "{:?} {:?}",
        out.status,
        out.warnings
    );
    // Measured at the end without error (a path-based walk fails past PATH_MAX), and
    // the state root's removal gets rid of it.
    fs::remove_dir_all(&state).unwrap();
    assert!(!state.exists());
}

#[test]
fn a_megabyte_function_name_in_a_host_call_error_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    // The name section names the function that makes a failing host call (a buffer
    // out of bounds): wasmtime's error carries a backtrace with that name.
    let name = "n".repeat(1_200_000);
    let wat = format!(
        r#"(module
             (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func ${name} (drop (call $random_get (i32.const 65000) (i32.const 100000))))
             (func (export "_start") (call ${name})))"#
    );
    let path = write_module(tmp.path(), "long-name.wasm", &wat::parse_str(wat).unwrap());
    let hook = WasmHook::load_in(sandbox(None), &path, WasmOptions::default()).unwrap();
    let out = call(&hook, &inv("vm", "start", None));
    let HookStatus::Crashed(why) = &out.status else {
        panic!("{:?}", out.status)
    };
    assert!(why.len() < 5000, "a {} byte status", why.len());
    assert!(why.contains("more bytes cut"), "{why}");
    // The cause survives the cut, ahead of the backtrace.
    assert!(why.starts_with("random_get: buffer"), "{}", &why[..200]);
}

/// Makes a chain of `levels` directories with 250-byte names under /state (deeper than
/// PATH_MAX past 16), each through the descriptor of the one before; leaves the
/// deepest's descriptor in the global `$deep`.
const DEEP_CHAIN: &str = r#"
  (global $deep (mut i32) (i32.const 3))
  (func $descend (param $levels i32) (local $n i32) (local $e i32)
    (loop $deeper
      (local.set $e (call $mkdir (global.get $deep) (i32.const 4096) (i32.const 250)))
      (if (local.get $e) (then (call $proc_exit (i32.const 90))))
      (local.set $e (call $path_open (global.get $deep) (i32.const 0) (i32.const 4096) (i32.const 250)
                       (i32.const 2) (i64.const 0x1FFFFFBF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 304)))
      (if (local.get $e) (then (call $proc_exit (i32.add (i32.const 60) (local.get $e)))))
      (if (i32.ne (global.get $deep) (i32.const 3)) (then (drop (call $fd_close (global.get $deep)))))
      (global.set $deep (i32.load (i32.const 304)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $deeper (i32.lt_u (local.get $n) (local.get $levels)))))
"#;

#[test]
fn an_unlinked_file_deeper_than_path_max_still_counts_against_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 levels down (5 KB of path), opens `big`, unlinks it, writes 64 KiB at a time
    // through the descriptor until refused. The state dir is reached through a
    // symlink, as a configured root may be.
    let name = "d".repeat(250);
    let body = format!(
        r#"(data (i32.const 4096) "{name}")
           {DEEP_CHAIN}
           (func (export "_start")
             (call $descend (i32.const 20))
             (if (call $path_open (global.get $deep) (i32.const 0) (i32.const 100) (i32.const 3)
                                  (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))
               (then (call $proc_exit (i32.const 70))))
             (if (call $path_unlink_file (global.get $deep) (i32.const 100) (i32.const 3))
               (then (call $proc_exit (i32.const 71))))
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more (call $write_or_exit) (br $more)))"#
    );
    let (hook, _) = stateful_hook(&tmp.path().join("real"), "deep-unlinked.wasm", &body, 1 << 20);
    std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
    let out = call(
        &hook,
        &with_state(inv("vm", "start", None), &tmp.path().join("link/state")),
    );
    refused_with_dquot(&out);
}

#[test]
fn calls_for_the_same_object_at_once_share_one_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // Each call appends 64 KiB at a time to `big` until refused.
    let (hook, state) = stateful_hook(
        tmp.path(),
        "append.wasm",
        r#"(func (export "_start")
             (call $open)
             (drop (call $fd_seek (i32.load (i32.const 300)) (i64.const 0) (i32.const 2) (i32.const 16)))
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more (call $write_or_exit) (br $more)))"#,
        1 << 20,
    );
    let hook = Arc::new(hook);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (hook, state) = (Arc::clone(&hook), state.clone());
            std::thread::spawn(move || call(&hook, &with_state(inv("vm", "start", None), &state)))
        })
        .collect();
    for c in calls {
        refused_with_dquot(&c.join().unwrap());
    }
    let (bytes, _) = held(&state);
    assert!(bytes <= 1 << 20, "{bytes} bytes under a 1 MiB cap");
}

#[test]
fn names_count_against_the_cap_as_the_directory_grows() {
    let tmp = tempfile::tempdir().unwrap();
    // Fills `big` to 12 KiB under the cap, then makes empty files with 250-byte names
    // until refused: each name grows the directory itself.
    let name = "f".repeat(250);
    let body = format!(
        r#"(data (i32.const 4096) "{name}")
           (func (export "_start") (local $n i32) (local $e i32)
             (call $open)
             (i32.store (i32.const 0) (i32.const 1024))
             (i32.store (i32.const 4) (i32.const 1036288))
             (call $write_or_exit)
             (loop $more
               (i32.store8 (i32.const 4342) (i32.add (i32.const 65) (i32.rem_u (local.get $n) (i32.const 26))))
               (i32.store8 (i32.const 4343) (i32.add (i32.const 65) (i32.rem_u (i32.div_u (local.get $n) (i32.const 26)) (i32.const 26))))
               (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 4096) (i32.const 250)
                                (i32.const 5) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 304)))
               (if (local.get $e) (then (call $proc_exit (local.get $e))))
               (drop (call $fd_close (i32.load (i32.const 304))))
               (local.set $n (i32.add (local.get $n) (i32.const 1)))
               (br_if $more (i32.lt_u (local.get $n) (i32.const 990))))
             (call $proc_exit (i32.const 0)))"#
    );
    let (hook, state) = stateful_hook(tmp.path(), "names.wasm", &body, 1 << 20);
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    refused_with_dquot(&out);
    let (bytes, entries) = held(&state);
    assert!(bytes <= 1 << 20, "{bytes} bytes in {entries} entries under a 1 MiB cap");
}

#[test]
fn an_iovec_array_running_past_memory_is_refused_not_unchecked() {
    let tmp = tempfile::tempdir().unwrap();
    // The array's first entry is the last 8 bytes of memory, its second past the end:
    // WASI reads the array lazily and would write the first buffer.
    let (hook, state) = stateful_hook(
        tmp.path(),
        "oob.wasm",
        r#"(func (export "_start") (local $e i32)
             (call $open)
             (i32.store (i32.const 6553592) (i32.const 1024))
             (i32.store (i32.const 6553596) (i32.const 4194304))
             (local.set $e (call $fd_write (i32.load (i32.const 300)) (i32.const 6553592) (i32.const 2) (i32.const 8)))
             (if (i32.eqz (local.get $e)) (then (call $proc_exit (i32.const 1))))
             (local.set $e (call $fd_pwrite (i32.load (i32.const 300)) (i32.const 6553592) (i32.const 2) (i64.const 0) (i32.const 8)))
             (call $proc_exit (local.get $e)))"#,
        1 << 20,
    );
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    // WASI's `fault`.
    assert!(matches!(out.status, HookStatus::Exited(21)), "{:?}", out.status);
    assert_eq!(fs::metadata(state.join("big")).unwrap().len(), 0);
}

#[test]
fn renumbering_a_descriptor_onto_itself_keeps_its_file_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook, state) = stateful_hook(
        tmp.path(),
        "renumber.wasm",
        r#"(func (export "_start")
             (call $open)
             (if (call $renumber (i32.load (i32.const 300)) (i32.load (i32.const 300)))
               (then (call $proc_exit (i32.const 72))))
             (if (call $path_unlink_file (i32.const 3) (i32.const 100) (i32.const 3))
               (then (call $proc_exit (i32.const 71))))
             (i32.store (i32.const 0) (i32.const 65536))
             (i32.store (i32.const 4) (i32.const 65536))
             (loop $more (call $write_or_exit) (br $more)))"#,
        1 << 20,
    );
    let out = call(&hook, &with_state(inv("vm", "start", None), &state));
    refused_with_dquot(&out);
}

/// Prints its environment, one variable per line.
const PRINT_ENV: &str = r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 40) "\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))
  (func (export "_start") (local $n i32) (local $i i32) (local $p i32)
    (drop (call $sizes (i32.const 8) (i32.const 12)))
    (drop (call $get (i32.const 1024) (i32.const 4096)))
    (local.set $n (i32.load (i32.const 8)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $p (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
      (call $write (local.get $p) (call $strlen (local.get $p)))
      (call $write (i32.const 40) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))))
"#;

#[test]
fn config_reaches_the_module_as_its_only_variables_beside_lc_all() {
    use virt_hooks_core::backend::{HookLoader, HookSettings};
    let tmp = tempfile::tempdir().unwrap();
    let path = write_module(tmp.path(), "env.wasm", &wat::parse_str(PRINT_ENV).unwrap());
    let settings = HookSettings::parse(
        &tmp.path().join("env.wasm.toml"),
        "[config]\nmax_vcpus = 8\nbridge = \"br0\"\nLD_PRELOAD = \"x\"\n",
    )
    .unwrap();
    let loader = virt_hooks_wasm::WasmLoader::default();
    let hook = loader.load(&path, &settings).unwrap();
    let out = futures_lite_block_on(hook.call(&inv("vm1", "prepare", None)));
    assert!(out.status.is_success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "LC_ALL=C\nVIRT_HOOK_CONFIG_LD_PRELOAD=x\nVIRT_HOOK_CONFIG_BRIDGE=br0\nVIRT_HOOK_CONFIG_MAX_VCPUS=8\n"
    );
    let plain = loader.load(&path, &HookSettings::default()).unwrap();
    let out = futures_lite_block_on(plain.call(&inv("vm1", "prepare", None)));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "LC_ALL=C\n");
}

/// A module in a hooks dir given loaders without the WASM one, in a program that links
/// the WASM backend: the message says so, instead of telling it to call a `link()` it
/// already called.
#[test]
fn a_dir_given_no_wasm_loader_says_so_not_to_link_the_backend() {
    virt_hooks_wasm::link();
    let tmp = tempfile::tempdir().unwrap();
    write_module(&tmp.path().join("qemu.d"), "10-echo.wasm", &module(ECHO));
    let dir = HooksDir::with_loaders(tmp.path(), Vec::new());
    let registry = RegistryBuilder::new().hooks_dir_with(dir).build();
    let failure = registry
        .fire_blocking(&QemuEvent::Prepare {
            name: "vm".into(),
            xml: "<domain/>".into(),
        })
        .unwrap_err();
    let text = virt_hooks_core::error::chain(&failure);
    assert!(text.contains("was given no loader for it"), "{text}");
    assert!(!text.contains("link()"), "{text}");
}
