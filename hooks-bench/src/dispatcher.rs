//! The dispatcher as libvirt meets it: whole processes, each against a baseline
//! measured in the same run. Needs `target/release/hookctl` beside this binary
//! (`cargo build --release -p hookctl`); skipped, saying so, without it.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Targets from the issue, per libvirt event.
const EMPTY_TARGET: f64 = 1.3;
const ONE_SCRIPT_TARGET: f64 = 2.3;
const ONE_WASM_TARGET: f64 = 1.6;
const SIZE_TARGET_MB: f64 = 25.0;

/// Runs `program args...` with `input` on stdin and libvirt's environment; whether it
/// exited 0.
fn run(program: &Path, args: &[&str], input: &[u8], extra_env: &[(&str, &Path)]) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let Ok(mut child) = cmd.spawn() else { return false };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child.wait().is_ok_and(|s| s.success())
}

/// A hooks dir with hookctl installed as `qemu` (a symlink, as `hookctl install` makes)
/// and a plugins dir holding `plugins`.
fn hooks_dir(root: &Path, hookctl: &Path, name: &str, plugins: &[(&str, &[u8], u32)]) -> PathBuf {
    let hooks = root.join(name);
    let dir = hooks.join("qemu.plugins");
    std::fs::create_dir_all(&dir).expect("plugins dir");
    symlink(hookctl, hooks.join("qemu")).expect("link");
    let log = root.join(format!("{name}.jsonl"));
    std::fs::write(dir.join("hookctl.toml"), format!("log = \"{}\"\n", log.display())).expect("config");
    for (file, body, mode) in plugins {
        let p = dir.join(file);
        std::fs::write(&p, body).expect("plugin");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("mode");
    }
    hooks.join("qemu")
}

pub(crate) fn measure(rounds: usize, xml: &[u8]) -> Value {
    let Some(hookctl) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("hookctl")))
        .filter(|p| p.exists())
    else {
        eprintln!("hooks-bench: dispatcher section skipped: build it first with `cargo build --release -p hookctl`");
        return json!({"skipped": "no hookctl beside this binary; run `cargo build --release -p hookctl`"});
    };
    let size_mb = std::fs::metadata(&hookctl).map_or(0.0, |m| m.len() as f64 / 1e6);
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let args = ["bench", "prepare", "begin", "-"];
    let truth = Path::new("/bin/true");
    let script = hooks_bench::TRIVIAL_SCRIPT.as_bytes();
    let direct = root.join("direct.sh");
    std::fs::write(&direct, script).expect("script");
    std::fs::set_permissions(&direct, std::fs::Permissions::from_mode(0o755)).expect("mode");
    let cache = root.join("wasm-cache");
    std::fs::create_dir(&cache).expect("cache dir");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).expect("mode");
    let env: &[(&str, &Path)] = &[("VIRT_HOOKS_WASM_CACHE", &cache)];

    let empty = hooks_dir(root, &hookctl, "empty", &[]);
    let one_script = hooks_dir(root, &hookctl, "script", &[("10-true.sh", script, 0o755)]);
    let wasm = hooks_bench::wasm_reader();
    let one_wasm = hooks_dir(root, &hookctl, "wasm", &[("10-reader.wasm", &wasm, 0o644)]);
    // Every case must succeed once before it is timed; the WASM one fills its cache.
    for (what, path) in [("empty", &empty), ("one script", &one_script), ("one wasm", &one_wasm)] {
        assert!(run(path, &args, xml, env), "dispatch with {what} plugins dir failed");
    }
    let pair = |a: &dyn Fn() -> bool, b: &dyn Fn() -> bool| crate::interleaved(rounds, a, b);
    let (empty_s, true_s) = pair(&|| run(&empty, &args, xml, env), &|| run(truth, &args, xml, env));
    let (version_s, true2_s) = pair(&|| run(&hookctl, &["--version"], b"", env), &|| {
        run(truth, &[], b"", env)
    });
    let (script_s, direct_s) = pair(&|| run(&one_script, &args, xml, env), &|| run(&direct, &args, xml, env));
    let (wasm_s, direct2_s) = pair(&|| run(&one_wasm, &args, xml, env), &|| run(&direct, &args, xml, env));
    let ratio = |a: f64, b: f64| a / b;
    json!({
        "hookctl": hookctl.display().to_string(),
        "rounds": rounds,
        "empty_dispatch_vs_bin_true": {
            "dispatch_us": empty_s * 1e6, "bin_true_us": true_s * 1e6,
            "ratio": ratio(empty_s, true_s), "target": EMPTY_TARGET, "met": ratio(empty_s, true_s) <= EMPTY_TARGET,
        },
        "version_vs_bin_true": {
            "version_us": version_s * 1e6, "bin_true_us": true2_s * 1e6, "ratio": ratio(version_s, true2_s),
        },
        "one_script_vs_the_script": {
            "dispatch_us": script_s * 1e6, "script_us": direct_s * 1e6,
            "ratio": ratio(script_s, direct_s), "target": ONE_SCRIPT_TARGET,
            "met": ratio(script_s, direct_s) <= ONE_SCRIPT_TARGET,
        },
        "one_cached_wasm_vs_a_script": {
            "dispatch_us": wasm_s * 1e6, "script_us": direct2_s * 1e6,
            "ratio": ratio(wasm_s, direct2_s), "target": ONE_WASM_TARGET,
            "met": ratio(wasm_s, direct2_s) <= ONE_WASM_TARGET,
        },
        "binary_size_mb": { "size": size_mb, "target": SIZE_TARGET_MB, "met": size_mb <= SIZE_TARGET_MB },
    })
}
