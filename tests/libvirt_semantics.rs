//! Every row and rule of `libvirt-hooks-semantics.md`, run through the registry with
//! real exec hooks.

use std::fs;
use std::time::Duration;

use conformance::HooksTree;
use virt_hooks_core::backend::libvirt_event_spec;
use virt_hooks_core::events::{DaemonEvent, NetworkEvent, QemuEvent, ReleaseReason};
use virt_hooks_core::lifecycle::Verdict;
use virt_hooks_core::report::InputSource;
use virt_hooks_core::{Driver, FailurePolicy, Guest, HookEvent, Lifecycle, LifecycleError, RawEvent, RegistryBuilder};

fn domain_xml(name: &str) -> String {
    format!("<domain type='qemu'>\n  <name>{name}</name>\n</domain>\n")
}

fn qemu(op: QemuOpFn) -> QemuEvent {
    op("vm1".into(), domain_xml("vm1"))
}
type QemuOpFn = fn(String, String) -> QemuEvent;

#[test]
fn main_script_then_drop_ins_in_strcmp_order() {
    let t = HooksTree::new();
    t.logging("qemu");
    for name in ["9-y", "10-x", "B", "a", ".dot"] {
        t.logging(&format!("qemu.d/{name}"));
    }
    t.file("qemu.d/not-exec", "#!/bin/sh\nexit 1\n", 0o644);
    fs::create_dir(t.path().join("qemu.d/subdir")).unwrap();
    std::os::unix::fs::symlink(t.path().join("qemu.d/gone"), t.path().join("qemu.d/dangling")).unwrap();
    std::os::unix::fs::symlink(t.path().join("qemu.d/a"), t.path().join("qemu.d/z-link")).unwrap();

    t.registry()
        .fire_blocking(&qemu(|name, xml| QemuEvent::Prepare { name, xml }))
        .unwrap();
    let names: Vec<_> = t
        .log()
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["qemu", ".dot", "10-x", "9-y", "B", "a", "z-link"],
        "a symlink runs under its own name"
    );
}

#[test]
fn every_hook_runs_after_a_failure_and_the_last_failure_is_reported() {
    let t = HooksTree::new();
    t.script("qemu.d/10-first", "#!/bin/sh\necho first failure >&2\nexit 2\n");
    t.logging("qemu.d/20-ok");
    t.script("qemu.d/30-second", "#!/bin/sh\necho second failure >&2\nexit 5\n");
    t.logging("qemu.d/40-ok");
    let err = t
        .registry()
        .fire_blocking(&qemu(|name, xml| QemuEvent::Start { name, xml }))
        .unwrap_err();
    assert_eq!(t.log().len(), 2);
    assert_eq!(err.report().hooks.len(), 4);
    let msg = err.to_string();
    assert!(
        msg.starts_with("Hook script execution failed: internal error: Child process (LC_ALL=C"),
        "{msg}"
    );
    assert!(
        msg.contains("qemu.d/30-second vm1 start begin -) unexpected exit status 5: second failure"),
        "{msg}"
    );
    assert_eq!(err.failures().count(), 2);
}

#[test]
fn policy_of_every_row_applies_to_real_failures() {
    let t = HooksTree::new();
    for d in Driver::ALL {
        t.script(d.as_str(), "#!/bin/sh\necho nope >&2\nexit 1\n");
    }
    let registry = t.registry();
    let rows: &[(Driver, &str, &str, &str)] = &[
        (Driver::Daemon, "-", "start", "start"),
        (Driver::Daemon, "-", "shutdown", "shutdown"),
        (Driver::Daemon, "-", "reload", "SIGHUP"),
        (Driver::Qemu, "g", "prepare", "-"),
        (Driver::Qemu, "g", "start", "-"),
        (Driver::Qemu, "g", "started", "-"),
        (Driver::Qemu, "g", "stopped", "-"),
        (Driver::Qemu, "g", "release", "shutdown"),
        (Driver::Qemu, "g", "migrate", "-"),
        (Driver::Qemu, "g", "restore", "-"),
        (Driver::Qemu, "g", "reconnect", "-"),
        (Driver::Lxc, "g", "prepare", "-"),
        (Driver::Lxc, "g", "reconnect", "-"),
        (Driver::Libxl, "g", "migrate", "-"),
        (Driver::Bhyve, "g", "release", "-"),
        (Driver::Network, "n", "start", "-"),
        (Driver::Network, "n", "started", "-"),
        (Driver::Network, "n", "stopped", "-"),
        (Driver::Network, "n", "port-created", "-"),
        (Driver::Network, "n", "port-deleted", "-"),
        (Driver::Network, "n", "updated", "-"),
    ];
    for &(driver, object, op, extra) in rows {
        let spec = libvirt_event_spec(driver, op).unwrap();
        let ev = RawEvent::new(driver, [object, op, spec.subop, extra]);
        let fired = registry.fire_blocking(&ev);
        // `Err` exactly when the operation must not go on; an ignored failure is in the report.
        assert_eq!(fired.is_err(), spec.policy.fails_operation(), "{driver} {op}");
        let report = fired.unwrap_or_else(virt_hooks_core::HookFailure::into_report);
        assert!(!report.succeeded(), "{driver} {op}");
        assert_eq!(report.policy, spec.policy, "{driver} {op}");
        let expected = match (driver, op) {
            (Driver::Daemon, _) | (_, "stopped" | "release" | "port-deleted") => FailurePolicy::Ignore,
            (_, "reconnect") => FailurePolicy::KillObject,
            (Driver::Network, "updated") => FailurePolicy::Report,
            _ => FailurePolicy::Abort,
        };
        assert_eq!(report.policy, expected, "{driver} {op}");
    }
}

#[test]
fn stdin_is_the_document_for_domains_and_networks_and_dev_null_for_the_daemon() {
    let t = HooksTree::new();
    let out = t.path().join("out");
    for d in ["qemu", "network", "daemon"] {
        t.script(
            d,
            &format!(
                "#!/bin/sh\ncat > '{}/{d}.stdin'\nreadlink /proc/self/fd/0 > '{}/{d}.fd0' || true\n",
                out.display(),
                out.display()
            ),
        );
    }
    fs::create_dir(&out).unwrap();
    let registry = t.registry();
    let xml = domain_xml("vm1");
    registry
        .fire_blocking(&QemuEvent::Prepare {
            name: "vm1".into(),
            xml: xml.clone(),
        })
        .unwrap();
    let hook_data = "<hookData>\n  <network><name>default</name></network>\n</hookData>";
    registry
        .fire_blocking(&NetworkEvent::Start {
            name: "default".into(),
            xml: hook_data.into(),
        })
        .unwrap();
    registry.fire_blocking(&DaemonEvent::Start).unwrap();
    assert_eq!(fs::read_to_string(out.join("qemu.stdin")).unwrap(), xml);
    assert_eq!(
        fs::read_to_string(out.join("network.stdin")).unwrap(),
        hook_data,
        "no trailing newline added"
    );
    assert_eq!(fs::read_to_string(out.join("daemon.stdin")).unwrap(), "");
    assert_eq!(fs::read_to_string(out.join("daemon.fd0")).unwrap(), "/dev/null\n");
    assert!(fs::read_to_string(out.join("qemu.fd0")).unwrap().starts_with("pipe:"));
}

/// A `.d` script that saves its stdin under `name.in` and prints `output`.
fn filter(t: &HooksTree, rel: &str, output: &str, code: i32) {
    let name = rel.rsplit('/').next().unwrap();
    let saved = t.path().join(format!("{name}.in"));
    t.script(
        rel,
        &format!(
            "#!/bin/sh\ncat > '{}'\nprintf '%s' '{output}'\nexit {code}\n",
            saved.display()
        ),
    );
}

fn saw(t: &HooksTree, name: &str) -> String {
    fs::read_to_string(t.path().join(format!("{name}.in"))).unwrap()
}

#[test]
fn filter_output_chains_as_libvirt_does() {
    let t = HooksTree::new();
    filter(&t, "qemu", "<domain id=\"main\"><name>vm1</name></domain>", 0);
    filter(&t, "qemu.d/10", "", 0);
    filter(&t, "qemu.d/20", "  \n", 0);
    filter(&t, "qemu.d/30", "<domain id=\"thirty\"><name>vm1</name></domain>", 0);
    filter(&t, "qemu.d/40", "", 0);
    let report = t
        .registry()
        .fire_blocking(&qemu(|name, xml| QemuEvent::Migrate { name, xml }))
        .unwrap();
    assert_eq!(saw(&t, "qemu"), domain_xml("vm1"));
    assert_eq!(saw(&t, "10"), "<domain id=\"main\"><name>vm1</name></domain>");
    assert_eq!(saw(&t, "20"), "<domain id=\"main\"><name>vm1</name></domain>");
    assert_eq!(saw(&t, "30"), "<domain id=\"main\"><name>vm1</name></domain>");
    assert_eq!(saw(&t, "40"), "<domain id=\"thirty\"><name>vm1</name></domain>");
    assert_eq!(
        report.document.as_deref(),
        Some(&b"<domain id=\"thirty\"><name>vm1</name></domain>"[..]),
        "a later empty output keeps the rewrite"
    );
    assert!(report.document_changed);
    let inputs: Vec<_> = report.hooks.iter().map(|r| r.input).collect();
    assert_eq!(
        inputs,
        [
            InputSource::Original,
            InputSource::Chained,
            InputSource::Chained,
            InputSource::Chained,
            InputSource::Chained
        ]
    );
}

#[test]
fn without_a_main_script_the_first_drop_in_gets_the_original_and_failures_reset_to_it() {
    let t = HooksTree::new();
    filter(&t, "qemu.d/10", "<domain id=\"ten\"><name>vm1</name></domain>", 0);
    filter(&t, "qemu.d/20", "<domain id=\"twenty\"><name>vm1</name></domain>", 1);
    filter(&t, "qemu.d/30", "<domain id=\"thirty\"><name>vm1</name></domain>", 0);
    let err = t
        .registry()
        .fire_blocking(&qemu(|name, xml| QemuEvent::Restore { name, xml }))
        .unwrap_err();
    assert_eq!(saw(&t, "10"), domain_xml("vm1"));
    assert_eq!(saw(&t, "20"), "<domain id=\"ten\"><name>vm1</name></domain>");
    assert_eq!(saw(&t, "30"), domain_xml("vm1"), "after a failure, the original");
    assert_eq!(err.policy(), FailurePolicy::Abort);
}

/// libvirt itself refuses a renamed guest only after the hooks, naming none of them;
/// here the drop-in that renamed it fails, in libvirt's words for a hook, and the next
/// one reads the original.
#[test]
fn a_drop_in_that_renames_the_guest_fails_named() {
    let t = HooksTree::new();
    filter(
        &t,
        "qemu.d/10-rename",
        "<domain type=\"qemu\"><name>vm2</name></domain>",
        0,
    );
    filter(&t, "qemu.d/20", "", 0);
    let err = t
        .registry()
        .fire_blocking(&qemu(|name, xml| QemuEvent::Migrate { name, xml }))
        .unwrap_err();
    let message = err.to_string();
    let script = t.path().join("qemu.d/10-rename");
    assert!(
        message.starts_with("Hook script execution failed: internal error: Child process (")
            && message.contains(&format!("{} vm1 migrate begin -) unexpected output: its output renames the domain `vm1` to `vm2`: libvirt refuses a migrate or restore document whose name or UUID changed", script.display())),
        "{message}"
    );
    assert_eq!(saw(&t, "20"), domain_xml("vm1"));
    assert_eq!(err.report().document, None);
}

#[test]
fn an_unchanged_filter_returns_the_original_and_non_filters_ignore_stdout() {
    let t = HooksTree::new();
    filter(&t, "qemu", "", 0);
    let r = t.registry();
    let report = r
        .fire_blocking(&qemu(|name, xml| QemuEvent::Migrate { name, xml }))
        .unwrap();
    assert_eq!(report.document.as_deref(), Some(domain_xml("vm1").as_bytes()));
    assert!(!report.document_changed);
    filter(&t, "qemu", "<ignored/>", 0);
    let report = r
        .fire_blocking(&qemu(|name, xml| QemuEvent::Prepare { name, xml }))
        .unwrap();
    assert_eq!(report.document, None);
}

#[test]
fn exec_failures_are_status_126_and_127_with_the_file_named() {
    let t = HooksTree::new();
    t.script("lxc.d/10-no-shebang", "echo hello\n");
    t.script("lxc.d/20-missing-interpreter", "#!/no/such/interpreter\n");
    let err = t
        .registry()
        .fire_blocking(&virt_hooks_core::events::LxcEvent::Prepare {
            name: "c".into(),
            xml: String::new(),
        })
        .unwrap_err();
    let statuses: Vec<_> = err.report().hooks.iter().map(|r| r.status.clone()).collect();
    assert_eq!(
        statuses,
        [
            virt_hooks_core::report::StatusRecord::Exited { code: 126 },
            virt_hooks_core::report::StatusRecord::Exited { code: 127 }
        ]
    );
    assert!(
        err.to_string()
            .contains("20-missing-interpreter c prepare begin -) unexpected exit status 127"),
        "{err}"
    );
}

#[test]
fn presence_is_cached_until_reload_but_drop_ins_are_reread_while_present() {
    let t = HooksTree::new();
    let registry = t.registry();
    t.logging("qemu.d/10");
    let ev = qemu(|name, xml| QemuEvent::Prepare { name, xml });
    registry.fire_blocking(&ev).unwrap();
    assert!(
        t.log().is_empty(),
        "hooks added after start are not seen before a reload"
    );
    registry.reload();
    registry.fire_blocking(&ev).unwrap();
    assert_eq!(t.log().len(), 1);
    t.logging("qemu.d/20");
    registry.fire_blocking(&ev).unwrap();
    assert_eq!(t.log().len(), 3, "the .d dir is re-read on every call once present");
}

#[test]
fn lifecycle_sequences_with_real_scripts() {
    let t = HooksTree::new();
    t.logging("qemu");
    t.logging("daemon");
    let registry = RegistryBuilder::new().hooks_dir(t.path()).build();
    let lc = Lifecycle::new(&registry);
    let guest = Guest::new(Driver::Qemu, "vm1", domain_xml("vm1"));
    pollster::block_on(async {
        lc.start(&guest).await.unwrap();
        lc.stop(&guest, ReleaseReason::FromSnapshot).await.unwrap();
        lc.restore(&guest).await.unwrap();
        lc.migrate_out(&guest).await.unwrap();
        lc.daemon_start(std::slice::from_ref(&guest)).await;
        lc.daemon_reload().await;
        lc.daemon_shutdown().await;
    });
    assert_eq!(
        t.log(),
        [
            "qemu vm1 prepare begin -",
            "qemu vm1 start begin -",
            "qemu vm1 started begin -",
            "qemu vm1 stopped end -",
            "qemu vm1 release end from snapshot",
            "qemu vm1 restore begin -",
            "qemu vm1 prepare begin -",
            "qemu vm1 start begin -",
            "qemu vm1 started begin -",
            "qemu vm1 stopped end -",
            "qemu vm1 release end migrated",
            "daemon - start - start",
            "qemu vm1 reconnect begin -",
            "daemon - reload begin SIGHUP",
            "daemon - shutdown - shutdown",
        ]
    );
}

#[test]
fn a_refused_start_cleans_up_and_names_the_hook() {
    let t = HooksTree::new();
    t.logging("qemu.d/10-log");
    t.script(
        "qemu.d/20-refuse",
        "#!/bin/sh\n[ \"$2\" = start ] && { echo 'no capacity' >&2; exit 1; }\nexit 0\n",
    );
    let registry = t.registry();
    let err = pollster::block_on(Lifecycle::new(&registry).start(&Guest::new(Driver::Qemu, "vm1", domain_xml("vm1"))))
        .unwrap_err();
    let LifecycleError::Refused { failure, sequence } = &err else {
        panic!("{err:?}")
    };
    assert!(failure.failed_hook().name.ends_with("qemu.d/20-refuse"));
    let Verdict::Aborted { message, hook } = &sequence.verdict else {
        panic!("{:?}", sequence.verdict)
    };
    assert_eq!(hook.as_deref(), Some(failure.failed_hook().name.as_str()));
    assert!(
        message.contains("qemu.d/20-refuse vm1 start begin -) unexpected exit status 1: no capacity"),
        "{message}"
    );
    assert_eq!(
        t.log(),
        [
            "10-log vm1 prepare begin -",
            "10-log vm1 start begin -",
            "10-log vm1 stopped end -",
            "10-log vm1 release end failed"
        ]
    );
}

#[test]
fn release_reason_with_a_space_is_one_argument() {
    let t = HooksTree::new();
    let out = t.path().join("argc");
    t.script(
        "qemu",
        &format!("#!/bin/sh\ncat >/dev/null\necho $# \"$4\" > '{}'\n", out.display()),
    );
    let ev = QemuEvent::Release {
        name: "vm1".into(),
        xml: domain_xml("vm1"),
        reason: ReleaseReason::FromSnapshot,
    };
    t.registry().fire_blocking(&ev).unwrap();
    assert_eq!(fs::read_to_string(out).unwrap(), "4 from snapshot\n");
}

#[test]
fn concurrent_fires_for_different_objects_do_not_serialize() {
    let t = HooksTree::new();
    t.script("qemu", "#!/bin/sh\ncat > /dev/null\nsleep 0.3\n");
    let registry = std::sync::Arc::new(t.registry());
    let start = std::time::Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let r = registry.clone();
            std::thread::spawn(move || {
                r.fire_blocking(&QemuEvent::Prepare {
                    name: format!("vm{i}"),
                    xml: domain_xml("x"),
                })
                .is_ok()
            })
        })
        .collect();
    assert!(threads.into_iter().all(|h| h.join().unwrap()));
    assert!(
        start.elapsed() < Duration::from_millis(1100),
        "4 × 0.3 s hooks took {:?}",
        start.elapsed()
    );
}

#[test]
fn typed_and_raw_events_reach_hooks_identically() {
    let t = HooksTree::new();
    t.logging("network");
    let r = t.registry();
    r.fire_blocking(&NetworkEvent::PortCreated {
        name: "default".into(),
        xml: "<hookData/>".into(),
    })
    .unwrap();
    let raw = RawEvent::new(Driver::Network, ["default", "port-created", "begin", "-"]);
    assert_eq!(raw.on_failure(), FailurePolicy::Abort);
    r.fire_blocking(&raw).unwrap();
    let log = t.log();
    assert_eq!(log[0], log[1]);
}
