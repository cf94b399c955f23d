//! What following a hook's `#!` line costs a scan (run with `--release --ignored
//! --nocapture`; prints, asserts nothing about time).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use virt_hooks_core::{Driver, HooksDir};

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn interpreter_checks_per_scan() {
    virt_hooks_exec::link();
    let n = 5_000;
    for line in [
        "#!/bin/sh",
        "#!/usr/bin/env sh",
        "#!/usr/bin/env -S PATH=/usr/bin:/bin sh -e -u",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("qemu.plugins");
        fs::create_dir_all(&plugins).unwrap();
        for name in ["10-a", "20-b", "30-c", "40-d", "50-e"] {
            let p = plugins.join(name);
            fs::write(&p, format!("{line}\nexit 0\n")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let dir = HooksDir::plugins(&plugins);
        let scan = || assert_eq!(dir.scan(Driver::Qemu).unwrap().len(), 5);
        scan();
        let start = Instant::now();
        for _ in 0..n {
            scan();
        }
        eprintln!(
            "scan of 5 plugins `{line}` (PATH={:?}): {:?}",
            std::env::var_os("PATH").unwrap_or_default(),
            start.elapsed() / n
        );
    }
}
