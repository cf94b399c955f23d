//! Per-guest state through the dispatcher: what libvirt's calls of hookctl give a plugin
//! with `state = true`, what they never give the others, and what `list` and `simulate`
//! do with it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{as_libvirt_xml, c_plugin, hookctl, installed, script};

/// An installed hooks dir whose dispatcher keeps state under `<tmp>/state`.
fn with_state() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let state = tmp.path().join("state");
    let config = plugins.join("hookctl.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!("state = \"{}\"\n", state.display()));
    fs::write(&config, text).unwrap();
    (tmp, hooks, plugins, state)
}

/// A plugin that records `op subop` in its state dir, and writes where that was (or
/// `unset`) to `<tmp>/<name>.where`.
fn recorder(tmp: &Path, plugins: &Path, name: &str, stateful: bool, release_exit: i32) {
    let whereto = tmp.join(format!("{name}.where"));
    script(
        &plugins.join(name),
        &format!(
            "#!/bin/sh\ncat > /dev/null\necho \"${{VIRT_HOOK_STATE-unset}}\" > '{}'\n\
             [ -n \"${{VIRT_HOOK_STATE-}}\" ] && echo \"$2 $3\" >> \"$VIRT_HOOK_STATE/seen\"\n\
             [ \"$2\" = release ] && exit {release_exit}\nexit 0\n",
            whereto.display()
        ),
    );
    if stateful {
        fs::write(plugins.join(format!("{name}.toml")), "state = true\n").unwrap();
    }
}

fn audit_lines(tmp: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(tmp.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_guests_state_lives_from_prepare_until_after_release() {
    let (tmp, hooks, plugins, state) = with_state();
    recorder(tmp.path(), &plugins, "10-fw", true, 0);
    let dir = state.join("qemu/web1/10-fw");
    for [op, subop] in [["prepare", "begin"], ["start", "begin"], ["started", "begin"]] {
        as_libvirt_xml(&hooks, ["web1", op, subop, "-"]).assert().success();
    }
    assert_eq!(
        fs::read_to_string(dir.join("seen")).unwrap(),
        "prepare begin\nstart begin\nstarted begin\n"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("10-fw.where")).unwrap().trim_end(),
        dir.to_str().unwrap()
    );
    as_libvirt_xml(&hooks, ["web1", "stopped", "end", "-"])
        .assert()
        .success();
    assert!(dir.join("seen").exists(), "stopped is not the last event");
    as_libvirt_xml(&hooks, ["web1", "release", "end", "-"])
        .assert()
        .success();
    assert!(!state.join("qemu/web1").exists(), "state outlived release");
    assert!(audit_lines(tmp.path()).iter().all(|l| l.get("state_kept").is_none()));
}

#[test]
fn a_plugin_without_state_never_sees_a_state_variable_even_if_the_caller_had_one() {
    let (tmp, hooks, plugins, state) = with_state();
    recorder(tmp.path(), &plugins, "10-plain", false, 0);
    recorder(tmp.path(), &plugins, "20-stateful", true, 0);
    let decoy = tmp.path().join("decoy");
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .env("VIRT_HOOK_STATE", &decoy)
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(tmp.path().join("10-plain.where")).unwrap(),
        "unset\n"
    );
    let stateful = fs::read_to_string(tmp.path().join("20-stateful.where")).unwrap();
    assert_eq!(stateful.trim_end(), state.join("qemu/vm/20-stateful").to_str().unwrap());
    assert!(!decoy.exists());
}

#[test]
fn a_failed_release_keeps_the_state_and_list_and_the_audit_log_name_it() {
    let (tmp, hooks, plugins, state) = with_state();
    recorder(tmp.path(), &plugins, "10-fw", true, 4);
    as_libvirt_xml(&hooks, ["db", "start", "begin", "-"]).assert().success();
    // libvirt ignores a failed release; hookctl reports it (exit 1) and keeps the state.
    as_libvirt_xml(&hooks, ["db", "release", "end", "-"]).assert().failure();
    let kept = state.join("qemu/db/10-fw");
    assert!(kept.join("seen").exists());
    let last = audit_lines(tmp.path()).pop().unwrap();
    assert_eq!(last["state_kept"][0], kept.to_str().unwrap(), "{last}");
    let out = hookctl(&hooks, &["list", "qemu"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!(
            "state KEPT: {} (10-fw for db): release end failed",
            kept.display()
        )),
        "{text}"
    );
    let out = hookctl(&hooks, &["list", "--json", "qemu"]).assert().success();
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find_map(|l| l.get("state"))
        .expect("a listing names the state");
    assert_eq!(listed[0]["object"], "db");
    assert!(
        listed[0]["kept"].as_str().unwrap().contains("exit status 4"),
        "{listed}"
    );
    // Fixed, the next lifecycle ends cleanly and takes the kept directory with it.
    recorder(tmp.path(), &plugins, "10-fw", true, 0);
    as_libvirt_xml(&hooks, ["db", "start", "begin", "-"]).assert().success();
    as_libvirt_xml(&hooks, ["db", "release", "end", "-"]).assert().success();
    assert!(!state.join("qemu/db").exists());
    let text = hookctl(&hooks, &["list", "qemu"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&text);
    assert!(!text.contains("state KEPT") && !text.contains("state: "), "{text}");
}

#[test]
fn a_state_root_others_can_write_to_fails_the_stateful_plugin_loudly() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, hooks, plugins, _) = installed_with_state_under("open");
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    recorder(tmp.path(), &plugins, "10-fw", true, 0);
    let out = as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("10-fw") && stderr.contains("refused"), "{stderr}");
    assert!(!tmp.path().join("10-fw.where").exists(), "the plugin was not called");
    assert!(!open.join("state").exists());
}

fn installed_with_state_under(sub: &str) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (tmp, hooks, plugins) = installed();
    let state = tmp.path().join(sub).join("state");
    let config = plugins.join("hookctl.toml");
    let text = fs::read_to_string(&config).unwrap() + &format!("state = \"{}\"\n", state.display());
    fs::write(&config, text).unwrap();
    (tmp, hooks, plugins, state)
}

#[test]
fn simulate_never_touches_the_real_state_nor_the_audit_log() {
    let (tmp, hooks, plugins, state) = with_state();
    recorder(tmp.path(), &plugins, "10-fw", true, 0);
    // A running guest's real state.
    as_libvirt_xml(&hooks, ["web1", "start", "begin", "-"])
        .assert()
        .success();
    let real = state.join("qemu/web1/10-fw/seen");
    let before = fs::read_to_string(&real).unwrap();
    let lines = audit_lines(tmp.path()).len();
    let xml = tmp.path().join("domain.xml");
    fs::write(&xml, "<domain/>\n").unwrap();
    for scenario in ["start", "stop"] {
        hookctl(
            &hooks,
            &["simulate", "qemu", scenario, "web1", "--input", xml.to_str().unwrap()],
        )
        .assert()
        .success();
        let used = fs::read_to_string(tmp.path().join("10-fw.where")).unwrap();
        assert!(!used.starts_with(state.to_str().unwrap()), "simulate used {used}");
        assert!(!Path::new(used.trim_end()).exists(), "its temporary state is gone");
    }
    assert_eq!(fs::read_to_string(&real).unwrap(), before, "the real state was touched");
    assert_eq!(audit_lines(tmp.path()).len(), lines, "simulated events were audited");

    // --state keeps it across runs, so start then stop is a whole lifecycle.
    let kept = tmp.path().join("sim");
    let sim = kept.to_str().unwrap();
    hookctl(&hooks, &["simulate", "qemu", "start", "vm", "--state", sim])
        .assert()
        .success();
    let seen = kept.join("qemu/vm/10-fw/seen");
    assert_eq!(
        fs::read_to_string(&seen).unwrap(),
        "prepare begin\nstart begin\nstarted begin\n"
    );
    hookctl(&hooks, &["simulate", "qemu", "stop", "vm", "--state", sim])
        .assert()
        .success();
    assert!(!kept.join("qemu/vm").exists());
    // The real root is refused as a simulation's, however it is spelled.
    let link = tmp.path().join("link-to-state");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let dotted = tmp.path().join("sim/../state/");
    for spelling in [state.clone(), link, dotted] {
        let args = [
            "simulate",
            "qemu",
            "stop",
            "web1",
            "--state",
            spelling.to_str().unwrap(),
        ];
        let out = hookctl(&hooks, &args).assert().code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        assert!(
            stderr.contains("real guests' state"),
            "{}: {stderr}",
            spelling.display()
        );
    }
    assert_eq!(fs::read_to_string(&real).unwrap(), before);
}

#[test]
fn simulate_knows_another_copy_of_hookctl_as_the_dispatcher() {
    let (tmp, hooks, plugins, state) = with_state();
    recorder(tmp.path(), &plugins, "10-fw", true, 0);
    // The hook is another hookctl binary (the installed one, while a build simulates).
    let copy = tmp.path().join("bin/hookctl");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::copy(common::exe(), &copy).unwrap();
    fs::remove_file(hooks.join("qemu")).unwrap();
    std::os::unix::fs::symlink(&copy, hooks.join("qemu")).unwrap();
    hookctl(&hooks, &["simulate", "qemu", "start", "web1"])
        .assert()
        .success();
    let used = fs::read_to_string(tmp.path().join("10-fw.where")).unwrap();
    assert!(
        !used.starts_with(state.to_str().unwrap()),
        "simulate used the real state: {used}"
    );
    assert!(!state.exists());
    assert!(audit_lines(tmp.path()).is_empty(), "the copy ran as the dispatcher");
}

#[test]
fn a_native_plugin_finds_its_state_dir_in_the_host_environment() {
    let (tmp, hooks, plugins, state) = with_state();
    let so = plugins.join("10-native.so");
    c_plugin(
        tmp.path(),
        &so,
        "extern char *getenv(const char *); extern int mkdir(const char *, unsigned int);\n\
         const char *dir = getenv(VIRT_HOOK_STATE_ENV); char path[4096];\n\
         if (!dir || strlen(dir) > 4000) return 7;\n\
         strcpy(path, dir); strcat(path, \"/made-by-native\");\n\
         return mkdir(path, 0700) == 0 ? 0 : 8;",
    );
    fs::write(plugins.join("10-native.so.toml"), "state = true\n").unwrap();
    as_libvirt_xml(&hooks, ["vm", "prepare", "begin", "-"])
        .assert()
        .success();
    assert!(state.join("qemu/vm/10-native.so/made-by-native").is_dir());
    // Without `state = true` the host's environment has no such variable: exit 7.
    fs::remove_file(plugins.join("10-native.so.toml")).unwrap();
    let out = as_libvirt_xml(&hooks, ["vm2", "prepare", "begin", "-"])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains("exit status 7"), "{stderr}");
}

#[test]
fn the_port_forward_example_removes_exactly_what_it_added_whatever_the_config_says_by_then() {
    let (tmp, hooks, plugins, state) = with_state();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/port-forward");
    for file in ["port-forward", "port-forward.toml"] {
        fs::copy(example.join(file), plugins.join(file)).unwrap();
    }
    let cmds = tmp.path().join("cmds");
    let conf = fs::read_to_string(example.join("port-forward.conf")).unwrap();
    let conf: String = conf
        .lines()
        .map(|l| match l.starts_with("dry-run ") {
            true => format!("dry-run {}\n", cmds.display()),
            false => format!("{l}\n"),
        })
        .collect();
    fs::write(hooks.join("port-forward.conf"), &conf).unwrap();
    as_libvirt_xml(&hooks, ["demo", "start", "begin", "-"])
        .assert()
        .success();
    let added = fs::read_to_string(&cmds).unwrap();
    assert_eq!(added.lines().filter(|l| l.contains(" -I ")).count(), 4, "{added}");
    assert!(state.join("qemu/demo/port-forward/rules").exists());
    // The operator drops a forward while the guest runs: release still undoes all four.
    let edited: String = conf
        .lines()
        .filter(|l| !l.contains("8080"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(hooks.join("port-forward.conf"), edited).unwrap();
    as_libvirt_xml(&hooks, ["demo", "release", "end", "-"])
        .assert()
        .success();
    let all = fs::read_to_string(&cmds).unwrap();
    let deleted: Vec<&str> = all.lines().filter(|l| l.contains(" -D ")).collect();
    let expected: Vec<String> = added.lines().map(|l| l.replace(" -I ", " -D ")).collect();
    assert_eq!(deleted, expected);
    assert!(!state.join("qemu/demo").exists());
    // A guest the config does not name gets nothing and keeps nothing.
    as_libvirt_xml(&hooks, ["other", "start", "begin", "-"])
        .assert()
        .success();
    as_libvirt_xml(&hooks, ["other", "release", "end", "-"])
        .assert()
        .success();
    assert_eq!(fs::read_to_string(&cmds).unwrap(), all);
}

#[test]
fn check_warns_where_state_settings_do_less_than_they_seem() {
    let (tmp, hooks, plugins, _state) = with_state();
    // In libvirt's own layout: libvirt gives it no state.
    let legacy = hooks.join("qemu.d/10-legacy");
    script(&legacy, "#!/bin/sh\nexit 0\n");
    fs::write(hooks.join("qemu.d/10-legacy.toml"), "state = true\n").unwrap();
    // A cap an exec plugin does not get, and a match that never sees `release end`.
    recorder(tmp.path(), &plugins, "20-capped", true, 0);
    fs::write(plugins.join("20-capped.toml"), "state = true\nstate_max = 4096\n").unwrap();
    recorder(tmp.path(), &plugins, "30-start-only", true, 0);
    fs::write(
        plugins.join("30-start-only.toml"),
        "state = true\n[match]\nops = [\"start\"]\n",
    )
    .unwrap();
    recorder(tmp.path(), &plugins, "40-fine", true, 0);
    fs::write(
        plugins.join("40-fine.toml"),
        "state = true\n[match]\nops = [\"start\", \"rel*\"]\n",
    )
    .unwrap();
    let out = hookctl(&hooks, &["check", "qemu"]).assert().success();
    // Findings are on stdout (`check 2>/dev/null | grep warning`).
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        stdout.contains("10-legacy: state = true in libvirt's qemu.d/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("20-capped: state_max caps WASM modules only"),
        "{stdout}"
    );
    assert!(
        stdout.contains("30-start-only: state = true, but its [match] leaves out `release end`"),
        "{stdout}"
    );
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("warning") && l.contains("40-fine")),
        "{stdout}"
    );
}
