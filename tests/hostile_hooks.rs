//! Hooks that hang, fork into the background, flood output, die by signals, get
//! arguments that are not UTF-8, or ignore a large stdin: none of them may block,
//! crash or silently change what the caller gets.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, Instant};

use conformance::HooksTree;
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::StatusRecord;
use virt_hooks_core::{Driver, RawEvent, RegistryBuilder};

fn prepare() -> QemuEvent {
    QemuEvent::Prepare {
        name: "vm1".into(),
        xml: "<domain/>\n".into(),
    }
}

#[test]
fn a_hanging_hook_is_killed_at_the_timeout_and_the_rest_still_run() {
    let t = HooksTree::new();
    t.script("qemu.d/10-hang", "#!/bin/sh\nsleep 1000\n");
    t.logging("qemu.d/20-after");
    let registry = RegistryBuilder::new()
        .hooks_dir(t.path())
        .timeout(Some(Duration::from_millis(200)))
        .build();
    let start = Instant::now();
    let err = registry.fire_blocking(&prepare()).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(err.report().hooks[0].status, StatusRecord::TimedOut { after_ms: 200 });
    assert!(err.to_string().contains("unexpected timeout after"), "{err}");
    assert_eq!(t.log().len(), 1);
}

#[test]
fn a_background_child_holding_the_pipes_does_not_block_the_event() {
    let t = HooksTree::new();
    t.script(
        "qemu",
        "#!/bin/sh\ncat >/dev/null\n(sleep 20; echo late) &\necho done\n",
    );
    let start = Instant::now();
    let report = t.registry().fire_blocking(&prepare()).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let rec = &report.hooks[0];
    assert_eq!(rec.stdout, "done\n");
    assert!(
        rec.warnings.iter().any(|w| w.contains("background process")),
        "{:?}",
        rec.warnings
    );
}

#[test]
fn an_output_flood_is_capped_and_fails_a_filter_but_not_other_events() {
    let t = HooksTree::new();
    t.script(
        "qemu",
        "#!/bin/sh\ncat >/dev/null\nhead -c 40000000 /dev/zero | tr '\\0' x\n",
    );
    let registry = t.registry();
    let report = registry.fire_blocking(&prepare()).unwrap();
    assert!(report.hooks[0].stdout_truncated);
    assert_eq!(report.hooks[0].stdout.len(), 16 << 20);
    let err = registry
        .fire_blocking(&QemuEvent::Migrate {
            name: "vm1".into(),
            xml: "<domain/>\n".into(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("output cap"), "{err}");
    // The failed migrate offers no document at all, not even the original.
    assert_eq!(err.report().document, None);
}

#[test]
fn a_hook_killed_by_a_signal_is_reported_as_such() {
    let t = HooksTree::new();
    t.script("qemu", "#!/bin/sh\nkill -KILL $$\n");
    let err = t.registry().fire_blocking(&prepare()).unwrap_err();
    assert_eq!(err.report().hooks[0].status, StatusRecord::Signaled { signal: 9 });
    assert!(err.to_string().contains("unexpected fatal signal 9"), "{err}");
}

#[test]
fn non_utf8_arguments_reach_the_hook_byte_for_byte() {
    let t = HooksTree::new();
    let out = t.path().join("arg");
    t.script(
        "qemu",
        &format!("#!/bin/sh\ncat >/dev/null\nprintf '%s' \"$1\" > '{}'\n", out.display()),
    );
    let name = OsString::from_vec(b"vm-\xff\xfe".to_vec());
    let ev = RawEvent::from_os_args(
        Driver::Qemu,
        [name.clone(), "prepare".into(), "begin".into(), "-".into()],
    );
    t.registry().fire_blocking(&ev).unwrap();
    assert_eq!(fs::read(out).unwrap(), name.as_bytes());
}

#[test]
fn a_megabyte_of_stdin_that_the_hook_never_reads() {
    let t = HooksTree::new();
    t.script("qemu", "#!/bin/sh\nexit 0\n");
    let xml = format!("<domain>{}</domain>\n", "x".repeat(1 << 20));
    let start = Instant::now();
    t.registry()
        .fire_blocking(&QemuEvent::Prepare {
            name: "vm1".into(),
            xml,
        })
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn non_utf8_output_fails_the_filter_stage_with_its_position() {
    // libvirt's parser (libxml2) refuses it later, naming neither the hook nor the place.
    let t = HooksTree::new();
    t.script("qemu", "#!/bin/sh\ncat >/dev/null\nprintf '<domain>\\377</domain>'\n");
    let failure = t
        .registry()
        .fire_blocking(&QemuEvent::Migrate {
            name: "vm1".into(),
            xml: "<domain/>\n".into(),
        })
        .unwrap_err();
    let stage = &failure.report().hooks[0];
    assert_eq!(
        stage.rejected_output.as_deref(),
        Some("its output is not UTF-8 at line 1, column 9, so not the XML libvirt expects; it began `<domain>\u{FFFD}</domain>`")
    );
    assert_eq!(failure.report().document, None);
}
