//! What the CLI tests share: the binary, scripts, and a hooks dir with hookctl installed.
#![allow(dead_code)] // each test file uses its own part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use assert_cmd::Command;

/// The system's default audit log and state root's top, as hookctl has them.
pub const DEFAULT_LOG: &str = "/var/log/libvirt/hookctl.jsonl";
pub const DEFAULT_STATE: &str = "/run/virt-hooks";

/// Makes a debug build take another dir for the system hooks dir (`/etc/libvirt/hooks`),
/// whose plugins dirs default to the system's log and state root: only ever set inside
/// [`with_default_paths_private`], where those are not the host's.
pub const SYSTEM_HOOKS_DIR_ENV: &str = "HOOKCTL_TEST_SYSTEM_HOOKS_DIR";

/// Set for the run of a test binary inside the namespace: the test to run there.
const PRIVATE_INNER: &str = "HOOKCTL_PRIVATE_PATHS_TEST_INNER";
/// The mount namespace the run started in, which the inner run must not be in.
const PRIVATE_OUTER_NS: &str = "HOOKCTL_PRIVATE_PATHS_TEST_OUTER_NS";

fn mount_ns() -> String {
    fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string()
}

/// Runs `body` as root in a private mount namespace with empty tmpfs mounts on `/run`
/// and `/var/log` (holding an empty `libvirt/`), so that the system's default log and
/// state root (`/var/log/libvirt/hookctl.jsonl`, `/run/virt-hooks/state`) are never the
/// host's, and whatever writes there is seen: the test binary runs itself again under
/// `unshare`, for this one test (libtest names a test's thread after it). Needs root
/// and util-linux `unshare`; skipped loudly otherwise.
pub fn with_default_paths_private(body: impl FnOnce()) {
    let thread = std::thread::current();
    let name = thread.name().expect("a test's thread is named after the test");
    if let Ok(inner) = std::env::var(PRIVATE_INNER) {
        assert_eq!(inner, name);
        let outer = std::env::var(PRIVATE_OUTER_NS).unwrap();
        assert_ne!(mount_ns(), outer, "not in a private mount namespace");
        for dir in ["/run", "/var/log"] {
            let status = Std::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0755", "hookctl-private-paths-test", dir])
                .status()
                .unwrap();
            assert!(status.success(), "mounting a tmpfs on {dir}: {status}");
        }
        fs::create_dir("/var/log/libvirt").unwrap();
        body();
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED {name}: needs root (a private mount namespace over the default log and state paths)");
        return;
    }
    let probe = Std::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !matches!(&probe, Ok(s) if s.success()) {
        eprintln!("SKIPPED {name}: `unshare --mount` is unavailable here ({probe:?})");
        return;
    }
    let out = Std::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(PRIVATE_INNER, name)
        .env(PRIVATE_OUTER_NS, mount_ns())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "in the private namespace ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprint!("{stderr}");
}

/// Makes `hooks` the system hooks dir for every hookctl this test runs (also through
/// [`libvirt_env`]); only inside [`with_default_paths_private`], which runs one test per
/// process.
pub fn make_system_hooks_dir(hooks: &Path) {
    assert!(
        std::env::var_os(PRIVATE_INNER).is_some(),
        "the system hooks dir's defaults are the host's paths outside the private namespace"
    );
    std::env::set_var(SYSTEM_HOOKS_DIR_ENV, hooks);
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookctl"))
}

/// An executable (0755) script.
pub fn script(path: &Path, body: &str) {
    script_mode(path, body, 0o755);
}

pub fn script_mode(path: &Path, body: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A hooks dir with hookctl linked as `qemu`, and its plugins dir with an audit log
/// beside the hooks dir: (temp dir, hooks dir, plugins dir).
pub fn installed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let plugins = hooks.join("qemu.plugins");
    fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(exe(), hooks.join("qemu")).unwrap();
    let log = tmp.path().join("audit.jsonl");
    fs::write(plugins.join("hookctl.toml"), format!("log = \"{}\"\n", log.display())).unwrap();
    (tmp, hooks, plugins)
}

/// Runs the installed link the way libvirt does: env cleared to LC_ALL and PATH.
pub fn as_libvirt(hooks: &Path, args: [&str; 4]) -> Command {
    as_libvirt_for(hooks, "qemu", args)
}

/// [`as_libvirt`] for another driver's link (`<hooks>/<driver>`).
pub fn as_libvirt_for(hooks: &Path, driver: &str, args: [&str; 4]) -> Command {
    let mut cmd = Command::new(hooks.join(driver));
    libvirt_env(&mut cmd).args(args);
    cmd
}

/// The environment libvirt gives a hook (and no WASM disk cache; and the test's system
/// hooks dir, [`make_system_hooks_dir`]).
pub fn libvirt_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/bin:/bin")
        .env("VIRT_HOOKS_WASM_CACHE", "off");
    if let Some(system) = std::env::var_os(SYSTEM_HOOKS_DIR_ENV) {
        cmd.env(SYSTEM_HOOKS_DIR_ENV, system);
    }
    cmd
}

/// `hookctl --hooks-dir HOOKS ARGS...`, with no WASM disk cache.
pub fn hookctl(hooks: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe());
    cmd.env("VIRT_HOOKS_WASM_CACHE", "off")
        .arg("--hooks-dir")
        .arg(hooks)
        .args(args);
    cmd
}

/// [`as_libvirt`] with a domain document on stdin, as libvirt passes it.
pub fn as_libvirt_xml(hooks: &Path, args: [&str; 4]) -> Command {
    let mut cmd = as_libvirt(hooks, args);
    cmd.write_stdin("<domain/>\n");
    cmd
}

/// Compiles a native plugin that dereferences a null pointer into `dest` (mode 0644),
/// with its source in `scratch`. Needs `cc`.
pub fn crashing_plugin(scratch: &Path, dest: &Path) {
    c_plugin(scratch, dest, "volatile int *p = 0; return *p;");
}

/// Compiles a native plugin whose `call` has `body` (C; `inv` is its argument, and
/// `<unistd.h>`/`<string.h>` are included) into `dest` (mode 0644). Needs `cc`.
pub fn c_plugin(scratch: &Path, dest: &Path, body: &str) {
    c_plugin_with(scratch, dest, body, &[]);
}

/// [`c_plugin`] with extra arguments for `cc` (linker flags).
pub fn c_plugin_with(scratch: &Path, dest: &Path, body: &str, flags: &[&str]) {
    let source = format!(
        "#include <string.h>\n#include <unistd.h>\n#include \"virt_hook.h\"\nstatic int32_t call(const virt_hook_invocation *inv) {{ (void)inv; {body} }}\nstatic const virt_hook_plugin plugin = {{ VIRT_HOOK_ABI_VERSION, \"c\", call }};\nconst virt_hook_plugin *virt_hook_plugin_v1(void) {{ return &plugin; }}\n"
    );
    c_source_plugin(scratch, dest, &source, flags);
}

/// Compiles a whole C plugin `source` (with `virt_hook.h` on the include path) into
/// `dest` (mode 0644), its source file in `scratch`. Needs `cc`.
pub fn c_source_plugin(scratch: &Path, dest: &Path, source: &str, flags: &[&str]) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks-dylib/include");
    let src = scratch.join(format!("{}.c", dest.file_name().unwrap().to_string_lossy()));
    fs::write(&src, source).unwrap();
    let built = std::process::Command::new("cc")
        .args(flags)
        .args(["-shared", "-fPIC", "-o"])
        .arg(dest)
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(built.success(), "cc failed for {}", dest.display());
    fs::set_permissions(dest, fs::Permissions::from_mode(0o644)).unwrap();
}
