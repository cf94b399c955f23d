//! `hookctl generate-assets DIR`: what the Debian package ships (packaging/build-deb.sh).

use std::collections::BTreeSet;
use std::fs;

use assert_cmd::Command;

/// The subcommands `hookctl --help` lists, without `help`, and theirs as `state-clear`.
fn visible_subcommands() -> BTreeSet<String> {
    let listed = |args: &[&str]| -> Vec<String> {
        let out = Command::cargo_bin("hookctl")
            .unwrap()
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let Some(commands) = help.split("Commands:\n").nth(1) else {
            return Vec::new();
        };
        commands
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(str::to_owned)
            .collect()
    };
    let mut all = BTreeSet::new();
    for sub in listed(&[]) {
        all.extend(listed(&[&sub]).into_iter().map(|inner| format!("{sub}-{inner}")));
        all.insert(sub);
    }
    all
}

#[test]
fn generate_assets_writes_a_man_page_per_visible_subcommand_and_three_completions() {
    let tmp = tempfile::tempdir().unwrap();
    Command::cargo_bin("hookctl")
        .unwrap()
        .arg("generate-assets")
        .arg(tmp.path())
        .assert()
        .success()
        .stdout("")
        .stderr("");

    let subcommands = visible_subcommands();
    assert!(
        subcommands.contains("run") && subcommands.contains("install"),
        "{subcommands:?}"
    );
    let mut expected: BTreeSet<String> = subcommands.iter().map(|s| format!("hookctl-{s}.1")).collect();
    expected.insert("hookctl.1".into());
    let pages: BTreeSet<String> = fs::read_dir(tmp.path().join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(pages, expected, "no page for the hidden generate-assets or for help");
    let run = fs::read_to_string(tmp.path().join("man/hookctl-run.1")).unwrap();
    assert!(run.contains(".TH hookctl-run 1") && run.contains(&format!("hookctl {}", env!("CARGO_PKG_VERSION"))));

    for name in ["hookctl.bash", "_hookctl", "hookctl.fish"] {
        let text = fs::read_to_string(tmp.path().join("completions").join(name)).unwrap();
        for sub in &subcommands {
            // A nested one (`state-clear`) is completed by its own name.
            let word = sub.split_once('-').map_or(sub.as_str(), |(_, inner)| inner);
            assert!(text.contains(word), "{name} does not complete {sub}");
        }
        assert!(!text.contains("generate-assets"), "{name} offers the hidden subcommand");
    }
}
