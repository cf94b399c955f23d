//! Version 2 of the C ABI, from C plugins built here with the system compiler: init and
//! fini with the sidecar's `[config]`, the log channel, the NUL after the input, a
//! descriptor that can grow, and what a plugin that misuses it gets.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt_hooks_core::backend::{ConfigValue, PluginConfig};
use virt_hooks_core::error::LoadErrorKind;
use virt_hooks_core::outcome::{LogLevel, MAX_LOG_LINES};
use virt_hooks_core::{Driver, Hook, HookOutcome, Invocation};
use virt_hooks_dylib::DylibHook;

mod common;
use common::compile_c;

fn inv(object: &str, op: &str, input: Option<&[u8]>) -> Invocation {
    Invocation::new(
        Driver::Qemu,
        virt_hooks_core::EventArgs::new([object, op, "begin", "-"]),
        input.map(Into::into),
    )
}

fn call(hook: &DylibHook, inv: &Invocation) -> HookOutcome {
    pollster::block_on(virt_hooks_core::Hook::call(hook, inv))
}

fn config(pairs: &[(&str, &str)]) -> PluginConfig {
    PluginConfig::from_entries(pairs.iter().map(|(k, v)| (*k, ConfigValue::String((*v).to_owned())))).unwrap()
}

/// Refuses guests with more vCPUs than `max_vcpus`; `fini` writes `fini_marker`.
const VCPU_LIMIT: &str = r#"
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <virt_hook.h>

struct limit { long max; char *marker; };

static int32_t init(const virt_hook_init *in, void **instance) {
    const char *max = virt_hook_config(in->config, in->config_len, "max_vcpus");
    if (!max) {
        virt_hook_errorf(in->out, "max_vcpus is not set in [config] of %s", in->path);
        return 3;
    }
    struct limit *l = calloc(1, sizeof *l);
    l->max = strtol(max, NULL, 10);
    const char *marker = virt_hook_config(in->config, in->config_len, "fini_marker");
    if (marker) l->marker = strdup(marker);
    virt_hook_logf(in->out, VIRT_HOOK_DEBUG, "limit %ld", l->max);
    *instance = l;
    return 0;
}

static void fini(void *instance) {
    struct limit *l = instance;
    if (l->marker) {
        FILE *f = fopen(l->marker, "w");
        if (f) { fputs("fini\n", f); fclose(f); }
        free(l->marker);
    }
    free(l);
}

static int32_t call(const virt_hook_event *ev) {
    const struct limit *l = ev->instance;
    virt_hook_printf(ev->out, "strlen=%zu input_len=%zu\n",
                     ev->input ? strlen((const char *)ev->input) : 0, ev->input_len);
    const char *vcpu = ev->input ? strstr((const char *)ev->input, "<vcpu>") : NULL;
    long n = vcpu ? strtol(vcpu + 6, NULL, 10) : 1;
    if (n > l->max) {
        virt_hook_logf(ev->out, VIRT_HOOK_DEBUG, "counted %ld", n);
        virt_hook_logf(ev->out, VIRT_HOOK_ERROR, "%s asks for %ld vCPUs, at most %ld", ev->object, n, l->max);
        virt_hook_logf(ev->out, VIRT_HOOK_INFO, "refusing");
        return 1;
    }
    virt_hook_logf(ev->out, VIRT_HOOK_INFO, "%s: %ld vCPUs allowed", ev->object, n);
    return 0;
}

static const virt_hook_descriptor descriptor = {
    VIRT_HOOK_ABI_VERSION_2, sizeof(virt_hook_descriptor), "vcpu-limit", init, fini, call,
};
const virt_hook_descriptor *virt_hook_plugin_v2(void) { return &descriptor; }
"#;

#[test]
fn init_gets_the_config_and_call_its_instance_and_a_nul_terminated_input() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(tmp.path(), "vcpu-limit.so", VCPU_LIMIT);
    let marker = tmp.path().join("fini-ran");
    let hook = DylibHook::load_with_config(
        &so,
        &config(&[("max_vcpus", "4"), ("fini_marker", marker.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(hook.library().abi_version(), 2);
    assert_eq!(hook.library().name(), "vcpu-limit");

    // Exactly 72 bytes, the length at which the trial read garbage past the end.
    let domain = b"<domain><name>big</name><vcpu>12</vcpu><memory>10240</memory></domain>\n\n";
    assert_eq!(domain.len(), 72);
    let out = call(&hook, &inv("big", "prepare", Some(domain)));
    assert_eq!(out.status.describe(), "exit status 1");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "strlen=72 input_len=72\n");
    let levels: Vec<LogLevel> = out.log.iter().map(|l| l.level).collect();
    // What init logged opens the first call's log.
    assert_eq!(
        levels,
        [LogLevel::Debug, LogLevel::Debug, LogLevel::Error, LogLevel::Info]
    );
    assert_eq!(out.log[0].message, "limit 4");
    assert_eq!(
        out.explaining_line().as_deref(),
        Some("big asks for 12 vCPUs, at most 4")
    );

    let out = call(
        &hook,
        &inv("small", "prepare", Some(b"<domain><vcpu>2</vcpu></domain>")),
    );
    assert!(out.status.is_success());
    assert_eq!(out.log[0].message, "small: 2 vCPUs allowed");

    assert!(!marker.exists(), "fini before the hook was dropped");
    let clone = hook.clone();
    drop(hook);
    assert!(!marker.exists(), "fini while a clone still holds the instance");
    drop(clone);
    assert_eq!(fs::read_to_string(&marker).unwrap(), "fini\n");
}

#[test]
fn an_init_that_refuses_is_a_load_error_with_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(tmp.path(), "vcpu-limit-unset.so", VCPU_LIMIT);
    let err = DylibHook::load_with_config(&so, &PluginConfig::new()).unwrap_err();
    match &err.kind {
        LoadErrorKind::InitFailed { code, message } => {
            assert_eq!(*code, 3);
            assert!(
                message.starts_with("max_vcpus is not set in [config] of /"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("vcpu-limit-unset.so"), "{err}");
}

#[test]
fn a_plugin_with_both_symbols_is_loaded_through_version_2() {
    let tmp = tempfile::tempdir().unwrap();
    let both = format!(
        "{VCPU_LIMIT}
static int32_t old_call(const virt_hook_invocation *inv) {{ (void)inv; return 42; }}
static const virt_hook_plugin old = {{ VIRT_HOOK_ABI_VERSION, \"old\", old_call }};
const virt_hook_plugin *virt_hook_plugin_v1(void) {{ return &old; }}
"
    );
    let so = compile_c(tmp.path(), "both.so", &both);
    let hook = DylibHook::load_with_config(&so, &config(&[("max_vcpus", "1")])).unwrap();
    assert_eq!(hook.library().abi_version(), 2);
    assert!(call(&hook, &inv("vm", "prepare", None)).status.is_success());
}

#[test]
fn version_1_plugins_keep_working_and_get_the_nul_too() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(
        tmp.path(),
        "v1-strlen.so",
        r#"
#include <stdio.h>
#include <string.h>
#include <virt_hook.h>
static int32_t call(const virt_hook_invocation *inv) {
    char line[64];
    int n = snprintf(line, sizeof line, "%zu %zu", strlen((const char *)inv->input), inv->input_len);
    inv->io.write_stdout(inv->io.ctx, (const uint8_t *)line, (size_t)n);
    return 0;
}
static const virt_hook_plugin plugin = { VIRT_HOOK_ABI_VERSION, "v1", call };
const virt_hook_plugin *virt_hook_plugin_v1(void) { return &plugin; }
"#,
    );
    let hook = DylibHook::load_with_config(&so, &config(&[("ignored", "by v1")])).unwrap();
    assert_eq!(hook.library().abi_version(), 1);
    let out = call(&hook, &inv("vm", "prepare", Some(&[b'x'; 4096])));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "4096 4096");
}

fn descriptor_plugin(dir: &Path, name: &str, version: &str, size: &str) -> PathBuf {
    compile_c(
        dir,
        &format!("{name}.so"),
        &format!(
            r#"
#include <virt_hook.h>
static int32_t call(const virt_hook_event *ev) {{ (void)ev; return 0; }}
static const virt_hook_descriptor d = {{ {version}, {size}, "d", NULL, NULL, call }};
const virt_hook_descriptor *virt_hook_plugin_v2(void) {{ return &d; }}
"#
        ),
    )
}

#[test]
fn a_descriptor_of_another_version_or_too_small_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let err = DylibHook::load(descriptor_plugin(tmp.path(), "v3", "3", "sizeof(virt_hook_descriptor)")).unwrap_err();
    assert!(
        matches!(err.kind, LoadErrorKind::AbiMismatch { expected: 2, found: 3 }),
        "{err}"
    );
    let err = DylibHook::load(descriptor_plugin(tmp.path(), "small", "VIRT_HOOK_ABI_VERSION_2", "8")).unwrap_err();
    assert!(err.to_string().contains("smaller than a version 2 descriptor"), "{err}");
    assert!(err.to_string().contains("small.so"), "{err}");
    // Larger than this host knows: a later version's descriptor, read up to what it knows.
    let later = DylibHook::load(descriptor_plugin(
        tmp.path(),
        "later",
        "VIRT_HOOK_ABI_VERSION_2",
        "sizeof(virt_hook_descriptor) + 64",
    ))
    .unwrap();
    assert!(call(&later, &inv("vm", "prepare", None)).status.is_success());
}

#[test]
fn a_log_flood_is_capped_and_a_late_write_from_another_thread_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(
        tmp.path(),
        "flood.so",
        r#"
#include <pthread.h>
#include <virt_hook.h>
static virt_hook_output kept; /* a copy: the struct the host passed is gone after return */
static void *late(void *arg) {
    (void)arg;
    virt_hook_logf(&kept, VIRT_HOOK_ERROR, "from another thread");
    kept.write_stderr(kept.ctx, (const uint8_t *)"late", 4);
    return NULL;
}
static int32_t call(const virt_hook_event *ev) {
    if (ev->op[0] == 'p') {
        for (int i = 0; i < 10000; i++)
            virt_hook_logf(ev->out, VIRT_HOOK_INFO, "line %d", i);
        kept = *ev->out;
        return 0;
    }
    /* A later event: the kept output of the first one, used from another thread. */
    pthread_t t;
    pthread_create(&t, NULL, late, NULL);
    pthread_join(t, NULL);
    return 0;
}
static const virt_hook_descriptor d = { VIRT_HOOK_ABI_VERSION_2, sizeof d, "flood", NULL, NULL, call };
const virt_hook_descriptor *virt_hook_plugin_v2(void) { return &d; }
"#,
    );
    let hook = DylibHook::load(&so).unwrap();
    let out = call(&hook, &inv("vm", "prepare", None));
    assert!(out.status.is_success());
    assert_eq!(out.log.len(), MAX_LOG_LINES);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.starts_with(&format!("{} more log line(s) dropped", 10000 - MAX_LOG_LINES))),
        "{:?}",
        out.warnings
    );
    let out = call(&hook, &inv("vm", "release", None));
    assert!(out.status.is_success());
    assert!(out.stderr.is_empty() && out.log.is_empty(), "{out:?}");
    assert!(
        out.warnings
            .iter()
            .any(|w| w.starts_with("2 write(s) through its output callbacks")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn a_version_2_plugin_gets_its_state_dir_in_the_event_even_in_the_callers_process() {
    use virt_hooks_core::backend::{HookLoader, HookSettings};
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(
        tmp.path(),
        "stateful.so",
        r#"
#include <stdio.h>
#include <virt_hook.h>
static int32_t call(const virt_hook_event *ev) {
    if (!ev->state_dir) { virt_hook_errorf(ev->out, "no state dir"); return 1; }
    char path[4096];
    snprintf(path, sizeof path, "%s/seen", ev->state_dir);
    FILE *f = fopen(path, "w");
    if (!f) return 2;
    fputs(ev->op, f);
    fclose(f);
    return 0;
}
static const virt_hook_descriptor d = { VIRT_HOOK_ABI_VERSION_2, sizeof d, "stateful", NULL, NULL, call };
const virt_hook_descriptor *virt_hook_plugin_v2(void) { return &d; }
"#,
    );
    let settings = HookSettings::parse(&tmp.path().join("stateful.so.toml"), "state = true\n").unwrap();
    let hook = virt_hooks_dylib::DylibLoader.load(&so, &settings).unwrap();
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    let with_state = inv("vm", "prepare", None).with_state_dir(Some(Arc::from(state.as_path())));
    let out = pollster::block_on(hook.call(&with_state));
    assert!(out.status.is_success(), "{out:?}");
    assert_eq!(fs::read_to_string(state.join("seen")).unwrap(), "prepare");
    let out = pollster::block_on(hook.call(&inv("vm", "prepare", None)));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "no state dir");

    // A version 1 plugin reads VIRT_HOOK_STATE from the environment: refused here.
    let v1 = compile_c(tmp.path(), "stateful-v1.so",
        "#include <virt_hook.h>\nstatic int32_t call(const virt_hook_invocation *i) { (void)i; return 0; }\nstatic const virt_hook_plugin p = { VIRT_HOOK_ABI_VERSION, \"v1\", call };\nconst virt_hook_plugin *virt_hook_plugin_v1(void) { return &p; }\n",
    );
    let Err(err) = virt_hooks_dylib::DylibLoader.load(&v1, &settings) else {
        panic!("a version 1 plugin asking for state was loaded")
    };
    assert!(
        virt_hooks_core::error::chain(&err).contains("a version 1 native plugin"),
        "{err}"
    );
}

#[test]
fn printf_helpers_write_documents_of_any_length_and_init_logs_open_the_first_call() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(
        tmp.path(),
        "echo-doc.so",
        r#"
#include <virt_hook.h>
static int32_t init(const virt_hook_init *in, void **instance) {
    virt_hook_logf(in->out, VIRT_HOOK_INFO, "ready with %zu config keys", in->config_len);
    *instance = 0;
    return 0;
}
static int32_t call(const virt_hook_event *ev) {
    if (ev->input) virt_hook_printf(ev->out, "%s", (const char *)ev->input);
    return 0;
}
static const virt_hook_descriptor d = { VIRT_HOOK_ABI_VERSION_2, sizeof d, "echo-doc", init, NULL, call };
const virt_hook_descriptor *virt_hook_plugin_v2(void) { return &d; }
"#,
    );
    let hook = DylibHook::load(&so).unwrap();
    let doc = format!("<domain>{}</domain>", "<x/>".repeat(5_000));
    let first = call(&hook, &inv("vm", "migrate", Some(doc.as_bytes())));
    assert_eq!(first.stdout.len(), doc.len(), "the document was cut");
    assert_eq!(
        first.log.first().map(|l| l.message.as_str()),
        Some("ready with 0 config keys")
    );
    let second = call(&hook, &inv("vm", "migrate", Some(b"<domain/>")));
    assert!(
        second.log.is_empty(),
        "init's lines go with the first call only: {:?}",
        second.log
    );
}

#[test]
fn an_init_refusal_leads_with_the_error_it_logged_not_debug_output() {
    let tmp = tempfile::tempdir().unwrap();
    let so = compile_c(
        tmp.path(),
        "noisy-init.so",
        r#"
#include <virt_hook.h>
static int32_t init(const virt_hook_init *in, void **instance) {
    (void)instance;
    virt_hook_errorf(in->out, "debug: parsing config\n");
    virt_hook_logf(in->out, VIRT_HOOK_ERROR, "[config] limit is missing");
    return 1;
}
static int32_t call(const virt_hook_event *ev) { (void)ev; return 0; }
static const virt_hook_descriptor d = { VIRT_HOOK_ABI_VERSION_2, sizeof d, "noisy", init, NULL, call };
const virt_hook_descriptor *virt_hook_plugin_v2(void) { return &d; }
"#,
    );
    let err = DylibHook::load(&so).unwrap_err();
    let LoadErrorKind::InitFailed { message, .. } = &err.kind else {
        panic!("{err}")
    };
    assert_eq!(message, "[config] limit is missing; debug: parsing config");
}
