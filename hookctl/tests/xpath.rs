//! `[match] xpath` in a plugin's sidecar: plugins picked by the guest's definition, with
//! real exec and WASM plugins through the dispatcher and `hookctl run`.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use predicates::str::contains;

mod common;
use common::*;

/// A guest with one disk, one PCI passthrough device and namespaced metadata.
const GPU_GUEST: &str = r#"<domain type='kvm'>
  <name>gpu-worker-1</name>
  <metadata>
    <app:gpu xmlns:app="http://example.org/app/1.0" model="a100"/>
  </metadata>
  <devices>
    <disk type='file' device='disk'><target dev='vda'/></disk>
    <hostdev mode='subsystem' type='pci'/>
  </devices>
</domain>
"#;

/// A guest with two disks and nothing else.
const DB_GUEST: &str = r#"<domain type='kvm'>
  <name>db-1</name>
  <devices>
    <disk type='file' device='disk'><target dev='vda'/></disk>
    <disk type='file' device='disk'><target dev='vdb'/></disk>
  </devices>
</domain>
"#;

/// An exec plugin that appends its name to `runs`.
fn recorder(dir: &Path, name: &str, runs: &Path) {
    script(
        &dir.join(name),
        &format!("#!/bin/sh\ncat >/dev/null\necho {name} >> '{}'\n", runs.display()),
    );
}

/// [`recorder`] with a sidecar holding `settings`.
fn selected(plugins: &Path, name: &str, runs: &Path, settings: &str) {
    recorder(plugins, name, runs);
    fs::write(plugins.join(format!("{name}.toml")), settings).unwrap();
}

/// The plugins that ran, in order, and forgets them.
fn ran(runs: &Path) -> Vec<String> {
    let text = fs::read_to_string(runs).unwrap_or_default();
    let _ = fs::remove_file(runs);
    text.lines().map(str::to_owned).collect()
}

/// A WASI module that writes `message` to stderr and exits 3: a plugin that refuses.
fn refusing_wasm(message: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "{escaped}")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $exit (i32.const 3))))"#,
        escaped = message.replace('\n', "\\n"),
        len = message.len()
    ))
    .unwrap()
}

#[test]
fn a_bad_expression_is_named_by_check_with_file_line_and_column() {
    let (_tmp, hooks, plugins) = installed();
    recorder(&plugins, "10-gpu.sh", &plugins.join("unused"));
    let sidecar = plugins.join("10-gpu.sh.toml");
    fs::write(
        &sidecar,
        "timeout = 5\n[match]\nxpath = [\"/domain/devices/hostdev\", \"/domain/devices/[x]\"]\n",
    )
    .unwrap();
    // Line 3; the second string's quote is at column 37, so its `[` (column 17 of the
    // expression) is at column 37 + 17 = 54.
    hookctl(&hooks, &["check", "qemu"])
        .assert()
        .code(1)
        .stdout(contains(format!(
            "{}:3:54: xpath `/domain/devices/[x]`: ",
            sidecar.display()
        )))
        .stdout(contains("(column 17 of the expression)"));
    // An unknown function, a variable, an unbound prefix: caught when the sidecar is read.
    for (xpath, want) in [
        ("/domain/devices/hostdev[frob()]", "unknown function `frob()`"),
        ("/domain[name = $vm]", "no variables"),
        ("/domain/metadata/app:gpu", "prefix `app` is not bound"),
    ] {
        fs::write(&sidecar, format!("[match]\nxpath = ['{xpath}']\n")).unwrap();
        hookctl(&hooks, &["check", "qemu"])
            .assert()
            .code(1)
            .stdout(contains(format!("{}:2:", sidecar.display())))
            .stdout(contains(want));
    }
    // The dispatcher does not guess: the plugin cannot be configured, so the start fails.
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin(GPU_GUEST)
        .assert()
        .code(1)
        .stderr(contains("10-gpu.sh"));
    // Fixed, it checks out.
    fs::write(&sidecar, "[match]\nxpath = ['/domain/devices/hostdev']\n").unwrap();
    hookctl(&hooks, &["check", "qemu"]).assert().success();
}

#[test]
fn exec_plugins_are_picked_by_the_guests_definition() {
    let (tmp, hooks, plugins) = installed();
    let runs = tmp.path().join("runs");
    selected(
        &plugins,
        "10-hostdev",
        &runs,
        "[match]\nxpath = [\"/domain/devices/hostdev\"]\n",
    );
    recorder(&plugins, "20-every-guest", &runs);
    selected(
        &plugins,
        "30-disks",
        &runs,
        "[match]\nxpath = [\"count(/domain/devices/disk) > 1\"]\n",
    );
    selected(&plugins, "40-gpu-named", &runs, "[match]\nops = [\"prepare\"]\nxpath = [\"/domain/name[starts-with(., 'gpu-')]\", \"/domain/devices/hostdev\"]\n");
    selected(&plugins, "50-gpu-metadata", &runs, "[match]\nxpath = [\"/domain/metadata/g:gpu[@model = 'a100']\"]\nxmlns = { g = \"http://example.org/app/1.0\" }\n");
    selected(
        &plugins,
        "60-gpu-any-namespace",
        &runs,
        "[match]\nxpath = [\"/domain/metadata/*[local-name() = 'gpu']\"]\n",
    );

    as_libvirt(&hooks, ["gpu-worker-1", "prepare", "begin", "-"])
        .write_stdin(GPU_GUEST)
        .assert()
        .success();
    assert_eq!(
        ran(&runs),
        [
            "10-hostdev",
            "20-every-guest",
            "40-gpu-named",
            "50-gpu-metadata",
            "60-gpu-any-namespace"
        ]
    );
    as_libvirt(&hooks, ["gpu-worker-1", "start", "begin", "-"])
        .write_stdin(GPU_GUEST)
        .assert()
        .success();
    assert_eq!(
        ran(&runs),
        [
            "10-hostdev",
            "20-every-guest",
            "50-gpu-metadata",
            "60-gpu-any-namespace"
        ],
        "`ops` still applies"
    );
    as_libvirt(&hooks, ["db-1", "prepare", "begin", "-"])
        .write_stdin(DB_GUEST)
        .assert()
        .success();
    assert_eq!(ran(&runs), ["20-every-guest", "30-disks"]);
    // The same metadata in another namespace is another application's.
    let other = GPU_GUEST.replace("app/1.0", "other/1.0");
    as_libvirt(&hooks, ["gpu-worker-1", "prepare", "begin", "-"])
        .write_stdin(other)
        .assert()
        .success();
    assert_eq!(
        ran(&runs),
        ["10-hostdev", "20-every-guest", "40-gpu-named", "60-gpu-any-namespace"]
    );
}

#[test]
fn no_input_never_matches_and_input_not_evaluated_fails_closed() {
    let (tmp, hooks, plugins) = installed();
    let runs = tmp.path().join("runs");
    recorder(&plugins, "10-any-domain", &runs);
    fs::write(plugins.join("10-any-domain.toml"), "[match]\nxpath = [\"/domain\"]\n").unwrap();
    recorder(&plugins, "20-always-true", &runs);
    fs::write(plugins.join("20-always-true.toml"), "[match]\nxpath = [\"true()\"]\n").unwrap();
    recorder(&plugins, "30-plain", &runs);
    for input in ["", " \n"] {
        as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
            .write_stdin(input)
            .assert()
            .success();
        assert_eq!(ran(&runs), ["30-plain"], "input {input:?}");
    }
    // A document there but not evaluated (here: what libvirt keeps from a guest's
    // <metadata> with an undeclared prefix, or not XML at all) calls every xpath plugin.
    let undeclared = "<domain><metadata><t:x xmlns:t='urn:t'><foo:bar/></t:x></metadata></domain>";
    for input in ["not xml", "<domain>", "<domain/><domain/>", undeclared] {
        as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
            .write_stdin(input)
            .assert()
            .success();
        assert_eq!(
            ran(&runs),
            ["10-any-domain", "20-always-true", "30-plain"],
            "input {input:?}"
        );
        // The audit line says the document was not evaluated, and why.
        let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
        assert!(line["document_not_evaluated"].is_string(), "{line}");
    }
    as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
        .write_stdin("<domain/>")
        .assert()
        .success();
    assert_eq!(ran(&runs), ["10-any-domain", "20-always-true", "30-plain"]);

    // `hookctl run` without --input gives domain hooks an empty document: no match.
    let dir = tmp.path().join("run-hooks");
    recorder(&dir.join("qemu.d"), "10-any-domain", &runs);
    fs::write(
        dir.join("qemu.d/10-any-domain.toml"),
        "[match]\nxpath = [\"/domain\"]\n",
    )
    .unwrap();
    recorder(&dir.join("qemu.d"), "20-plain", &runs);
    hookctl(&dir, &["run", "qemu", "vm1", "prepare", "begin", "-"])
        .assert()
        .success();
    assert_eq!(ran(&runs), ["20-plain"]);
    let input = tmp.path().join("vm1.xml");
    fs::write(&input, "<domain/>\n").unwrap();
    hookctl(&dir, &["run", "qemu", "vm1", "prepare", "begin", "-", "--input"])
        .arg(&input)
        .assert()
        .success();
    assert_eq!(ran(&runs), ["10-any-domain", "20-plain"]);

    // Daemon events read /dev/null: `check` says such a hook would never run.
    fs::create_dir_all(hooks.join("daemon.plugins")).unwrap();
    recorder(&hooks.join("daemon.plugins"), "10-never", &runs);
    fs::write(
        hooks.join("daemon.plugins/10-never.toml"),
        "[match]\nxpath = [\"/domain\"]\n",
    )
    .unwrap();
    hookctl(&hooks, &["check", "daemon"])
        .assert()
        .code(1)
        .stdout(contains("10-never.toml:2: xpath: daemon events carry no document"));
}

#[test]
fn hostile_documents_do_not_hang_the_dispatcher() {
    let (tmp, hooks, plugins) = installed();
    let runs = tmp.path().join("runs");
    recorder(&plugins, "10-hostdev", &runs);
    fs::write(plugins.join("10-hostdev.toml"), "[match]\nxpath = [\"//hostdev\"]\n").unwrap();
    recorder(&plugins, "20-plain", &runs);
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY a "hostdev hostdev hostdev hostdev hostdev hostdev hostdev hostdev">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
]>
<domain><devices><hostdev/></devices><name>&f;</name></domain>
"#;
    let deep = format!(
        "<domain><devices><hostdev/>{}{}</devices></domain>",
        "<x>".repeat(500_000),
        "</x>".repeat(500_000)
    );
    let wide_attributes: String = (0..10_000).map(|i| format!(" a{i}=''")).collect();
    let wide = format!("<domain><devices{wide_attributes}><hostdev/></devices></domain>");
    let huge = format!(
        "<domain><devices><hostdev/></devices><description>{}</description></domain>",
        "x".repeat(9 << 20)
    );
    for (what, doc) in [
        ("entity bomb", laughs.to_owned()),
        ("deep", deep),
        ("attributes", wide),
        ("huge", huge),
    ] {
        let start = Instant::now();
        as_libvirt(&hooks, ["vm1", "prepare", "begin", "-"])
            .write_stdin(doc)
            .timeout(Duration::from_secs(60))
            .assert()
            .success();
        let took = start.elapsed();
        eprintln!("{what}: {took:?}");
        assert!(took < Duration::from_secs(20), "{what}: {took:?}");
        // Refused unparsed, so failing closed: the plugin selected by xpath is called
        // too (padding a guest's XML must not slip past a vetting hook).
        assert_eq!(ran(&runs), ["10-hostdev", "20-plain"], "{what}: refused, so matched");
    }
}

#[test]
fn a_wasm_plugin_is_picked_or_skipped_by_xpath() {
    let (tmp, hooks, plugins) = installed();
    let runs = tmp.path().join("runs");
    fs::write(
        plugins.join("30-no-passthrough.wasm"),
        refusing_wasm("no passthrough on this host\n"),
    )
    .unwrap();
    fs::write(
        plugins.join("30-no-passthrough.wasm.toml"),
        "timeout = 10\n[match]\nxpath = [\"/domain/devices/hostdev[@type = 'pci']\"]\n",
    )
    .unwrap();
    recorder(&plugins, "40-plain", &runs);
    // A guest with a PCI device: the module runs and refuses the start.
    as_libvirt(&hooks, ["gpu-worker-1", "prepare", "begin", "-"])
        .write_stdin(GPU_GUEST)
        .assert()
        .code(1)
        .stderr(contains("30-no-passthrough.wasm"))
        .stderr(contains("no passthrough on this host"));
    assert_eq!(ran(&runs), ["40-plain"], "libvirt's rule: the others still run");
    // Without one, the module is not even called.
    as_libvirt(&hooks, ["db-1", "prepare", "begin", "-"])
        .write_stdin(DB_GUEST)
        .assert()
        .success()
        .stderr("");
    assert_eq!(ran(&runs), ["40-plain"]);
    // The audit line lists what ran: the skipped module is not in it.
    let last: serde_json::Value = serde_json::from_str(
        fs::read_to_string(tmp.path().join("audit.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = last["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default())
        .collect();
    assert!(names.iter().all(|n| !n.contains("30-no-passthrough")), "{names:?}");
    // A boolean expression, through `hookctl run` and the libvirt layout.
    let dir = tmp.path().join("run-hooks");
    fs::create_dir_all(dir.join("qemu.d")).unwrap();
    fs::write(
        dir.join("qemu.d/10-one-disk-only.wasm"),
        refusing_wasm("too many disks\n"),
    )
    .unwrap();
    fs::write(
        dir.join("qemu.d/10-one-disk-only.wasm.toml"),
        "[match]\nxpath = [\"count(/domain/devices/disk) > 1\"]\n",
    )
    .unwrap();
    for (guest, refused) in [(DB_GUEST, true), (GPU_GUEST, false)] {
        let input = tmp.path().join("guest.xml");
        fs::write(&input, guest).unwrap();
        let assert = hookctl(&dir, &["run", "qemu", "vm1", "prepare", "begin", "-", "--input"])
            .arg(&input)
            .assert();
        if refused {
            assert.code(1).stderr(contains("too many disks"));
        } else {
            assert.success();
        }
    }
}

#[test]
fn list_shows_the_expressions_and_that_they_need_a_document() {
    let (_tmp, hooks, plugins) = installed();
    let runs = plugins.join("unused");
    selected(&plugins, "10-gpu", &runs, "[match]\nxpath = [\"/domain/devices/hostdev\", \"/domain/metadata/g:gpu\"]\nxmlns = { g = \"http://example.org/app/1.0\" }\n");
    recorder(&plugins, "20-plain", &runs);
    fs::write(plugins.join("20-plain.toml"), "[match]\nops = [\"prepare\"]\n").unwrap();
    hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .stdout(contains(
            "match: xpath=[\"/domain/devices/hostdev\", \"/domain/metadata/g:gpu\"] xmlns=g=http://example.org/app/1.0",
        ))
        .stdout(contains("xpath: matches only events that carry an XML document").count(1))
        .stdout(contains("daemon events and events without a document never match"));
    let out = hookctl(&hooks, &["list", "qemu", "--json"]).assert().success();
    let listings: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let entries = listings
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["plugins_dir"].is_string())
        .unwrap()["entries"]
        .as_array()
        .unwrap()
        .clone();
    let entry = |name: &str| {
        entries
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    let gpu = entry("10-gpu");
    let m = &gpu["effective"]["match"];
    assert_eq!(
        m["xpath"],
        serde_json::json!(["/domain/devices/hostdev", "/domain/metadata/g:gpu"])
    );
    assert_eq!(m["xmlns"], serde_json::json!({"g": "http://example.org/app/1.0"}));
    assert_eq!(m["needs_document"], true);
    assert!(gpu["note"].as_str().unwrap().contains("XML document"), "{gpu}");
    // Additive: a plugin without xpath looks as it did.
    let plain = entry("20-plain");
    let m = plain["effective"]["match"].as_object().unwrap();
    assert_eq!(
        m.keys().map(String::as_str).collect::<Vec<_>>(),
        ["objects", "ops", "subops"]
    );
    assert!(plain.get("note").is_none(), "{plain}");
}
