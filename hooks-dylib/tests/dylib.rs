//! Native plugins: the Rust fixture and C plugins built here with the system C compiler,
//! alone and mixed with scripts in one `.d` dir.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::{Driver, HookStatus, Invocation, RegistryBuilder};
use virt_hooks_dylib::{DylibHook, Library};

mod common;
use common::compile_c;

/// The fixture cdylib, built by cargo as a dev-dependency next to this test binary.
fn fixture() -> PathBuf {
    fixture_plugin::shared_object().expect("libfixture_plugin.so: cargo builds it as a dev-dependency")
}

fn inv(object: &str, op: &str, input: Option<&[u8]>) -> Invocation {
    Invocation::new(
        Driver::Qemu,
        virt_hooks_core::EventArgs::new([object, op, "begin", "-"]),
        input.map(Into::into),
    )
}

fn call(hook: &DylibHook, inv: &Invocation) -> virt_hooks_core::HookOutcome {
    pollster::block_on(virt_hooks_core::Hook::call(hook, inv))
}

#[test]
fn arguments_and_input_reach_the_plugin() {
    let hook = DylibHook::load(fixture()).unwrap();
    assert_eq!(hook.library().name(), "fixture");
    let out = call(&hook, &inv("echo-args", "prepare", Some(b"<domain/>\n")));
    assert!(out.status.is_success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "qemu echo-args prepare begin -\n<domain/>\n"
    );
    let out = call(
        &hook,
        &Invocation::new(
            Driver::Daemon,
            virt_hooks_core::EventArgs::new(["echo-args", "reload", "begin", "SIGHUP"]),
            None,
        ),
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "daemon echo-args reload begin SIGHUP\n<none>"
    );
}

#[test]
fn failure_status_and_stderr() {
    let hook = DylibHook::load(fixture()).unwrap();
    let out = call(&hook, &inv("exit-3", "prepare", Some(b"")));
    assert!(matches!(out.status, HookStatus::Exited(3)));
    assert_eq!(out.stderr, b"failing as asked with 3\n");
}

#[test]
fn a_panic_is_caught_at_the_boundary() {
    let hook = DylibHook::load(fixture()).unwrap();
    let out = call(&hook, &inv("panic", "start", Some(b"")));
    assert!(matches!(out.status, HookStatus::Exited(101)));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("plugin `fixture` panicked: boom in start at "), "{err}");
    // The plugin still works afterwards.
    assert!(call(&hook, &inv("vm", "start", Some(b""))).status.is_success());
}

#[test]
fn a_panic_after_debug_noise_is_the_line_that_explains_the_failure() {
    let hook = DylibHook::load(fixture()).unwrap();
    let out = call(&hook, &inv("log-then-panic", "start", None));
    assert!(matches!(out.status, HookStatus::Exited(101)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("debug: some noise first\n"), "{stderr}");
    let explaining = out.explaining_line().unwrap();
    assert!(
        explaining.starts_with("plugin `fixture` panicked: no bridge br0 at "),
        "{explaining}"
    );
    let levels: Vec<_> = out.log.iter().map(|l| l.level.as_str()).collect();
    assert_eq!(levels, ["debug", "info", "error"]);
}

#[test]
fn a_rust_plugin_reads_its_config() {
    use virt_hooks_core::backend::{ConfigValue, PluginConfig};
    let config = PluginConfig::from_entries([
        ("max_vcpus", ConfigValue::Integer(8)),
        ("bridge", ConfigValue::String("br0".into())),
    ])
    .unwrap();
    let hook = DylibHook::load_with_config(fixture(), &config).unwrap();
    let out = call(&hook, &inv("config", "prepare", None));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bridge=br0\nmax_vcpus=8\n");
}

#[test]
fn the_same_real_path_is_loaded_once() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("linked.so");
    std::os::unix::fs::symlink(fixture(), &link).unwrap();
    let a = Library::load(&fixture()).unwrap();
    let b = Library::load(&link).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn timeout_reports_without_pretending_to_stop_the_call() {
    let hook = DylibHook::load(fixture())
        .unwrap()
        .with_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let out = call(&hook, &inv("sleep", "prepare", Some(b"")));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(out.status, HookStatus::TimedOut(d) if d == Duration::from_millis(100)));
    assert!(out.warnings[0].contains("cannot be interrupted"));
}

const GOOD_C: &str = r#"
#include <string.h>
#include "virt_hook.h"
static int32_t call(const virt_hook_invocation *inv) {
    if (strcmp(inv->op, "migrate") == 0 && inv->input_len > 0) {
        const char *tag = "<c-plugin-saw/>";
        inv->io.write_stdout(inv->io.ctx, inv->input, inv->input_len);
        inv->io.write_stdout(inv->io.ctx, (const uint8_t *)tag, strlen(tag));
        return 0;
    }
    if (strcmp(inv->object, "refused") == 0) {
        const char *msg = "refused by the C plugin";
        inv->io.write_stderr(inv->io.ctx, (const uint8_t *)msg, strlen(msg));
        return 7;
    }
    return 0;
}
static const virt_hook_plugin plugin = { VIRT_HOOK_ABI_VERSION, "c-good", call };
const virt_hook_plugin *virt_hook_plugin_v1(void) { return &plugin; }
"#;

#[test]
fn load_errors_name_the_file_and_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let wrong_abi = compile_c(
        d,
        "wrong-abi.so",
        r#"#include "virt_hook.h"
static int32_t call(const virt_hook_invocation *inv) { (void)inv; return 0; }
static const virt_hook_plugin plugin = { 2, "future", call };
const virt_hook_plugin *virt_hook_plugin_v1(void) { return &plugin; }"#,
    );
    let no_symbol = compile_c(d, "no-symbol.so", "int something_else(void) { return 1; }\n");
    let null_call = compile_c(
        d,
        "null-call.so",
        r#"#include "virt_hook.h"
static const virt_hook_plugin plugin = { VIRT_HOOK_ABI_VERSION, "null", 0 };
const virt_hook_plugin *virt_hook_plugin_v1(void) { return &plugin; }"#,
    );
    let null_desc = compile_c(
        d,
        "null-desc.so",
        "#include \"virt_hook.h\"\nconst virt_hook_plugin *virt_hook_plugin_v1(void) { return 0; }\n",
    );
    let not_elf = d.join("text.so");
    fs::write(&not_elf, "this is not an ELF file\n").unwrap();
    let cases = [
        (&wrong_abi, "ABI version 2, but this host speaks version 1"),
        (&no_symbol, "no `virt_hook_plugin_v2` or `virt_hook_plugin_v1` symbol"),
        (&null_call, "its descriptor is invalid: its `call` is null"),
        (&null_desc, "returned a null descriptor"),
        (&not_elf, "not a loadable shared object"),
    ];
    for (path, reason) in cases {
        let err = DylibHook::load(path).unwrap_err();
        let text = virt_hooks_core::error::chain(&err);
        assert!(
            text.starts_with(&format!("cannot load hook `{}` (dylib): ", path.display())),
            "{text}"
        );
        assert!(text.contains(reason), "{text}");
    }
}

fn script(path: &Path, body: &str) {
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn plugins_and_scripts_share_one_drop_in_dir() {
    virt_hooks_exec::link();
    virt_hooks_dylib::link();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("qemu.d");
    fs::create_dir(&d).unwrap();
    script(&d.join("10-script"), "#!/bin/sh\ncat\n");
    fs::copy(fixture(), d.join("20-fixture.so")).unwrap();
    compile_c(&d, "30-c.so", GOOD_C);
    script(&d.join("40-script"), "#!/bin/sh\ncat > /dev/null\n");
    let broken = d.join("50-broken.so");
    fs::write(&broken, "junk").unwrap();
    let registry = RegistryBuilder::new().hooks_dir(tmp.path()).build();

    let xml = "<domain><interface><source bridge='br-legacy'/></interface></domain>";
    let err = registry
        .fire_blocking(&QemuEvent::Migrate {
            name: "vm".into(),
            xml: xml.into(),
        })
        .unwrap_err();
    let report = err.report();
    let backends: Vec<_> = report.hooks.iter().map(|r| r.backend.as_ref()).collect();
    assert_eq!(backends, ["exec", "dylib", "dylib", "exec", "dylib"]);
    // Chained: the script echoes, the fixture rewrites the bridge, the C plugin appends.
    assert!(report.hooks[1].replaced_document);
    assert_eq!(
        report.hooks[2].stdout,
        "<domain><interface><source bridge='br0'/></interface></domain><c-plugin-saw/>"
    );
    let StatusRecord::Failed { message } = &report.hooks[4].status else {
        panic!("{:?}", report.hooks[4].status)
    };
    assert!(
        message.starts_with(&format!(
            "cannot load hook `{}` (dylib): not a loadable shared object",
            broken.display()
        )),
        "{message}"
    );
    assert!(
        err.to_string().contains("50-broken.so"),
        "the event's error names the broken file: {err}"
    );
}

#[test]
fn a_refusing_c_plugin_fails_the_event_with_its_message() {
    virt_hooks_dylib::link();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("qemu.d");
    fs::create_dir(&d).unwrap();
    let so = compile_c(&d, "10-c.so", GOOD_C);
    let registry = RegistryBuilder::new().hooks_dir(tmp.path()).build();
    let err = registry
        .fire_blocking(&QemuEvent::Prepare {
            name: "refused".into(),
            xml: "<domain/>".into(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Hook `{}` (dylib) failed at `refused prepare begin -`: returned status 7: refused by the C plugin",
            so.display()
        )
    );
}

#[test]
fn the_example_c_plugin_builds_and_refuses_tmp_guests() {
    let tmp = tempfile::tempdir().unwrap();
    let src =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/c/name_policy.c")).unwrap();
    let so = compile_c(tmp.path(), "name-policy.so", &src);
    let hook = DylibHook::load(&so).unwrap();
    assert_eq!(hook.library().name(), "name-policy");
    let out = call(&hook, &inv("tmp-42", "prepare", Some(b"")));
    assert!(matches!(out.status, HookStatus::Exited(1)));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "guest 'tmp-42' is a throwaway guest (tmp-*): run it on the scratch host\n"
    );
    assert!(call(&hook, &inv("web1", "prepare", Some(b""))).status.is_success());
}

#[test]
fn many_threads_fire_concurrently() {
    let hook = DylibHook::load(fixture()).unwrap();
    let registry = Arc::new(RegistryBuilder::new().hook(Driver::Qemu, hook).build());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = Arc::clone(&registry);
            std::thread::spawn(move || {
                for i in 0..500 {
                    let xml = format!("<domain>{t}-{i} br-legacy</domain>");
                    let report = r.fire_blocking(&QemuEvent::Migrate { name: "vm".into(), xml }).unwrap();
                    assert_eq!(
                        report.document.unwrap(),
                        format!("<domain>{t}-{i} br0</domain>").into_bytes()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Keeps the `io` struct and writes through it from another thread during the call, and
/// from the next call after the first one returned.
const STRAY_C: &str = r#"
#include <pthread.h>
#include <string.h>
#include "virt_hook.h"

static virt_hook_io kept;
static int have_kept;

static void *other_thread(void *arg) {
    (void)arg;
    kept.write_stdout(kept.ctx, (const uint8_t *)"from another thread\n", 20);
    return 0;
}

static int32_t call(const virt_hook_invocation *inv) {
    if (have_kept)
        kept.write_stderr(kept.ctx, (const uint8_t *)"late\n", 5);
    kept = inv->io;
    have_kept = 1;
    pthread_t t;
    if (pthread_create(&t, 0, other_thread, 0) == 0)
        pthread_join(t, 0);
    inv->io.write_stdout(inv->io.ctx, (const uint8_t *)"mine\n", 5);
    return 0;
}

static const virt_hook_plugin plugin = { VIRT_HOOK_ABI_VERSION, "stray", call };
const virt_hook_plugin *virt_hook_plugin_v1(void) { return &plugin; }
"#;

#[test]
fn late_or_foreign_thread_writes_are_ignored_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(tmp.path(), "stray.so", STRAY_C);
    let hook = DylibHook::load(&so).unwrap();
    let first = call(&hook, &inv("vm", "prepare", None));
    assert_eq!(first.stdout, b"mine\n", "a write from another thread must not land");
    assert!(
        first
            .warnings
            .iter()
            .any(|w| w.contains("from another thread or after a call returned")),
        "{:?}",
        first.warnings
    );
    // The second call writes through the first call's io, whose capture is gone.
    let second = call(&hook, &inv("vm", "prepare", None));
    assert_eq!(second.stdout, b"mine\n");
    assert!(second.stderr.is_empty(), "a late write must not land in the next call");
    assert!(!second.warnings.is_empty());
}
