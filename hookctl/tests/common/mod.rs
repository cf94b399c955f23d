//! What the CLI tests share: the binary, scripts, and a hooks dir with hookctl installed.
#![allow(dead_code)] // each test file uses its own part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

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

/// The environment libvirt gives a hook (and no WASM disk cache).
pub fn libvirt_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/bin:/bin")
        .env("VIRT_HOOKS_WASM_CACHE", "off")
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
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hooks-dylib/include");
    let src = scratch.join(format!("{}.c", dest.file_name().unwrap().to_string_lossy()));
    fs::write(
        &src,
        format!(
            "#include <string.h>\n#include <unistd.h>\n#include \"virt_hook.h\"\nstatic int32_t call(const virt_hook_invocation *inv) {{ (void)inv; {body} }}\nstatic const virt_hook_plugin plugin = {{ VIRT_HOOK_ABI_VERSION, \"c\", call }};\nconst virt_hook_plugin *virt_hook_plugin_v1(void) {{ return &plugin; }}\n"
        ),
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(flags)
        .args(["-shared", "-fPIC", "-o"])
        .arg(dest)
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(built.success());
    fs::set_permissions(dest, fs::Permissions::from_mode(0o644)).unwrap();
}
