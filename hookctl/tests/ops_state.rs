//! Plugins' per-object state handled by operators (issue 20, items 2 and 6): `hookctl
//! state` lists it, `state clear` removes it (a live one only with `--force`), and
//! `uninstall` and the package's `prerm` refuse while an object holds live state.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use predicates::prelude::*;
use predicates::str::contains;

mod common;
use common::*;

/// A hooks dir with hookctl installed for qemu, its state under `<tmp>/state`, and a
/// plugin `10-reserve` with `state = true` that fails `release end` of guests named
/// `bad*` (so their state is kept).
fn with_stateful_plugin() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let state = tmp.path().join("state");
    let toml = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&toml).unwrap();
    fs::write(&toml, format!("{text}state = \"{}\"\n", state.display())).unwrap();
    script(
        &plugins.join("10-reserve"),
        "#!/bin/sh\ncat >/dev/null\n[ -n \"${VIRT_HOOK_STATE-}\" ] || exit 0\necho \"$2\" >> \"$VIRT_HOOK_STATE/seen\"\n\
         case \"$1 $2\" in bad*' release') echo 'debug: undoing' >&2; echo '<3>could not free 512 hugepages' >&2; exit 1;; esac\nexit 0\n",
    );
    fs::write(plugins.join("10-reserve.toml"), "state = true\n").unwrap();
    (tmp, hooks, plugins, state)
}

fn start(hooks: &Path, guest: &str) {
    as_libvirt_xml(hooks, [guest, "prepare", "begin", "-"])
        .assert()
        .success();
}

fn release(hooks: &Path, guest: &str) -> assert_cmd::assert::Assert {
    as_libvirt_xml(hooks, [guest, "release", "end", "-"]).assert()
}

#[test]
fn state_lists_live_and_kept_state_with_driver_object_plugin_age_and_note() {
    let (_tmp, hooks, _plugins, state) = with_stateful_plugin();
    hookctl(&hooks, &["state"])
        .assert()
        .success()
        .stdout(contains("no state"));
    start(&hooks, "web1");
    start(&hooks, "bad1");
    release(&hooks, "bad1").code(1);
    let out = hookctl(&hooks, &["state"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["DRIVER", "OBJECT", "PLUGIN", "STATE", "AGE", "NOTE"],
        "{text}"
    );
    assert_eq!(rows[1][..4], ["qemu", "bad1", "10-reserve", "KEPT"], "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .contains("release end failed: exit status 1: could not free 512 hugepages"),
        "{text}"
    );
    assert_eq!(rows[2][..4], ["qemu", "web1", "10-reserve", "live"], "{text}");
    assert!(text.contains(&format!("(under {})", state.display())), "{text}");
    let out = hookctl(&hooks, &["state", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let web1 = &v["state"][1];
    assert_eq!(web1["object"], "web1");
    assert_eq!(web1["state"], "live");
    assert_eq!(web1["path"], state.join("qemu/web1/10-reserve").display().to_string());
    assert!(
        web1["age_secs"].as_u64().is_some() && web1["since"].is_string(),
        "{web1}"
    );
    assert!(v["state"][0]["note"].as_str().unwrap().contains("hugepages"));
    assert_eq!(v["unreadable"], serde_json::json!([]));
}

#[test]
fn state_clear_removes_kept_state_and_live_state_only_with_force() {
    let (_tmp, hooks, _plugins, state) = with_stateful_plugin();
    start(&hooks, "web1");
    start(&hooks, "bad1");
    release(&hooks, "bad1").code(1);
    hookctl(&hooks, &["state", "clear", "qemu", "bad1"])
        .assert()
        .success()
        .stdout(contains("removed").and(contains("bad1/10-reserve")));
    assert!(!state.join("qemu/bad1").exists());
    assert!(!state.join(".kept/qemu/bad1").exists(), "the note goes with it");
    // A live one: refused, named, with how to release it; nothing removed.
    hookctl(&hooks, &["state", "clear", "qemu", "web1", "10-reserve"])
        .assert()
        .code(1)
        .stderr(contains("live state of qemu web1 (10-reserve)").and(contains("virsh destroy web1")));
    assert!(state.join("qemu/web1/10-reserve/seen").exists());
    hookctl(&hooks, &["state", "clear", "qemu", "web1", "--force"])
        .assert()
        .success()
        .stdout(contains("it was live"));
    assert!(!state.join("qemu/web1").exists());
    hookctl(&hooks, &["state", "clear", "qemu", "web1"])
        .assert()
        .code(2)
        .stderr(contains("no state for qemu web1"));
}

/// `state = 5` said "no plugins dir in …: no dispatcher keeps state here" on stdout.
#[test]
fn state_with_an_unusable_state_key_says_it_cannot_list_not_that_there_is_none() {
    let (_tmp, hooks, plugins, _state) = with_stateful_plugin();
    let toml = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&toml).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("state"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&toml, format!("{text}state = 5\n")).unwrap();
    hookctl(&hooks, &["state"])
        .assert()
        .code(1)
        .stdout(contains("state not listed").and(contains("no plugins dir").not()))
        .stderr(contains("hookctl.toml:2").and(contains("state")));
}

/// A guest's name, or a level swapped for a link, never takes `clear` out of the root.
#[test]
fn state_clear_never_leaves_the_root() {
    let (tmp, hooks, _plugins, state) = with_stateful_plugin();
    start(&hooks, "web1");
    let victim = tmp.path().join("victim");
    fs::create_dir_all(victim.join("10-reserve")).unwrap();
    std::os::unix::fs::symlink(&victim, state.join("qemu/evil")).unwrap();
    for object in ["evil", "..", "../qemu", "/etc"] {
        let _ = hookctl(&hooks, &["state", "clear", "qemu", object, "--force"]).output();
    }
    assert!(victim.join("10-reserve").exists(), "removed through a planted link");
    assert!(state.join("qemu/web1/10-reserve").exists());
    // A state root others may write to is not read, and says so.
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let toml = hooks.join("qemu.plugins/hookctl.toml");
    fs::write(&toml, format!("state = \"{}/state\"\n", open.display())).unwrap();
    hookctl(&hooks, &["state"])
        .assert()
        .code(1)
        .stderr(contains("qemu:").and(contains("writable by others")));
}

#[test]
fn uninstall_refuses_while_a_guest_holds_live_state_and_names_it() {
    let (_tmp, hooks, _plugins, state) = with_stateful_plugin();
    start(&hooks, "web1");
    hookctl(&hooks, &["uninstall", "qemu"]).assert().code(1).stderr(
        contains("not uninstalling")
            .and(contains("qemu web1: 10-reserve"))
            .and(contains("virsh destroy web1"))
            .and(contains("--force")),
    );
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_ok(), "the hook was removed");
    // Kept state does not hold it back: only what a release is still to reach.
    release(&hooks, "web1").success();
    start(&hooks, "bad1");
    release(&hooks, "bad1").code(1);
    assert!(state.join("qemu/bad1").exists());
    hookctl(&hooks, &["uninstall", "qemu"]).assert().success();
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_err());
}

#[test]
fn uninstall_force_goes_on_and_says_what_is_left_behind() {
    let (_tmp, hooks, _plugins, _state) = with_stateful_plugin();
    start(&hooks, "web1");
    hookctl(&hooks, &["uninstall", "--force", "qemu"])
        .assert()
        .success()
        .stderr(contains("warning").and(contains("qemu web1: 10-reserve")));
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_err());
}

#[test]
fn uninstall_refuses_when_it_cannot_tell_which_objects_hold_state() {
    let (_tmp, hooks, plugins, _state) = with_stateful_plugin();
    fs::write(plugins.join("hookctl.toml"), "state = \"relative/state\"\n").unwrap();
    hookctl(&hooks, &["uninstall", "qemu"]).assert().code(1).stderr(
        contains("cannot tell which objects hold state")
            .and(contains("absolute path"))
            // It said "Release them first" with no object to release.
            .and(contains("Release them first").not())
            .and(contains("hookctl check")),
    );
    assert!(fs::symlink_metadata(hooks.join("qemu")).is_ok());
}

fn prerm(hooks: &Path, bin: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/debian/prerm");
    Std::new("/bin/sh")
        .arg(script)
        .arg("remove")
        .env("HOOKCTL_HOOKS_DIR", hooks)
        .env("HOOKCTL_BIN", bin)
        .env("VIRT_HOOKS_WASM_CACHE", "off")
        .output()
        .unwrap()
}

/// dpkg aborts a removal whose `prerm` fails: the package and its hook stay.
#[test]
fn prerm_fails_the_removal_while_state_is_live_and_keeps_the_hook() {
    let (_tmp, hooks, _plugins, _state) = with_stateful_plugin();
    script(&hooks.join("qemu.pre-hookctl"), "#!/bin/sh\nexit 0\n");
    start(&hooks, "web1");
    let out = prerm(&hooks, &exe());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("qemu web1: 10-reserve") && stderr.contains("not removing the package"),
        "{stderr}"
    );
    assert!(stderr.contains("hookctl uninstall --force qemu"), "{stderr}");
    assert_eq!(fs::read_link(hooks.join("qemu")).unwrap(), exe());
    // Released: the removal goes through and the saved hook is back.
    release(&hooks, "web1").success();
    let out = prerm(&hooks, &exe());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fs::symlink_metadata(hooks.join("qemu")).unwrap().is_file());
    assert!(!hooks.join("qemu.pre-hookctl").exists());
}

/// A hookctl that cannot run at all leaves no dangling link behind.
#[test]
fn prerm_removes_the_link_of_a_hookctl_that_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let broken = tmp.path().join("bin/hookctl");
    script(&broken, "#!/bin/sh\nexit 127\n");
    fs::create_dir_all(&hooks).unwrap();
    std::os::unix::fs::symlink(&broken, hooks.join("qemu")).unwrap();
    script(&hooks.join("qemu.pre-hookctl"), "#!/bin/sh\nexit 0\n");
    let out = prerm(&hooks, &broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removing") && stderr.contains("by hand"), "{stderr}");
    assert!(
        fs::symlink_metadata(hooks.join("qemu")).unwrap().is_file(),
        "the saved hook is back"
    );
}

/// libvirt runs `restore begin` (and `migrate begin`) before it has the guest, and a
/// refusal there is followed by no `release`: what a plugin recorded must not stay
/// "live" for ever (it held `uninstall` and `dpkg -r` back).
#[test]
fn a_refused_restore_leaves_no_live_state_and_spares_a_running_namesakes() {
    let (_tmp, hooks, plugins, state) = with_stateful_plugin();
    script(
        &plugins.join("20-refuse"),
        "#!/bin/sh\ncat >/dev/null\ncase \"$1 $2\" in nope*' restore') echo 'no restores here' >&2; exit 1;; esac\n",
    );
    // A stateful plugin that records nothing: its empty directory just goes.
    script(&plugins.join("05-quiet"), "#!/bin/sh\ncat >/dev/null\n");
    fs::write(plugins.join("05-quiet.toml"), "state = true\n").unwrap();
    as_libvirt_xml(&hooks, ["nope1", "restore", "begin", "-"])
        .assert()
        .code(1)
        .stderr(contains("no restores here").and(contains("kept the state directory")));
    assert!(!state.join("qemu/nope1/05-quiet").exists());
    assert!(state.join("qemu/nope1/10-reserve/seen").exists());
    // A guest of the same name that runs keeps its live state through the refusal.
    start(&hooks, "nope2");
    as_libvirt_xml(&hooks, ["nope2", "restore", "begin", "-"])
        .assert()
        .code(1);
    let out = hookctl(&hooks, &["state"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let row = |object: &str, plugin: &str| {
        text.lines()
            .find(|l| l.split_whitespace().take(3).eq(["qemu", object, plugin]))
            .unwrap_or_else(|| panic!("no row for {object} {plugin} in:\n{text}"))
            .to_owned()
    };
    let refused = row("nope1", "10-reserve");
    assert!(
        refused.contains(" KEPT ") && refused.contains("no last event"),
        "{refused}"
    );
    assert!(row("nope2", "10-reserve").contains(" live "), "{text}");
    assert!(row("nope2", "05-quiet").contains(" live "), "{text}");
    // Only the running guest holds uninstall back.
    hookctl(&hooks, &["uninstall", "qemu"])
        .assert()
        .code(1)
        .stderr(contains("qemu nope2").and(contains("nope1").not()));
    release(&hooks, "nope2").success();
    hookctl(&hooks, &["uninstall", "qemu"]).assert().success();
}

/// The fourth trial fired `release` by hand without the guest's XML: the hugepages
/// plugin (`[match] xpath`) did not run, and its record of reserved pages was removed
/// with the pages still reserved. A plugin that did not run at the last event keeps
/// what it recorded, and the row says so; an empty directory still goes.
#[test]
fn a_plugin_that_did_not_run_at_the_last_event_keeps_what_it_recorded() {
    let (_tmp, hooks, plugins, state) = with_stateful_plugin();
    fs::write(
        plugins.join("10-reserve.toml"),
        "state = true\n[match]\nxpath = [\"/domain/memoryBacking/hugepages\"]\n",
    )
    .unwrap();
    script(&plugins.join("20-empty"), "#!/bin/sh\ncat >/dev/null\n");
    fs::write(
        plugins.join("20-empty.toml"),
        "state = true\n[match]\nops = [\"prepare\"]\n",
    )
    .unwrap();
    let xml = "<domain><name>db1</name><memoryBacking><hugepages/></memoryBacking></domain>";
    as_libvirt(&hooks, ["db1", "prepare", "begin", "-"])
        .write_stdin(xml)
        .assert()
        .success();
    assert!(state.join("qemu/db1/10-reserve/seen").exists());
    assert!(state.join("qemu/db1/20-empty").exists());
    // No document: 10-reserve's xpath cannot take the event.
    as_libvirt(&hooks, ["db1", "release", "end", "-"])
        .write_stdin("")
        .assert()
        .stderr(contains("kept the state directory").and(contains("10-reserve")));
    assert!(!state.join("qemu/db1/20-empty").exists(), "an empty directory is kept");
    assert_kept(&hooks, &state.join("qemu/db1/10-reserve/seen"), "did not run at it");
}

/// The fifth trial removed a plugin's sidecar (`state = true`) while its guest ran: the
/// plugin then ran at release without its record, exited 0 ("nothing to undo"), and the
/// record was deleted. It is kept, saying why.
#[test]
fn a_plugin_whose_settings_dropped_state_keeps_the_record_it_no_longer_sees() {
    let (_tmp, hooks, plugins, state) = with_stateful_plugin();
    start(&hooks, "web1");
    assert!(state.join("qemu/web1/10-reserve/seen").exists());
    fs::remove_file(plugins.join("10-reserve.toml")).unwrap();
    release(&hooks, "web1").stderr(contains("kept the state directory"));
    assert_kept(
        &hooks,
        &state.join("qemu/web1/10-reserve/seen"),
        "no longer say `state = true`",
    );
}

/// The record at `seen` is still there, and `hookctl state` lists it KEPT with `note`.
fn assert_kept(hooks: &Path, seen: &Path, note: &str) {
    assert!(seen.exists(), "the record was deleted: {}", seen.display());
    hookctl(hooks, &["state"])
        .assert()
        .success()
        .stdout(contains("KEPT").and(contains(note)));
}

/// A refused network start sends no `stopped end`: a stateful plugin that ran before
/// the refusal left LIVE state for a network that is down (fifth trial).
#[test]
fn a_refused_network_start_leaves_no_live_state() {
    let (tmp, hooks, _plugins, state) = with_stateful_plugin();
    let net = hooks.join("network.plugins");
    fs::create_dir_all(&net).unwrap();
    std::os::unix::fs::symlink(exe(), hooks.join("network")).unwrap();
    fs::write(
        net.join("hookctl.toml"),
        format!(
            "log = \"{0}/audit.jsonl\"\nstate = \"{0}/state\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    script(
        &net.join("30-nat"),
        "#!/bin/sh\ncat >/dev/null\n[ -n \"${VIRT_HOOK_STATE-}\" ] && echo rule > \"$VIRT_HOOK_STATE/rule\"\nexit 0\n",
    );
    fs::write(net.join("30-nat.toml"), "state = true\n").unwrap();
    script(
        &net.join("40-refuse"),
        "#!/bin/sh\ncat >/dev/null\necho no >&2\nexit 1\n",
    );
    as_libvirt_for(&hooks, "network", ["hknet", "start", "begin", "-"])
        .write_stdin("<hookData><network><name>hknet</name></network></hookData>")
        .assert()
        .code(1);
    assert!(state.join("network/hknet/30-nat/rule").exists());
    hookctl(&hooks, &["state"])
        .assert()
        .success()
        .stdout(contains("hknet").and(contains("KEPT")).and(contains(" live ").not()));
}

/// `hookctl run` fires libvirt's hook, the dispatcher, which says what it kept on a
/// stderr that `run` showed only when it failed: a release by hand kept a record and
/// printed nothing (sixth check).
#[test]
fn run_shows_what_the_dispatcher_kept() {
    let (_tmp, hooks, plugins, _state) = with_stateful_plugin();
    start(&hooks, "web1");
    fs::remove_file(plugins.join("10-reserve.toml")).unwrap();
    hookctl(&hooks, &["run", "qemu", "web1", "release", "end", "-"])
        .assert()
        .success()
        .stderr(contains("kept the state directory").and(contains("10-reserve")));
}

/// A recorded old root replaced by a link (moved to another disk): `uninstall` went
/// ahead saying "no state"; it cannot tell, and says so (sixth check).
#[test]
fn a_used_root_that_cannot_be_read_holds_uninstall_back() {
    let (tmp, hooks, plugins, state) = with_stateful_plugin();
    start(&hooks, "web1");
    release(&hooks, "web1").success();
    // The root moves elsewhere and a link takes its place; `state` names a new root.
    let moved = tmp.path().join("moved");
    fs::rename(&state, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &state).unwrap();
    let toml = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&toml).unwrap().replace("/state\"", "/state2\"");
    fs::write(&toml, text).unwrap();
    hookctl(&hooks, &["uninstall", "qemu"])
        .assert()
        .code(1)
        .stderr(contains("cannot be read"));
}

/// A stateful plugin that lost its execute bit while its guest ran: its record is kept,
/// and the note says it could not run (it said "no longer in … (set aside, renamed or
/// removed)").
#[test]
fn a_plugin_that_could_not_run_at_release_is_named_as_such() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, hooks, plugins, _state) = with_stateful_plugin();
    start(&hooks, "web1");
    fs::set_permissions(plugins.join("10-reserve"), fs::Permissions::from_mode(0o644)).unwrap();
    release(&hooks, "web1");
    hookctl(&hooks, &["state"])
        .assert()
        .success()
        .stdout(contains("could not run (not executable)").and(contains("no longer in").not()));
}

/// The dispatcher appends to `<hooks>/.<driver>.state-roots` as root: a link planted
/// there must never be written through, and must not fail the event.
#[test]
fn the_state_roots_record_is_never_written_through_a_link() {
    let (tmp, hooks, _plugins, _state) = with_stateful_plugin();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "untouched\n").unwrap();
    std::os::unix::fs::symlink(&victim, hooks.join(".qemu.state-roots")).unwrap();
    start(&hooks, "web1");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched\n");
    release(&hooks, "web1").success();
}
