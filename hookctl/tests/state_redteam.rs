//! Hostile cases for per-guest state (`state = true`), from a red-team pass. Each test
//! tries one attack or mistake and is named after what it tries; it passes when the
//! attack gets nowhere. The comments above the tests describe the attack (those marked
//! "FAILS" failed before the fix that followed the pass).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{as_libvirt_xml, hookctl, installed, script};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// An installed hooks dir whose dispatcher keeps state at `state` (config written).
fn installed_with_state(state: &Path) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let config = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&config).unwrap() + &format!("state = \"{}\"\n", state.display());
    fs::write(&config, text).unwrap();
    (tmp, hooks, plugins)
}

/// A stateful exec plugin that appends `op subop` to `$VIRT_HOOK_STATE/seen`, runs
/// `extra` (shell), and exits `release_exit` at `release`.
fn stateful_plugin(plugins: &Path, name: &str, extra: &str, release_exit: i32) {
    script(
        &plugins.join(name),
        &format!(
            "#!/bin/sh\ncat > /dev/null\necho \"$2 $3\" >> \"$VIRT_HOOK_STATE/seen\" || exit 9\n{extra}\n\
             [ \"$2\" = release ] && exit {release_exit}\nexit 0\n"
        ),
    );
    fs::write(plugins.join(format!("{name}.toml")), "state = true\n").unwrap();
}

fn stdout_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}

fn stderr_of(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&out.get_output().stderr).into_owned()
}

// ---------------------------------------------------------------------------------
// Finding 1 (FAILS): `simulate --state` refuses the real root "however spelled", but
// `<real>/missing/..` is not resolved (canonicalize fails on the missing part and
// `std::path::absolute` keeps `..`), so the simulation runs on the real root: its
// `release end` removes the real guest's state (and creates `<real>/missing`).
// ---------------------------------------------------------------------------------
#[test]
fn simulate_state_spelled_through_a_missing_dir_and_dotdot_reaches_the_real_state() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(&plugins, "10-fw", "", 0);
    as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
        .assert()
        .success();
    let real = state.join("qemu/web1/10-fw/seen");
    assert!(real.exists());
    let sneaky = state.join("no-such-dir/..");
    let out = hookctl(
        &hooks,
        &["simulate", "qemu", "stop", "web1", "--state", sneaky.to_str().unwrap()],
    )
    .assert();
    let code = out.get_output().status.code();
    assert!(
        real.exists(),
        "simulate (exit {code:?}) removed the running guest's REAL state through --state {}",
        sneaky.display()
    );
}

// ---------------------------------------------------------------------------------
// Finding 2 (FAILS): when `<hooks>/qemu` is a wrapper that runs the dispatcher
// (`exec hookctl dispatch --plugins ...`, the by-hand form the README documents),
// `simulate` does not recognise it, runs it as an exec hook, and the simulated
// `release end` replays and removes the real guest's state, and is audited.
// ---------------------------------------------------------------------------------
#[test]
fn simulate_through_a_wrapper_script_dispatcher_removes_the_real_state() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(&plugins, "10-fw", "", 0);
    as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
        .assert()
        .success();
    let real = state.join("qemu/web1/10-fw/seen");
    assert!(real.exists());
    fs::remove_file(hooks.join("qemu")).unwrap();
    script(
        &hooks.join("qemu"),
        &format!(
            "#!/bin/sh\nexec '{}' dispatch --plugins '{}' qemu \"$@\"\n",
            common::exe().display(),
            plugins.display()
        ),
    );
    let audit_before = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap_or_default();
    let _ = hookctl(&hooks, &["simulate", "qemu", "stop", "web1"]).assert();
    let audit_after = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap_or_default();
    assert!(
        real.exists() && audit_after == audit_before,
        "simulate reached the real dispatcher: state removed={}, audit lines added={}",
        !real.exists(),
        audit_after.lines().count() - audit_before.lines().count()
    );
}

// ---------------------------------------------------------------------------------
// Finding 3 (FAILS; needs root): `StateRoot::finish` (run by the dispatcher at EVERY
// `release end`, even with no stateful plugin) applies none of `open`'s checks: not
// the trust rule on the root's parent, not "a directory of ours, 0700, not a link" on
// the root and each level. With `state =` under a directory others can write (a
// sticky /tmp-like dir, /dev/shm, /var/tmp: `open` refuses it, `check` says nothing),
// an unprivileged user plants `<root>/qemu/web1 -> /victim` and root empties /victim.
// ---------------------------------------------------------------------------------
#[test]
fn release_end_deletes_through_a_link_planted_in_a_state_root_others_can_write() {
    if !is_root() {
        eprintln!("skipped: needs root (to act as `nobody`)");
        return;
    }
    let tmp0 = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp0.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = tmp0.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = tmp0.path().join("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("important"), "root's data\n").unwrap();
    let state = shared.join("state");
    let (_tmp, hooks, _plugins) = installed_with_state(&state);
    // The unprivileged user, before any stateful plugin ever ran.
    let planted = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!(
            "mkdir -p '{0}/qemu' && ln -s '{1}' '{0}/qemu/web1'",
            state.display(),
            victim.display()
        ))
        .status()
        .unwrap();
    assert!(planted.success());
    // `check` has nothing to say about the root.
    let check = hookctl(&hooks, &["check", "qemu"]).assert();
    let said = stdout_of(&check) + &stderr_of(&check);
    // libvirt's last event for a guest named web1 (no stateful plugin at all).
    let _ = as_libvirt_xml(&hooks, ["web1", "release", "end", "-"]).assert();
    assert!(
        victim.join("important").exists() && victim.join("sub").exists(),
        "root removed {}'s contents through a link a user planted in the state root \
         (`check` said: {said:?})",
        victim.display()
    );
}

// Finding 3b (FAILS): `check` does not validate `state =`: a root the dispatcher will
// refuse for every stateful plugin (parent sticky / writable by others) passes.
#[test]
fn check_accepts_a_state_root_that_every_stateful_call_will_refuse() {
    let tmp0 = tempfile::tempdir().unwrap();
    let shared = tmp0.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let (_tmp, hooks, plugins) = installed_with_state(&shared.join("state"));
    stateful_plugin(&plugins, "10-fw", "", 0);
    let refused = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .failure();
    assert!(stderr_of(&refused).contains("refused"), "{}", stderr_of(&refused));
    let check = hookctl(&hooks, &["check", "qemu"]).assert();
    assert!(
        !check.get_output().status.success(),
        "`check` passes a state root that fails every stateful call:\n{}",
        stdout_of(&check)
    );
}

// ---------------------------------------------------------------------------------
// Finding 4 (FAILS): `simulate --state /tmp/x` (what an operator types first) fails every
// stateful plugin, blames `/tmp/x` ("writable by others (mode 1777)", which is /tmp's
// mode; /tmp/x does not exist), and reports the guest's start "would be REFUSED", a
// verdict about the simulation's scratch dir, not about the hooks.
// ---------------------------------------------------------------------------------
#[test]
fn simulate_state_under_tmp_blames_the_wrong_directory_and_gives_a_false_verdict() {
    let (_tmp, hooks, plugins) = installed();
    stateful_plugin(&plugins, "10-fw", "", 0);
    let sim = PathBuf::from(format!("/tmp/hookctl-redteam-sim-{}", std::process::id()));
    let _ = fs::remove_dir_all(&sim);
    let out = hookctl(
        &hooks,
        &["simulate", "qemu", "start", "web1", "--state", sim.to_str().unwrap()],
    )
    .assert();
    let text = stdout_of(&out);
    let _ = fs::remove_dir_all(&sim);
    assert!(
        !text.contains("would be REFUSED"),
        "a usable --state would have let the start go through; got:\n{text}"
    );
}

// ---------------------------------------------------------------------------------
// Finding 5 (FAILS): a plugin that opens its own directory to others (chmod 755, e.g.
// `cp -a`, a tool, a umask) makes every later call refused; release fails, the
// directory is kept, and the guest can never start again until an operator chmods it,
// although the levels above (0700) already keep everyone out.
// ---------------------------------------------------------------------------------
#[test]
fn a_plugin_that_chmods_its_own_dir_keeps_the_guest_from_ever_starting_again() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(&plugins, "10-fw", "chmod 755 \"$VIRT_HOOK_STATE\"", 0);
    as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
        .assert()
        .success();
    let _ = as_libvirt_xml(&hooks, ["web1", "release", "end", "-"]).assert();
    let again = as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"]).assert();
    assert!(
        again.get_output().status.success(),
        "the guest's next start is refused: {}",
        stderr_of(&again)
    );
}

// ---------------------------------------------------------------------------------
// Finding 6 (FAILS): after a failed release the note stays through the object's NEXT
// lifecycle: `hookctl list` says "state KEPT ... remove it once the plugin's work is
// undone" about the directory a running guest's plugin is using right now.
// ---------------------------------------------------------------------------------
#[test]
fn list_tells_the_operator_to_remove_the_live_state_of_a_running_guest() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(&plugins, "10-fw", "", 3);
    as_libvirt_xml(&hooks, ["db", "start", "begin", "-"]).assert().success();
    as_libvirt_xml(&hooks, ["db", "release", "end", "-"]).assert().failure();
    // The guest is started again; its plugin uses (and heals) the directory.
    as_libvirt_xml(&hooks, ["db", "prepare", "begin", "-"])
        .assert()
        .success();
    as_libvirt_xml(&hooks, ["db", "start", "begin", "-"]).assert().success();
    let text = stdout_of(&hookctl(&hooks, &["list", "qemu"]).assert().success());
    assert!(
        !text.contains("state KEPT"),
        "a running guest's live state is listed as kept, to be removed:\n{text}"
    );
}

// ---------------------------------------------------------------------------------
// Finding 7 (FAILS): a WASM module bypasses state_max entirely: it opens /state/big,
// unlinks it, and writes through the still-open fd. The walk sees nothing, so 256 MiB
// (any amount, up to the tmpfs's size: /run is host memory) sit in the state root's
// file system while the call runs, and the call SUCCEEDS with state_max = 1 MiB.
// ---------------------------------------------------------------------------------
const UNLINKED_FILL: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 20)
  (data (i32.const 100) "big")
  (func (export "_start") (local $fd i32) (local $i i32)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 3)
                         (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))
      (then (call $proc_exit (i32.const 70))))
    (local.set $fd (i32.load (i32.const 300)))
    (if (call $unlink (i32.const 3) (i32.const 100) (i32.const 3)) (then (call $proc_exit (i32.const 71))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 1048576))
    ;; 256 writes of 1 MiB, each must write it all
    (loop $more
      (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)) (then (call $proc_exit (i32.const 72))))
      (if (i32.ne (i32.load (i32.const 8)) (i32.const 1048576)) (then (call $proc_exit (i32.const 73))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 256))))
    ;; hold it for 1 s (poll_oneoff on the monotonic clock), then exit 0
    (i64.store (i32.const 400) (i64.const 0))
    (i32.store8 (i32.const 408) (i32.const 0))
    (i32.store (i32.const 416) (i32.const 1))
    (i64.store (i32.const 424) (i64.const 1000000000))
    (i64.store (i32.const 432) (i64.const 0))
    (i32.store16 (i32.const 440) (i32.const 0))
    (drop (call $poll (i32.const 400) (i32.const 512) (i32.const 1) (i32.const 600)))
    (call $proc_exit (i32.const 0))))
"#;

#[test]
fn a_wasm_module_writes_far_past_state_max_through_an_unlinked_open_file() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (tmp, hooks, plugins) = installed_with_state(&state);
    let module = plugins.join("10-fill.wasm");
    fs::write(&module, wat::parse_str(UNLINKED_FILL).unwrap()).unwrap();
    fs::write(
        plugins.join("10-fill.wasm.toml"),
        "state = true\nstate_max = \"1MiB\"\n",
    )
    .unwrap();
    let out = as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"]).assert();
    let audit = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    let status = line["hooks"][0]["status"].as_str().unwrap_or_default().to_owned();
    assert!(
        !out.get_output().status.success(),
        "256 MiB written into the state dir's file system with state_max = 1 MiB, and the call passed ({status})"
    );
}

// ---------------------------------------------------------------------------------
// Finding 8 (FAILS): DESIGN says that past the cap "the excess stays until the object's
// last event"; but the module's own last-event call is then measured over the cap and
// fails, so the directory is KEPT, and every later call of the module (each
// `prepare`) fails: one overshoot (one 2 MiB write, here at `start`) means the guest
// never starts again until an operator removes the directory by hand.
// ---------------------------------------------------------------------------------
const OVERSHOOT_ONCE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 40)
  (data (i32.const 100) "once")
  (data (i32.const 120) "big")
  ;; the first call only (it creates /state/once exclusively) writes 2 MiB to /state/big
  (func (export "_start")
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 4)
                         (i32.const 5) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))
      (then (call $proc_exit (i32.const 0))))
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 3)
                         (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300))
      (then (call $proc_exit (i32.const 70))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 2097152))
    (drop (call $fd_write (i32.load (i32.const 300)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 0))))
"#;

#[test]
fn one_overshoot_of_state_max_keeps_the_state_forever_and_the_guest_from_starting() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    fs::write(plugins.join("10-once.wasm"), wat::parse_str(OVERSHOOT_ONCE).unwrap()).unwrap();
    fs::write(plugins.join("10-once.wasm.toml"), "state = true\n").unwrap();
    // The 2 MiB write is refused at the call (dquot); the module ignores it and exits
    // 0, so `prepare` passes, and nothing past the cap was written ...
    as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
        .assert()
        .success();
    let big = state.join("qemu/web1/10-once.wasm/big");
    assert_eq!(fs::metadata(&big).map(|m| m.len()).unwrap_or(0), 0);
    // ... libvirt then ends the object; its directory goes with it, not kept.
    let release = as_libvirt_xml(&hooks, ["web1", "release", "end", "-"])
        .assert()
        .success();
    let dir = state.join("qemu/web1/10-once.wasm");
    assert!(
        !dir.exists(),
        "the excess outlived the last event: {}",
        stderr_of(&release)
    );
}

// ---------------------------------------------------------------------------------
// Finding 9 (FAILS): which directories `finish` keeps is decided by the FILE NAME of
// any failed hook in the report, whatever its directory: under `simulate` (which runs
// `<driver>.d/` too), a libvirt-layout `qemu.d/10-fw` that fails `release end` makes
// the dispatcher plugin `qemu.plugins/10-fw`, which succeeded, keep its state, with a
// note blaming it.
// ---------------------------------------------------------------------------------
#[test]
fn a_failing_hook_elsewhere_with_the_same_file_name_keeps_a_plugins_state() {
    let (tmp, hooks, plugins) = installed();
    stateful_plugin(&plugins, "10-fw", "", 0);
    script(
        &hooks.join("qemu.d/10-fw"),
        "#!/bin/sh\ncat >/dev/null\n[ \"$2\" = release ] && exit 5\nexit 0\n",
    );
    let sim = tmp.path().join("sim");
    let sim_s = sim.to_str().unwrap();
    let _ = hookctl(&hooks, &["simulate", "qemu", "start", "vm", "--state", sim_s]).assert();
    let out = hookctl(&hooks, &["simulate", "qemu", "stop", "vm", "--state", sim_s]).assert();
    assert!(
        !sim.join("qemu/vm/10-fw").exists(),
        "qemu.plugins/10-fw passed release but its state was kept:\n{}",
        stdout_of(&out)
    );
}

// ---------------------------------------------------------------------------------
// Finding 10 (FAILS, racy: usually within a few thousand rounds): two objects ending
// at once (libvirt-guests stopping guests in parallel). Guest A's finish removes the
// empty `.kept/qemu` level while guest B's finish is between creating it and creating
// `.kept/qemu/B`: B's note is lost (B's directory is still kept, but `list` no longer
// says so, and the report carries an error).
// ---------------------------------------------------------------------------------
#[test]
fn two_guests_ending_at_once_can_lose_a_kept_note() {
    use std::ffi::OsStr;
    use virt_hooks_core::state::StateRoot;
    use virt_hooks_core::Driver;
    let tmp = tempfile::tempdir().unwrap();
    let root = StateRoot::new(tmp.path().join("state"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                root.open(Driver::Qemu, "a".as_ref(), "h".as_ref()).unwrap();
                let _ = root.finish(Driver::Qemu, "a".as_ref(), &|_: &OsStr| None);
            }
        })
    };
    let mut lost = None;
    for round in 0..20_000 {
        root.open(Driver::Qemu, "b".as_ref(), "h".as_ref()).unwrap();
        let kept = root.finish(Driver::Qemu, "b".as_ref(), &|_: &OsStr| {
            Some("release end failed".into())
        });
        if let Err(e) = kept {
            lost = Some((round, e.to_string()));
            break;
        }
        let _ = root.finish(Driver::Qemu, "b".as_ref(), &|_: &OsStr| None);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    a.join().unwrap();
    assert!(lost.is_none(), "a kept note was lost: {lost:?}");
}

// ---------------------------------------------------------------------------------
// HOLDS: a WASM module can neither follow nor hard-link its way out of /state, nor
// create an absolute symlink (it CAN leave a relative symlink pointing outside, which
// nothing of hookctl follows: `finish` unlinks it, `list` does not descend).
// ---------------------------------------------------------------------------------
fn links_module(target: &str) -> String {
    format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_link" (func $link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1000) "{target}")
  (data (i32.const 400) "rel")
  (data (i32.const 500) "hl")
  (data (i32.const 600) "/etc/passwd")
  (data (i32.const 700) "abs")
  (func (export "_start")
    ;; an absolute symlink is refused
    (if (i32.eqz (call $symlink (i32.const 600) (i32.const 11) (i32.const 3) (i32.const 700) (i32.const 3)))
      (then (call $proc_exit (i32.const 9))))
    ;; a relative one pointing outside is created
    (drop (call $symlink (i32.const 1000) (i32.const {len}) (i32.const 3) (i32.const 400) (i32.const 3)))
    ;; hard link following the link: must fail
    (if (i32.eqz (call $link (i32.const 3) (i32.const 1) (i32.const 400) (i32.const 3) (i32.const 3) (i32.const 500) (i32.const 2)))
      (then (call $proc_exit (i32.const 11))))
    ;; open following the link: must fail
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 1) (i32.const 400) (i32.const 3) (i32.const 0) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 300)))
      (then (call $proc_exit (i32.const 12))))
    (call $proc_exit (i32.const 0))))
"#,
        len = target.len()
    )
}

#[test]
fn holds_a_wasm_module_cannot_use_links_to_leave_its_state_dir() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    let target = tmp0.path().join("TARGET");
    fs::write(&target, "outside\n").unwrap();
    // From <tmp0>/state/qemu/vm/10-links.wasm, ../../../../TARGET is <tmp0>/TARGET.
    let wat = links_module("../../../../TARGET");
    fs::write(plugins.join("10-links.wasm"), wat::parse_str(&wat).unwrap()).unwrap();
    fs::write(plugins.join("10-links.wasm.toml"), "state = true\n").unwrap();
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    let link = state.join("qemu/vm/10-links.wasm/rel");
    assert_eq!(
        fs::read_to_string(&link).unwrap(),
        "outside\n",
        "the link does point outside"
    );
    assert!(!state.join("qemu/vm/10-links.wasm/hl").exists());
    as_libvirt_xml(&hooks, ["vm", "release", "end", "-"]).assert().success();
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        "outside\n",
        "finish followed the module's link"
    );
}

// ---------------------------------------------------------------------------------
// Finding 11 (FAILS; needs root and mount): removal at the last event crosses mount
// points. A plugin that mounts something in its state dir (a guest's ISO, a bind
// mount, an NFS share) and whose unmount fails at `release end` (busy) but exits 0 has
// the MOUNTED file system's contents deleted by `remove_dir_all`.
// ---------------------------------------------------------------------------------
#[test]
fn release_end_deletes_the_contents_of_a_file_system_mounted_in_a_state_dir() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let victim = tmp0.path().join("shared-media");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("install.iso"), "not to be deleted\n").unwrap();
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    script(
        &plugins.join("10-media"),
        &format!(
            "#!/bin/sh\ncat >/dev/null\n\
             if [ \"$2 $3\" = 'prepare begin' ]; then mkdir -p \"$VIRT_HOOK_STATE/media\" && \
             exec mount --bind '{}' \"$VIRT_HOOK_STATE/media\"; fi\nexit 0\n",
            victim.display()
        ),
    );
    fs::write(plugins.join("10-media.toml"), "state = true\n").unwrap();
    let mounted = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .assert();
    if !mounted.get_output().status.success() {
        eprintln!("skipped: cannot mount here: {}", stderr_of(&mounted));
        return;
    }
    // release end: the plugin's unmount failed (busy) or was forgotten; it exits 0.
    let _ = as_libvirt_xml(&hooks, ["vm", "release", "end", "-"]).assert();
    let media = state.join("qemu/vm/10-media/media");
    let _ = std::process::Command::new("umount").arg(&media).status();
    assert!(
        victim.join("install.iso").exists(),
        "finish deleted the contents of a file system mounted inside a state dir"
    );
}

// ---------------------------------------------------------------------------------
// Finding 12 (FAILS): the kept note carries the first line of the plugin's stderr with
// every control character but CR/LF, and `hookctl list` prints it raw: a plugin (or a
// WASM module) puts ANSI/OSC escape sequences on the operator's terminal, which
// `hookctl log` and the journal escape.
// ---------------------------------------------------------------------------------
#[test]
fn list_prints_a_plugins_escape_sequences_from_a_kept_note_raw() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(
        &plugins,
        "10-fw",
        "[ \"$2\" = release ] && printf '\\033]0;owned\\007\\033[2Jcould not undo\\n' >&2",
        1,
    );
    as_libvirt_xml(&hooks, ["vm", "start", "begin", "-"]).assert().success();
    as_libvirt_xml(&hooks, ["vm", "release", "end", "-"]).assert().failure();
    let text = stdout_of(&hookctl(&hooks, &["list", "qemu"]).assert().success());
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "raw escape sequences in `hookctl list`: {text:?}"
    );
}

// ---------------------------------------------------------------------------------
// HOLDS: an exec plugin that, at `release end`, swaps its own directory for a link to
// somewhere else and drops junk in the object's directory, then succeeds: the link
// and the junk go, what the link names stays.
// ---------------------------------------------------------------------------------
#[test]
fn holds_a_plugin_swapping_its_dir_for_a_link_at_release_loses_only_the_link() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let elsewhere = tmp0.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("keep"), "x").unwrap();
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(
        &plugins,
        "10-fw",
        &format!(
            "if [ \"$2\" = release ]; then rm -rf \"$VIRT_HOOK_STATE\"; ln -s '{}' \"$VIRT_HOOK_STATE\"; \
             echo junk > \"$VIRT_HOOK_STATE/../junk\"; mkdir \"$VIRT_HOOK_STATE/../20-other\"; fi",
            elsewhere.display()
        ),
        0,
    );
    as_libvirt_xml(&hooks, ["vm", "start", "begin", "-"]).assert().success();
    as_libvirt_xml(&hooks, ["vm", "release", "end", "-"]).assert().success();
    assert!(elsewhere.join("keep").exists());
    assert!(!state.join("qemu/vm").exists());
}

// ---------------------------------------------------------------------------------
// Finding 3c (FAILS; needs root): the same unchecked `finish`, reached through
// `simulate --state DIR` with DIR in /tmp (what the README's `--state DIR` invites). An
// unprivileged user pre-creates DIR with `qemu/web1 -> /victim`; root's simulated
// `release end` refuses the plugins' state dirs ("writable by others") and then empties
// /victim anyway. No stateful plugin is needed.
// ---------------------------------------------------------------------------------
#[test]
fn simulate_with_state_in_tmp_deletes_through_a_users_planted_link() {
    if !is_root() {
        eprintln!("skipped: needs root (to act as `nobody`)");
        return;
    }
    let (_tmp, hooks, plugins) = installed();
    stateful_plugin(&plugins, "10-fw", "", 0);
    let tmp0 = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp0.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let victim = tmp0.path().join("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("important"), "root's data\n").unwrap();
    let sim = PathBuf::from(format!("/tmp/hookctl-redteam-planted-{}", std::process::id()));
    let _ = fs::remove_dir_all(&sim);
    let planted = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!(
            "mkdir -p '{0}/qemu' && ln -s '{1}' '{0}/qemu/web1'",
            sim.display(),
            victim.display()
        ))
        .status()
        .unwrap();
    assert!(planted.success());
    let _ = hookctl(
        &hooks,
        &["simulate", "qemu", "stop", "web1", "--state", sim.to_str().unwrap()],
    )
    .assert();
    let _ = fs::remove_dir_all(&sim);
    assert!(
        victim.join("important").exists(),
        "root's `simulate --state {}` emptied {} through a link planted by nobody",
        sim.display(),
        victim.display()
    );
}

// ---------------------------------------------------------------------------------
// Issue 19, finding 1A (FAILS): a WASM module with `state = true` makes 20 levels of
// 255-byte directory names in /state (80 KiB of its quota). The path passes PATH_MAX, so
// the walk that looks for mount points (by path) fails with ENAMETOOLONG, and that
// failure keeps the directory, with a note, at every `release end`: the module's state
// outlives its guest, lifecycle after lifecycle.
// ---------------------------------------------------------------------------------
fn deep_tree_module(levels: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{name}")
  (data (i32.const 2048) "f")
  (func (export "_start") (local $fd i32) (local $i i32) (local $errno i32)
    (local.set $fd (i32.const 3))
    (loop $down
      ;; at a later event the tree is there (errno 20: exist)
      (local.set $errno (call $mkdir (local.get $fd) (i32.const 1024) (i32.const 255)))
      (if (i32.eq (local.get $errno) (i32.const 20)) (then (call $proc_exit (i32.const 0))))
      (if (local.get $errno) (then (call $proc_exit (i32.const 10))))
      ;; opened as a directory (oflags 2), with every right but fd_write
      (if (call $path_open (local.get $fd) (i32.const 0) (i32.const 1024) (i32.const 255)
                           (i32.const 2) (i64.const 0x1FFFFFBF) (i64.const 0x1FFFFFFF) (i32.const 0) (i32.const 16))
        (then (call $proc_exit (i32.const 11))))
      (local.set $fd (i32.load (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $down (i32.lt_u (local.get $i) (i32.const {levels}))))
    ;; a file at the bottom (oflags 1: create)
    (if (call $path_open (local.get $fd) (i32.const 0) (i32.const 2048) (i32.const 1)
                         (i32.const 1) (i64.const 66) (i64.const 0) (i32.const 0) (i32.const 16))
      (then (call $proc_exit (i32.const 12))))
    (call $proc_exit (i32.const 0))))
"#,
        name = "d".repeat(255)
    ))
    .unwrap()
}

#[test]
fn a_wasm_modules_tree_past_path_max_outlives_its_guest() {
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    fs::write(plugins.join("10-deep.wasm"), deep_tree_module(20)).unwrap();
    fs::write(plugins.join("10-deep.wasm.toml"), "state = true\n").unwrap();
    for round in 0..2 {
        as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
            .assert()
            .success();
        assert!(state.join("qemu/web1/10-deep.wasm").join("d".repeat(255)).is_dir());
        let release = as_libvirt_xml(&hooks, ["web1", "release", "end", "-"])
            .assert()
            .success();
        let note = fs::read_to_string(state.join(".kept/qemu/web1/10-deep.wasm")).unwrap_or_default();
        assert!(
            !state.join("qemu/web1").exists() && note.is_empty(),
            "round {round}: the module's tree outlived its guest (note: {note:.200}; stderr: {:.300})",
            stderr_of(&release)
        );
    }
}

// ---------------------------------------------------------------------------------
// FAILS: removal held a descriptor per level (std's `remove_dir_all`): a stateful plugin
// whose tree is deeper than the dispatcher's open-file limit (300 levels, under a limit
// of 64; libvirtd's own soft limit is commonly 1024) keeps its state forever, each
// `release end` failing with EMFILE.
// ---------------------------------------------------------------------------------
#[test]
fn a_tree_deeper_than_the_open_file_limit_outlives_its_guest() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIPPED: util-linux `prlimit` is not installed");
        return;
    }
    let tmp0 = tempfile::tempdir().unwrap();
    let state = tmp0.path().join("state");
    let (_tmp, hooks, plugins) = installed_with_state(&state);
    stateful_plugin(
        &plugins,
        "10-deep",
        "if [ \"$2\" = prepare ]; then cd \"$VIRT_HOOK_STATE\" || exit 8; i=0; \
         while [ $i -lt 300 ]; do mkdir d && cd d || exit 7; i=$((i+1)); done; echo x > f; fi",
        0,
    );
    as_libvirt_xml(&hooks, ["web1", "prepare", "begin", "-"])
        .assert()
        .success();
    let bottom = state.join("qemu/web1/10-deep").join("d/".repeat(300)).join("f");
    assert!(bottom.exists());
    let mut release = assert_cmd::Command::new("prlimit");
    common::libvirt_env(&mut release)
        .arg("--nofile=64")
        .arg("--")
        .arg(hooks.join("qemu"))
        .args(["web1", "release", "end", "-"])
        .write_stdin("<domain/>\n");
    let release = release.assert().success();
    assert!(
        !state.join("qemu/web1").exists(),
        "a tree deeper than the open-file limit outlived its guest: {:.300}",
        stderr_of(&release)
    );
}
