//! Fixtures shared by the criterion benches and the reporter: the same work measured
//! through the library and through the plainest baseline, so ratios compare like with
//! like.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::testing::MockHook;
use virt_hooks_core::{Driver, Hook, Registry, RegistryBuilder};
use virt_hooks_exec::{ExecHook, ExecOptions};

/// The domain XML every bench passes on stdin (about 1 KiB, like a small real domain).
pub fn domain_xml() -> String {
    let mut xml = String::from("<domain type='kvm'>\n  <name>bench</name>\n  <devices>\n");
    while xml.len() < 1000 {
        xml.push_str("    <disk type='file'><source file='/var/lib/libvirt/images/x.qcow2'/></disk>\n");
    }
    xml.push_str("  </devices>\n</domain>\n");
    xml
}

/// The event every bench fires.
pub fn prepare_event() -> QemuEvent {
    QemuEvent::Prepare {
        name: "bench".into(),
        xml: domain_xml(),
    }
}

/// A directory of hook scripts that outlives the benches.
#[derive(Debug)]
pub struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    /// An empty fixture dir.
    pub fn new() -> std::io::Result<Self> {
        virt_hooks_exec::link();
        Ok(Scripts {
            dir: tempfile::tempdir()?,
        })
    }

    /// The dir (usable as a hooks dir).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable script.
    pub fn script(&self, rel: &str, body: &str) -> std::io::Result<PathBuf> {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap_or(self.dir.path()))?;
        fs::write(&p, body)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }
}

/// The hook every exec bench runs: a shell script that reads its stdin and succeeds.
pub const TRIVIAL_SCRIPT: &str = "#!/bin/sh\ncat > /dev/null\n";

/// A registry with `n` mock hooks that succeed.
pub fn mock_registry(n: usize) -> Registry {
    (0..n)
        .fold(RegistryBuilder::new(), |b, i| {
            b.hook(Driver::Qemu, MockHook::succeeding(format!("mock-{i}")))
        })
        .build()
}

/// [`mock_registry`] with every limit on: a per-hook timeout, an event budget and one
/// pass-through layer of the embedder's (what the limits cost per hook and per event).
pub fn limited_mock_registry(n: usize) -> Registry {
    (0..n)
        .fold(RegistryBuilder::new(), |b, i| {
            b.hook(Driver::Qemu, MockHook::succeeding(format!("mock-{i}")))
        })
        .timeout(Some(Duration::from_secs(30)))
        .event_timeout(Some(Duration::from_secs(60)))
        .layer(virt_hooks_core::layer::from_fn(|hook, inv| async move {
            hook.call(&inv).await
        }))
        .build()
}

/// A registry with one exec hook.
pub fn exec_registry(path: &Path, timeout: Option<Duration>) -> Registry {
    let hook = ExecHook::with_options(
        path,
        ExecOptions {
            timeout,
            ..ExecOptions::default()
        },
    );
    RegistryBuilder::new().hook(Driver::Qemu, hook).build()
}

/// The fixture plugin's `.so`, which cargo builds beside this binary (in `deps/`).
pub fn fixture_plugin() -> Option<PathBuf> {
    fixture_plugin::shared_object()
}

/// A registry with `n` hooks backed by one native plugin.
pub fn dylib_registry(so: &Path, n: usize) -> Result<Registry, virt_hooks_core::LoadError> {
    let hook = virt_hooks_dylib::DylibHook::load(so)?;
    Ok((0..n)
        .fold(RegistryBuilder::new(), |b, _| b.hook(Driver::Qemu, hook.clone()))
        .build())
}

/// A WASI command module that reads all of stdin and exits 0 (the smallest real hook).
pub fn wasm_reader() -> Vec<u8> {
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
    .expect("bench WAT")
}

/// A module that spins `n` iterations of arithmetic: to measure epoch checks.
pub fn wasm_spinner(n: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module (func (export "_start") (local $i i32) (local $x i32)
             (loop $l
               (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 31)) (local.get $i)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))))"#
    ))
    .expect("bench WAT")
}

/// A registry over a hooks dir (re-read on every fire, as libvirt does).
pub fn dir_registry(dir: &Path) -> Registry {
    RegistryBuilder::new().hooks_dir(dir).build()
}

/// The baseline: std's `Command` (posix_spawn) with the same argv and environment as
/// libvirt's, the document on a stdin pipe and both outputs captured, as any careful
/// caller would.
pub fn raw_spawn(path: &Path, input: &[u8]) -> bool {
    let env = virt_hooks_exec::ENV_WHITELIST
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (*k, v)));
    let mut child = match Command::new(path)
        .args(["bench", "prepare", "begin", "-"])
        .env_clear()
        .env("LC_ALL", "C")
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child.wait_with_output().is_ok_and(|o| o.status.success())
}

/// One hook called directly, without the registry: the floor for a native hook.
pub fn direct_call(hook: &Arc<dyn Hook>, inv: &virt_hooks_core::Invocation) -> bool {
    pollster::block_on(hook.call(inv)).status.is_success()
}
