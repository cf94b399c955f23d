//! exec, dylib and wasm hooks in one `.d` dir: one strcmp order, one run-all rule, one
//! filter chain.

use std::fs;
use std::path::{Path, PathBuf};

use conformance::HooksTree;
use hooks_core::{InputSource, QemuEvent};

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
    t.script("qemu.d/10-exec", "#!/bin/sh\nxml=$(cat)\nprintf '%s<exec/>' \"$xml\"\n");
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
        "<domain><source bridge='br0'/></domain><exec/>"
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
