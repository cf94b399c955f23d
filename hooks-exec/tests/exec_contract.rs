//! The exec backend against the libvirt contract and hostile hooks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virt_hooks_core::outcome::Containment;
use virt_hooks_core::{Driver, Hook, HookOutcome, HookStatus, Invocation};
use virt_hooks_exec::{ExecHook, ExecOptions};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn inv(input: Option<&[u8]>) -> Invocation {
    Invocation::new(
        Driver::Qemu,
        virt_hooks_core::EventArgs::new(["vm1", "prepare", "begin", "-"]),
        input.map(Into::into),
    )
}

/// Runs the hook as it is configured, and again always under a per-hook subreaper: the
/// contract is the same whatever contains the hook. Returns the first outcome.
fn run(hook: &ExecHook, input: Option<&[u8]>) -> HookOutcome {
    let out = hook.run_blocking(&inv(input));
    let path = hook.path().expect("an exec hook has a path");
    let options = ExecOptions {
        cgroup: false,
        ..*hook.options()
    };
    let sub = ExecHook::with_options(path, options).run_blocking(&inv(input));
    assert_eq!(sub.containment, Some(Containment::Subreaper));
    assert_eq!(
        (
            sub.status.describe(),
            &sub.stdout,
            &sub.stderr,
            sub.stdout_truncated,
            sub.stderr_truncated
        ),
        (
            out.status.describe(),
            &out.stdout,
            &out.stderr,
            out.stdout_truncated,
            out.stderr_truncated
        ),
        "under a subreaper vs {:?}",
        out.containment
    );
    out
}

#[test]
fn argv_is_the_full_path_and_four_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "qemu", "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\"\n");
    let out = run(&ExecHook::new(&p), Some(b""));
    assert!(out.status.is_success(), "{:?}", out.status);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\nvm1\nprepare\nbegin\n-\n", p.display())
    );
}

#[test]
fn stdin_carries_the_document_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "cat", "#!/bin/sh\nexec cat\n");
    let doc: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = run(&ExecHook::new(&p), Some(&doc));
    assert_eq!(out.stdout, doc);
}

#[test]
fn daemon_stdin_is_dev_null() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "daemon", "#!/bin/sh\nreadlink /proc/self/fd/0\n");
    let out = run(&ExecHook::new(&p), None);
    assert_eq!(out.stdout, b"/dev/null\n");
}

#[test]
fn exit_status_and_stderr_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "fail", "#!/bin/sh\necho 'no way' >&2\nexit 3\n");
    let out = run(&ExecHook::new(&p), Some(b"<domain/>\n"));
    assert!(matches!(out.status, HookStatus::Exited(3)));
    assert_eq!(out.stderr, b"no way\n");
    let cmd = out.command.unwrap();
    assert!(cmd.starts_with("LC_ALL=C "), "{cmd}");
    assert!(cmd.ends_with(&format!("{} vm1 prepare begin -", p.display())), "{cmd}");
}

#[test]
fn exec_failures_are_126_and_127() {
    let tmp = tempfile::tempdir().unwrap();
    let no_shebang = script(tmp.path(), "plain", "echo hi\n");
    assert!(matches!(
        run(&ExecHook::new(&no_shebang), Some(b"")).status,
        HookStatus::Exited(126)
    ));
    let bad_interp = script(tmp.path(), "interp", "#!/nonexistent/sh\n");
    let out = run(&ExecHook::new(&bad_interp), Some(b""));
    assert!(matches!(out.status, HookStatus::Exited(127)), "{:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stderr).contains("interp"));
}

#[test]
fn killed_by_a_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "sig", "#!/bin/sh\nkill -SEGV $$\n");
    assert!(matches!(
        run(&ExecHook::new(&p), Some(b"")).status,
        HookStatus::Signaled(11)
    ));
}

#[test]
fn timeout_kills_the_whole_group_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("child-pid");
    let p = script(
        tmp.path(),
        "hang",
        &format!("#!/bin/sh\nsleep 1000 &\necho $! > {}\nsleep 1000\n", marker.display()),
    );
    let hook = ExecHook::with_options(
        &p,
        ExecOptions {
            timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    );
    let t = Instant::now();
    let out = run(&hook, Some(b""));
    let took = t.elapsed();
    assert!(
        matches!(out.status, HookStatus::TimedOut(d) if d == Duration::from_millis(300)),
        "{:?}",
        out.status
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let child: i32 = fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !Path::new(&format!("/proc/{child}")).exists() || is_zombie(child),
        "background sleep survived"
    );
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn term_ignoring_hook_gets_killed_after_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(
        tmp.path(),
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.05; done\n",
    );
    let hook = ExecHook::with_options(
        &p,
        ExecOptions {
            timeout: Some(Duration::from_millis(100)),
            kill_grace: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let t = Instant::now();
    let out = run(&hook, Some(b""));
    assert!(out.status.is_timeout());
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn background_child_holding_pipes_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(
        tmp.path(),
        "bg",
        "#!/bin/sh\necho started\n(sleep 30; echo late) &\nexit 0\n",
    );
    let hook = ExecHook::with_options(
        &p,
        ExecOptions {
            drain_limit: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let t = Instant::now();
    let out = run(&hook, Some(b""));
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(out.status.is_success());
    assert_eq!(out.stdout, b"started\n");
    assert!(
        out.warnings.iter().any(|w| w.contains("background process")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn output_flood_is_capped_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(
        tmp.path(),
        "flood",
        "#!/bin/sh\nhead -c 5000000 /dev/zero\nhead -c 300000 /dev/zero >&2\n",
    );
    let hook = ExecHook::with_options(
        &p,
        ExecOptions {
            max_output: 1 << 20,
            ..Default::default()
        },
    );
    let out = run(&hook, Some(b""));
    assert!(out.status.is_success());
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr.len(), 300_000);
    assert!(!out.stderr_truncated);
}

#[test]
fn large_input_that_the_hook_never_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "noread", "#!/bin/sh\nexit 0\n");
    let doc = vec![b'x'; 1 << 20];
    let out = run(&ExecHook::new(&p), Some(&doc));
    assert!(out.status.is_success(), "{:?}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let p = script(tmp.path(), "ok", "#!/bin/sh\ncat\n");
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let hook = ExecHook::new(&p);
            tokio::spawn(async move { hook.call(&inv(Some(format!("doc {i}").as_bytes()))).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().stdout, format!("doc {i}").into_bytes());
    }
}

/// A sidecar's `[config]` reaches a script as `VIRT_HOOK_CONFIG_<KEY>`, loaded the way a
/// hooks dir loads it; no key can set a variable of its own choosing.
#[test]
fn config_reaches_the_script_as_prefixed_variables_only() {
    use virt_hooks_core::backend::{HookLoader, HookSettings};
    let tmp = tempfile::tempdir().unwrap();
    let hook = script(tmp.path(), "env.sh", "#!/bin/sh\nenv | LC_ALL=C sort\n");
    let settings = HookSettings::parse(
        &tmp.path().join("env.sh.toml"),
        "[config]\nmax_vcpus = 8\nLD_PRELOAD = \"/tmp/evil.so\"\npath = \"/tmp\"\nnote = \"two\\nlines=x\"\nstrict = true\n",
    )
    .unwrap();
    let loaded = virt_hooks_exec::ExecLoader.load(&hook, &settings).unwrap();
    let out = virt_hooks_core::block_on(loaded.call(&inv(None)));
    assert!(out.status.is_success(), "{}", out.status.describe());
    let env = String::from_utf8(out.stdout).unwrap();
    for line in [
        "VIRT_HOOK_CONFIG_LD_PRELOAD=/tmp/evil.so",
        "VIRT_HOOK_CONFIG_MAX_VCPUS=8",
        "VIRT_HOOK_CONFIG_NOTE=two",
        "lines=x",
        "VIRT_HOOK_CONFIG_PATH=/tmp",
        "VIRT_HOOK_CONFIG_STRICT=true",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from:\n{env}");
    }
    assert!(!env.lines().any(|l| l.starts_with("LD_PRELOAD=")), "{env}");
    assert!(!env.lines().any(|l| l == "PATH=/tmp"), "{env}");
    // Without a config, libvirt's environment exactly: no VIRT_HOOK_CONFIG_ at all.
    let plain = virt_hooks_exec::ExecLoader
        .load(&hook, &HookSettings::default())
        .unwrap();
    let out = virt_hooks_core::block_on(plain.call(&inv(None)));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("VIRT_HOOK_CONFIG_"));
}
