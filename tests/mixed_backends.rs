//! exec, dylib and wasm hooks in one `.d` dir: one strcmp order, one run-all rule, one
//! filter chain.

use std::fs;
use std::path::{Path, PathBuf};

use conformance::HooksTree;
use virt_hooks_core::events::QemuEvent;
use virt_hooks_core::report::InputSource;

fn fixture_plugin() -> PathBuf {
    fixture_plugin::shared_object().expect("libfixture_plugin.so: cargo builds it as a dev-dependency")
}

fn example_wasm(name: &str) -> Vec<u8> {
    wat::parse_file(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/wasm")
            .join(name),
    )
    .unwrap()
}

fn tree() -> HooksTree {
    let t = HooksTree::new();
    // Each filter adds to the document so the chain is visible.
    t.script("qemu.d/10-exec", "#!/bin/sh\nsed 's|</domain>|<exec/></domain>|'\n");
    fs::copy(fixture_plugin(), t.path().join("qemu.d/20-native.so")).unwrap();
    fs::write(
        t.path().join("qemu.d/30-sandboxed.wasm"),
        example_wasm("migrate-rewrite.wat"),
    )
    .unwrap();
    t.script("qemu.d/40-exec", "#!/bin/sh\ncat > /dev/null\n");
    t
}

#[test]
fn one_order_one_chain_across_backends() {
    let t = tree();
    let xml = "<domain><source bridge='br-legacy'/></domain>";
    let report = t
        .registry()
        .fire_blocking(&QemuEvent::Migrate {
            name: "vm".into(),
            xml: xml.into(),
        })
        .unwrap();
    let order: Vec<_> = report
        .hooks
        .iter()
        .map(|r| {
            (
                r.backend.as_ref(),
                Path::new(&r.name).file_name().unwrap().to_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("exec", "10-exec".to_owned()),
            ("dylib", "20-native.so".to_owned()),
            ("wasm", "30-sandboxed.wasm".to_owned()),
            ("exec", "40-exec".to_owned())
        ]
    );
    // exec appends <exec/>; the native plugin rewrites the bridge; the WASM filter finds
    // nothing left to rewrite and prints nothing, so the native rewrite stands.
    assert_eq!(
        String::from_utf8(report.document.unwrap()).unwrap(),
        "<domain><source bridge='br0'/><exec/></domain>"
    );
    let inputs: Vec<_> = report.hooks.iter().map(|r| r.input).collect();
    assert_eq!(
        inputs,
        [
            InputSource::Original,
            InputSource::Chained,
            InputSource::Chained,
            InputSource::Chained
        ]
    );
    assert_eq!(report.hooks.iter().filter(|r| r.replaced_document).count(), 2);
}

#[test]
fn a_failure_in_any_backend_fails_the_event_and_the_rest_still_run() {
    let t = tree();
    // The native fixture fails for objects named exit-N; the WASM and exec hooks succeed.
    let err = t
        .registry()
        .fire_blocking(&QemuEvent::Prepare {
            name: "exit-4".into(),
            xml: "<domain/>".into(),
        })
        .unwrap_err();
    assert_eq!(err.report().hooks.len(), 4);
    assert_eq!(err.failures().count(), 1);
    assert!(
        err.to_string().contains("returned status 4: failing as asked with 4"),
        "{err}"
    );
}

/// Prints `<network/>` whatever its input: another kind of document than a domain.
const WRONG_ROOT_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "<network/>")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

#[test]
fn a_filter_stage_that_prints_no_usable_document_fails_in_every_backend() {
    let xml = "<domain><source bridge='br-legacy'/></domain>";
    // (plugin file, object name, what the refusal says)
    let cases = [
        ("10-half.sh", "vm", "not well-formed XML: line 1, column 1"),
        // The fixture prints its arguments before the document for this object.
        ("10-native.so", "echo-args", "not well-formed XML: line 1, column 1"),
        (
            "10-network.wasm",
            "vm",
            "root element is <network> in no namespace, where its input's is <domain>",
        ),
    ];
    for (file, object, why) in cases {
        let t = HooksTree::new();
        let path = t.path().join("qemu.d").join(file);
        fs::create_dir_all(t.path().join("qemu.d")).unwrap();
        match file.rsplit('.').next() {
            Some("sh") => {
                t.script("qemu.d/10-half.sh", "#!/bin/sh\ncat >/dev/null\nprintf '<domain>'\n");
            }
            Some("so") => {
                fs::copy(fixture_plugin(), &path).unwrap();
            }
            _ => fs::write(&path, wat::parse_str(WRONG_ROOT_WAT).unwrap()).unwrap(),
        }
        // A later stage still runs, on the original document (libvirt's chain rule).
        t.script("qemu.d/20-after", "#!/bin/sh\ncat\n");
        let event = QemuEvent::Migrate {
            name: object.into(),
            xml: xml.into(),
        };
        let failure = t.registry().fire_blocking(&event).expect_err(file);
        let report = failure.report();
        let stage = &report.hooks[0];
        assert!(!stage.success, "{file}");
        let rejected = stage.rejected_output.as_deref().unwrap_or_default();
        assert!(rejected.contains(why), "{file}: {rejected}");
        let message = stage.message.as_deref().unwrap_or_default();
        assert!(message.contains(file) && message.contains(why), "{file}: {message}");
        assert!(stage.document.is_none(), "{file}");
        assert_eq!(report.hooks[1].input, InputSource::Original, "{file}");
        assert_eq!(report.document, None, "{file}: a failed migration hands on no document");
    }
}

#[test]
fn each_filter_stage_says_what_it_changed() {
    let t = tree();
    let xml = "<domain>\n<source bridge='br-legacy'/>\n</domain>\n";
    let report = t
        .registry()
        .fire_blocking(&QemuEvent::Migrate {
            name: "vm".into(),
            xml: xml.into(),
        })
        .unwrap();
    let changes: Vec<_> = report
        .hooks
        .iter()
        .map(|r| r.document.as_ref().map(|d| (d.changed, d.lines_added, d.lines_removed)))
        .collect();
    // exec adds an element on the line of </domain>; the native plugin rewrites one
    // line; the WASM filter and the last script print nothing (the document stands).
    assert_eq!(
        changes,
        [
            Some((true, 1, 1)),
            Some((true, 1, 1)),
            Some((false, 0, 0)),
            Some((false, 0, 0))
        ]
    );
    let native = report.hooks[1].document.as_ref().unwrap();
    assert!(
        native
            .diff
            .contains("-<source bridge='br-legacy'/>\n+<source bridge='br0'/>\n"),
        "{}",
        native.diff
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["hooks"][1]["document"]["lines_added"], 1);
    assert!(json["hooks"][1]["document"]["diff"]
        .as_str()
        .unwrap()
        .starts_with("--- input\n+++ output\n"));
}
