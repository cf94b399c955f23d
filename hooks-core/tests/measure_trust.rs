//! What the trust rule costs a scan (run with `--release --ignored --nocapture`; prints,
//! asserts nothing about time).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use virt_hooks_core::backend::TrustPolicy;
use virt_hooks_core::{Driver, HooksDir};

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn trust_checks_per_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("etc/libvirt/hooks/qemu.plugins");
    fs::create_dir_all(&plugins).unwrap();
    for name in ["10-a.sh", "20-b.sh", "30-c.sh", "40-d.sh", "50-e.sh"] {
        let p = plugins.join(name);
        fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let n = 20_000;
    let time = |label: &str, f: &dyn Fn()| {
        f();
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        let per = start.elapsed() / n;
        eprintln!("{label}: {per:?}");
        per
    };
    let policy = TrustPolicy::current_user();
    time("check_file (one plugin, 6 dirs up)", &|| {
        policy.check_file(&plugins.join("10-a.sh")).unwrap();
    });
    let checked = HooksDir::plugins(&plugins);
    let unchecked = HooksDir::plugins(&plugins).with_trust(None);
    let with = time("scan of 5 plugins, trust rule on", &|| {
        assert_eq!(checked.scan(Driver::Qemu).unwrap().len(), 5);
    });
    let without = time("scan of 5 plugins, trust rule off", &|| {
        assert_eq!(unchecked.scan(Driver::Qemu).unwrap().len(), 5);
    });
    eprintln!("the rule adds {:?} per scan", with.saturating_sub(without));
}
