//! Per-object state (`state = true`): exec and WASM plugins keep a directory from a
//! guest's first event until after its `release`, and a name or a plugin that tries to
//! leave it gets nowhere.

use std::fs;
use std::path::{Path, PathBuf};

use conformance::HooksTree;
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::state::StateRoot;
use virt_hooks_core::{block_on, Driver, Guest, HooksDir, Lifecycle, Registry, RegistryBuilder};

/// WASI imports the modules below use.
const WASI: &str = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
"#;

/// Appends `x\n` to `/state/calls` (fd 3 is the preopened `/state`); exits with the
/// errno of a failed open.
const COUNT_CALLS: &str = r#"
  (data (i32.const 100) "calls")
  (data (i32.const 200) "x\n")
  (func (export "_start") (local $err i32)
    ;; path_open(fd 3, follow, "calls", O_CREAT, rights read|write, 0, FDFLAGS_APPEND, &fd at 300)
    (local.set $err (call $path_open (i32.const 3) (i32.const 1) (i32.const 100) (i32.const 5)
                                     (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 1) (i32.const 300)))
    (if (local.get $err) (then (call $proc_exit (local.get $err))))
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const 2))
    (call $proc_exit (call $fd_write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8))))
"#;

fn wasm(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {WASI} {body})")).expect("test WAT parses")
}

struct Setup {
    tree: HooksTree,
    root: StateRoot,
}

impl Setup {
    fn new() -> Self {
        let tree = HooksTree::new();
        let root = StateRoot::new(tree.path().join("run/state"));
        fs::create_dir_all(tree.path().join("qemu.plugins")).unwrap();
        Setup { tree, root }
    }

    fn plugins(&self) -> PathBuf {
        self.tree.path().join("qemu.plugins")
    }

    /// An exec plugin that keeps state: it records each event in its state dir, and at
    /// `release end` copies what it recorded to the tree's log, then exits `release_exit`.
    fn exec_plugin(&self, name: &str, release_exit: i32) -> PathBuf {
        let log = self.tree.log_path();
        let body = format!(
            "#!/bin/sh\ncat > /dev/null\n[ -n \"$VIRT_HOOK_STATE\" ] || {{ echo no state >&2; exit 9; }}\n\
             echo \"$2 $3\" >> \"$VIRT_HOOK_STATE/seen\"\n\
             if [ \"$2 $3\" = 'release end' ]; then cp \"$VIRT_HOOK_STATE/seen\" '{}'; exit {release_exit}; fi\n",
            log.display()
        );
        let path = self.tree.script(&format!("qemu.plugins/{name}"), &body);
        self.stateful(&path, "");
        path
    }

    fn stateful(&self, plugin: &Path, extra: &str) {
        fs::write(
            virt_hooks_core::backend::HookSettings::sidecar(plugin),
            format!("state = true\n{extra}"),
        )
        .unwrap();
    }

    fn registry(&self) -> Registry {
        RegistryBuilder::new()
            .hooks_dir_with(HooksDir::plugins(self.plugins()).with_state_root(Some(self.root.clone())))
            .build()
    }

    fn dir(&self, object: &str, plugin: &str) -> PathBuf {
        self.root.path().join("qemu").join(object).join(plugin)
    }
}

#[test]
fn exec_and_wasm_plugins_keep_state_from_prepare_to_release() {
    let s = Setup::new();
    s.exec_plugin("10-exec", 0);
    let module = s.plugins().join("20-count.wasm");
    fs::write(&module, wasm(COUNT_CALLS)).unwrap();
    s.stateful(&module, "");
    let registry = s.registry();
    let guest = Guest::new(Driver::Qemu, "web1", "<domain/>\n");
    let lifecycle = Lifecycle::new(&registry);
    let started = block_on(lifecycle.start(&guest)).expect("the guest starts");
    assert!(started.proceeds());
    let seen = fs::read_to_string(s.dir("web1", "10-exec").join("seen")).unwrap();
    assert_eq!(seen, "prepare begin\nstart begin\nstarted begin\n");
    let calls = fs::read_to_string(s.dir("web1", "20-count.wasm").join("calls")).unwrap();
    assert_eq!(calls, "x\n".repeat(3), "the WASM plugin kept its file across events");
    for level in [
        s.root.path(),
        &s.root.path().join("qemu/web1"),
        &s.dir("web1", "10-exec"),
    ] {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(level).unwrap().mode() & 0o777,
            0o700,
            "{}",
            level.display()
        );
    }

    block_on(lifecycle.stop(&guest, virt_hooks_core::events::ReleaseReason::Destroyed)).expect("the guest stops");
    // At `release end` the plugin still saw everything; after it, the state is gone.
    assert_eq!(
        s.tree.log(),
        [
            "prepare begin",
            "start begin",
            "started begin",
            "stopped end",
            "release end"
        ]
    );
    assert!(!s.root.path().join("qemu/web1").exists(), "state outlived release");
    assert!(s.root.entries(Driver::Qemu).is_empty());
}

#[test]
fn a_plugin_that_fails_release_keeps_its_directory_and_the_others_go() {
    let s = Setup::new();
    s.exec_plugin("10-fails", 3);
    s.exec_plugin("20-fine", 0);
    let registry = s.registry();
    let guest = Guest::new(Driver::Qemu, "db", "<domain/>\n");
    let lifecycle = Lifecycle::new(&registry);
    block_on(lifecycle.start(&guest)).unwrap();
    let release = QemuEvent::Release {
        name: "db".into(),
        xml: "<domain/>\n".into(),
        reason: virt_hooks_core::events::ReleaseReason::Destroyed,
    };
    // `release` failures never stop libvirt; the report still says what failed.
    let report = registry.fire_blocking(&release).unwrap();
    assert!(!report.succeeded());
    assert_eq!(report.state_kept, [s.dir("db", "10-fails")]);
    assert!(s.dir("db", "10-fails").join("seen").exists());
    assert!(!s.dir("db", "20-fine").exists());
    let entries = s.root.entries(Driver::Qemu);
    assert_eq!(entries.len(), 1);
    let why = entries[0].kept.as_deref().expect("a note says why it was kept");
    assert!(
        why.starts_with("release end failed:") && why.contains("exit status 3"),
        "{why}"
    );

    // The next run of the guest reuses the kept directory; once release succeeds, it
    // and its note go.
    s.exec_plugin("10-fails", 0);
    block_on(lifecycle.start(&guest)).unwrap();
    let report = registry.fire_blocking(&release).unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert!(report.state_kept.is_empty());
    assert!(!s.root.path().join("qemu/db").exists());
    assert!(!s.root.path().join(".kept/qemu/db").exists());
}

#[test]
fn an_object_name_that_would_leave_the_root_fails_only_the_stateful_plugin() {
    let s = Setup::new();
    s.exec_plugin("10-stateful", 0);
    s.tree.logging("qemu.plugins/20-plain");
    let registry = s.registry();
    for object in ["..", "../../etc", "a/b", "."] {
        let event = QemuEvent::Prepare {
            name: object.into(),
            xml: "<domain/>\n".into(),
        };
        let err = registry.fire_blocking(&event).expect_err("the stateful plugin fails");
        let report = err.report();
        let failed = &report.hooks[0];
        assert!(!failed.success);
        let message = failed.message.as_deref().unwrap_or_default();
        assert!(message.contains("cannot name a state directory"), "{object}: {message}");
        assert!(report.hooks[1].success, "the other plugin still ran");
    }
    let leftovers: Vec<_> = walk(s.tree.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "seen"))
        .collect();
    assert!(leftovers.is_empty(), "a plugin ran with a state dir: {leftovers:?}");
    assert!(!s.root.path().join("qemu").exists());
}

#[test]
fn a_plugin_asking_for_state_where_none_is_kept_fails_saying_so() {
    let s = Setup::new();
    s.exec_plugin("10-stateful", 0);
    let registry = RegistryBuilder::new()
        .hooks_dir_with(HooksDir::plugins(s.plugins()))
        .build();
    let event = QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>\n".into(),
    };
    let err = registry.fire_blocking(&event).expect_err("fails");
    let message = err.report().hooks[0].message.clone().unwrap_or_default();
    assert!(
        message.contains("keeps none") && message.contains("state = true"),
        "{message}"
    );
}

#[test]
fn a_daemon_plugin_asking_for_state_is_a_settings_error() {
    let s = Setup::new();
    let plugin = s.tree.logging("daemon.plugins/10-x");
    s.stateful(&plugin, "");
    let dir = HooksDir::plugins(s.tree.path().join("daemon.plugins")).with_state_root(Some(s.root.clone()));
    let entry = dir.scan(Driver::Daemon).unwrap().remove(0);
    let err = entry.settings().unwrap_err();
    assert!(err.to_string().contains("daemon events have no object"), "{err}");
    assert_eq!(err.line, Some(1));
}

#[test]
fn a_wasm_plugin_cannot_leave_its_state_dir() {
    let s = Setup::new();
    // path_open("../escape", O_CREAT) relative to /state: exits with the errno.
    let escape = r#"
      (data (i32.const 100) "../escape")
      (func (export "_start")
        (call $proc_exit (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 9)
                                          (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))))"#;
    let module = s.plugins().join("10-escape.wasm");
    fs::write(&module, wasm(escape)).unwrap();
    s.stateful(&module, "");
    let event = QemuEvent::Prepare {
        name: "vm".into(),
        xml: "<domain/>\n".into(),
    };
    let err = s
        .registry()
        .fire_blocking(&event)
        .expect_err("the open fails, and so the plugin");
    let status = &err.report().hooks[0].status;
    assert!(
        matches!(status, virt_hooks_core::report::StatusRecord::Exited { code } if *code != 0),
        "{status:?}"
    );
    assert!(!s.root.path().join("qemu/vm/escape").exists());
    assert!(walk(s.tree.path())
        .iter()
        .all(|p| p.file_name().is_none_or(|n| n != "escape")));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// The README's way to set a plugin aside (`mv 10-x 10-x.disabled`) while a guest it
/// keeps state for runs: at the guest's `release` the plugin cannot run to undo what it
/// did, so its directory is kept (with a note saying why), never removed in silence. A
/// plugin still there that its `[match]` keeps off `release` did not undo its record
/// either: kept too, saying it did not run.
#[test]
fn a_plugin_set_aside_while_its_guest_runs_keeps_its_state() {
    let s = Setup::new();
    let gone = s.exec_plugin("10-gone", 0);
    let quiet = s.exec_plugin("20-quiet", 0);
    s.stateful(&quiet, "[match]\nops = [\"prepare\", \"start\", \"started\"]\n");
    let registry = s.registry();
    let guest = Guest::new(Driver::Qemu, "web1", "<domain/>\n");
    let lifecycle = Lifecycle::new(&registry);
    block_on(lifecycle.start(&guest)).unwrap();
    assert!(s.dir("web1", "10-gone").join("seen").exists());
    fs::rename(&gone, gone.with_extension("disabled")).unwrap();
    fs::rename(
        virt_hooks_core::backend::HookSettings::sidecar(&gone),
        s.plugins().join("10-gone.disabled.toml"),
    )
    .unwrap();
    let release = QemuEvent::Release {
        name: "web1".into(),
        xml: "<domain/>\n".into(),
        reason: virt_hooks_core::events::ReleaseReason::Destroyed,
    };
    let report = registry.fire_blocking(&release).unwrap();
    let mut kept = report.state_kept.clone();
    kept.sort();
    assert_eq!(
        kept,
        [s.dir("web1", "10-gone"), s.dir("web1", "20-quiet")],
        "{report:?}"
    );
    assert!(s.dir("web1", "10-gone").join("seen").exists());
    let entries = s.root.entries(Driver::Qemu);
    let note = |hook: &str| {
        let entry = entries.iter().find(|e| e.hook == hook).expect("listed");
        entry.kept.clone().expect("a note says why it was kept")
    };
    assert!(note("10-gone").contains("no longer in"), "{}", note("10-gone"));
    assert!(note("20-quiet").contains("did not run at it"), "{}", note("20-quiet"));
}
