//! The worked real-world plugins in `examples/plugins-real/`, run as an operator would
//! try them: copied into a hooks dir of their own with hookctl as the dispatcher, and
//! driven by `hookctl simulate`. Nothing here touches the host: the huge page pools are
//! files in a temporary directory.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{exe, script};

const GIB_OF_2M_PAGES: u64 = 512;

/// A hooks dir holding the hugepages example, its pools faked under `<tmp>/sys`, and the
/// guest XML the example ships.
struct Hugepages {
    tmp: tempfile::TempDir,
    hooks: PathBuf,
    pool: PathBuf,
    guest: PathBuf,
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins-real/hugepages")
}

/// The example installed as its README says; with `real`, hugepages.conf points at a
/// fake sysfs whose 2 MiB pool already holds `preset` pages (another user's).
fn hugepages(real: bool, preset: u64) -> Option<Hugepages> {
    if !["/usr/bin/flock", "/bin/flock"].iter().any(|p| Path::new(p).exists()) {
        eprintln!("SKIPPED: the hugepages example needs flock (util-linux), which is not installed here");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hooks = tmp.path().join("hooks");
    let plugins = hooks.join("qemu.plugins");
    fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(exe(), hooks.join("qemu")).unwrap();
    // The dispatcher's own settings, so that nothing falls back to the host's paths.
    fs::write(
        plugins.join("hookctl.toml"),
        format!(
            "log = \"{}\"\nstate = \"{}\"\n",
            tmp.path().join("audit.jsonl").display(),
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    let plugin = fs::read_to_string(example().join("hugepages")).unwrap();
    script(&plugins.join("hugepages"), &plugin);
    fs::copy(example().join("hugepages.toml"), plugins.join("hugepages.toml")).unwrap();
    let sys = tmp.path().join("sys");
    let pool = sys.join("hugepages-2048kB");
    fs::create_dir_all(&pool).unwrap();
    fs::write(pool.join("nr_hugepages"), format!("{preset}\n")).unwrap();
    let conf = fs::read_to_string(example().join("hugepages.conf")).unwrap();
    assert!(conf.contains("\n#sysfs "), "the shipped conf reserves nothing: {conf}");
    let conf = match real {
        true => conf.replace(
            "\n#sysfs /sys/kernel/mm/hugepages",
            &format!("\nsysfs {}", sys.display()),
        ),
        false => conf,
    };
    fs::write(hooks.join("hugepages.conf"), conf).unwrap();
    let guest = example().join("guest.xml");
    Some(Hugepages {
        tmp,
        hooks,
        pool,
        guest,
    })
}

impl Hugepages {
    /// `hookctl --hooks-dir HOOKS simulate qemu SCENARIO db1 --input XML --state <tmp>/sim --json`.
    fn simulate(&self, scenario: &str, xml: &Path) -> (bool, serde_json::Value, String) {
        let out = std::process::Command::new(exe())
            .env("PATH", "/usr/bin:/bin")
            .env("VIRT_HOOKS_WASM_CACHE", "off")
            .arg("--hooks-dir")
            .arg(&self.hooks)
            .args([
                "simulate",
                "qemu",
                scenario,
                "db1",
                "--json",
                "--libvirt",
                "9.0",
                "--input",
            ])
            .arg(xml)
            .arg("--state")
            .arg(self.sim())
            .output()
            .unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "simulate printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            out.status.success(),
            report,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn sim(&self) -> PathBuf {
        self.tmp.path().join("sim")
    }

    /// db1's state directory of the plugin.
    fn state(&self) -> PathBuf {
        self.sim().join("qemu/db1/hugepages")
    }

    fn pages(&self) -> u64 {
        let text = fs::read_to_string(self.pool.join("nr_hugepages")).unwrap();
        text.trim().parse().unwrap()
    }

    /// The example's guest with `from` replaced by `to`, written to `<tmp>/<name>.xml`.
    fn guest_with(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let xml = fs::read_to_string(&self.guest).unwrap();
        assert!(xml.contains(from), "{from} is not in the example guest");
        let path = self.tmp.path().join(format!("{name}.xml"));
        fs::write(&path, xml.replace(from, to)).unwrap();
        path
    }
}

/// What the plugin wrote on stderr at each step where it ran: (op, stderr).
fn plugin_runs(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut runs = Vec::new();
    for step in report["steps"].as_array().unwrap() {
        for hook in step["report"]["hooks"].as_array().unwrap() {
            if hook["name"].as_str().unwrap().ends_with("/hugepages") {
                let op = step["report"]["op"].as_str().unwrap().to_owned();
                runs.push((op, hook["stderr"].as_str().unwrap_or_default().to_owned()));
            }
        }
    }
    runs
}

#[test]
fn hugepages_reserves_at_prepare_and_release_returns_exactly_what_it_recorded() {
    let Some(h) = hugepages(true, 10) else { return };
    let (ok, report, stderr) = h.simulate("start", &h.guest);
    assert!(ok, "{stderr}\n{report}");
    // 4 GiB of 2 MiB pages, on top of the 10 that were there.
    assert_eq!(h.pages(), 10 + 4 * GIB_OF_2M_PAGES);
    let record = fs::read_to_string(h.state().join("reserved")).unwrap();
    assert_eq!(
        record,
        format!("reserved {} {}\n", h.pool.display(), 4 * GIB_OF_2M_PAGES)
    );
    let runs = plugin_runs(&report);
    assert_eq!(runs.len(), 1, "called at prepare only: {runs:?}");
    assert!(runs[0].1.contains("reserved 2048 pages of 2048 KiB"), "{runs:?}");

    // The guest's definition grows while it runs: release returns what prepare took.
    let bigger = h.guest_with("bigger", "<memory unit='KiB'>4194304<", "<memory unit='KiB'>8388608<");
    let (ok, report, stderr) = h.simulate("stop", &bigger);
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(h.pages(), 10);
    assert!(!h.sim().join("qemu/db1").exists(), "the state goes after release end");
    let runs = plugin_runs(&report);
    assert!(runs[0].1.contains("returned 2048 pages"), "{runs:?}");
}

#[test]
fn as_shipped_the_hugepages_example_writes_nothing_and_says_what_it_would() {
    let Some(h) = hugepages(false, 3) else { return };
    let (ok, report, stderr) = h.simulate("start", &h.guest);
    assert!(ok, "{stderr}\n{report}");
    let runs = plugin_runs(&report);
    assert!(
        runs[0]
            .1
            .contains("dry run (hugepages.conf has no sysfs line): would add 2048 pages to /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages for db1"),
        "{runs:?}"
    );
    let record = fs::read_to_string(h.state().join("reserved")).unwrap();
    assert_eq!(record, "dry-run /sys/kernel/mm/hugepages/hugepages-2048kB 2048\n");
    // Switched to real pools while the guest runs: its release still writes nothing,
    // since what it recorded was a dry run.
    let conf = h.hooks.join("hugepages.conf");
    let real = fs::read_to_string(&conf).unwrap().replace(
        "\n#sysfs /sys/kernel/mm/hugepages",
        &format!("\nsysfs {}", h.pool.parent().unwrap().display()),
    );
    fs::write(&conf, real).unwrap();
    let (ok, report, stderr) = h.simulate("stop", &h.guest);
    assert!(ok, "{stderr}\n{report}");
    assert!(plugin_runs(&report)[0].1.contains("dry run: would remove 2048 pages"));
    assert_eq!(h.pages(), 3, "the fake pool was never the dry run's");
    assert!(!h.sim().join("qemu/db1").exists());
}

#[test]
fn hugepages_a_guest_owner_writes_into_metadata_reserve_nothing() {
    let Some(h) = hugepages(true, 0) else { return };
    // No <memoryBacking> of its own; the owner's metadata names one, and a huge memory.
    let planted = "  <metadata>\n    <app:tuning xmlns:app=\"https://example.org/app/1\">\n      <memoryBacking>\n        <hugepages/>\n      </memoryBacking>\n      <memory unit='KiB'>67108864</memory>\n    </app:tuning>\n  </metadata>\n";
    let xml = fs::read_to_string(&h.guest).unwrap();
    let start = xml.find("  <memoryBacking>").unwrap();
    let end = xml.find("  </memoryBacking>\n").unwrap() + "  </memoryBacking>\n".len();
    let mut owned = xml;
    owned.replace_range(start..end, planted);
    let path = h.tmp.path().join("owned.xml");
    fs::write(&path, &owned).unwrap();
    let (ok, report, stderr) = h.simulate("start", &path);
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(plugin_runs(&report), vec![], "the xpath is anchored at /domain");
    assert_eq!(h.pages(), 0);

    // XML the matcher cannot evaluate (an undeclared prefix) calls every xpath plugin,
    // failing closed: the plugin's own reading of the XML must still find nothing.
    let unevaluable = owned.replace("<app:tuning xmlns:app=\"https://example.org/app/1\">", "<app:tuning>");
    fs::write(&path, &unevaluable).unwrap();
    let (ok, report, stderr) = h.simulate("start", &path);
    assert!(ok, "{stderr}\n{report}");
    let runs = plugin_runs(&report);
    assert_eq!(runs.len(), 1, "called, failing closed: {runs:?}");
    assert!(runs[0].1.contains("nothing to reserve"), "{runs:?}");
    assert_eq!(h.pages(), 0);
    assert!(!h.state().join("reserved").exists());
}

#[test]
fn a_guest_asking_for_more_huge_pages_than_the_host_allows_is_refused_and_nothing_is_reserved() {
    let Some(h) = hugepages(true, 7) else { return };
    for (memory, why) in [
        // 128 GiB: more than max-mib (64 GiB) lets one guest take.
        ("134217728", "hugepages.conf allows at most 65536 MiB per guest"),
        // Past what shell arithmetic holds.
        ("99999999999999999999999", "is not a size this plugin takes"),
    ] {
        let xml = h.guest_with(
            memory,
            "<memory unit='KiB'>4194304<",
            &format!("<memory unit='KiB'>{memory}<"),
        );
        let (ok, report, stderr) = h.simulate("start", &xml);
        assert!(!ok, "refused: {report}\n{stderr}");
        let verdict = &report["verdict"];
        assert_eq!(verdict["verdict"], "aborted", "{verdict}");
        assert!(
            verdict["hook"].as_str().unwrap().ends_with("qemu.plugins/hugepages"),
            "{verdict}"
        );
        assert!(verdict["message"].as_str().unwrap().contains(why), "{verdict}");
        assert_eq!(h.pages(), 7, "{memory}");
        assert!(
            !h.sim().join("qemu/db1").exists(),
            "the failed start's release cleared it"
        );
        assert!(!h.sim().join(".kept").join("qemu/db1").exists());
    }
}

#[test]
fn a_release_that_cannot_return_the_pages_keeps_the_record_and_the_next_start_heals_it() {
    let Some(h) = hugepages(true, 0) else { return };
    let (ok, report, stderr) = h.simulate("start", &h.guest);
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(h.pages(), 2048);
    // The pool is gone at release (say, a kernel without 2 MiB pages after an update).
    let moved = h.tmp.path().join("moved");
    fs::rename(&h.pool, &moved).unwrap();
    let (ok, report, stderr) = h.simulate("stop", &h.guest);
    assert!(ok, "a failed release does not fail the stop: {stderr}");
    let runs = plugin_runs(&report);
    assert!(runs[0].1.contains("does not exist"), "{runs:?}");
    assert!(h.state().join("reserved").exists(), "the record is kept");
    assert!(h.sim().join(".kept/qemu/db1/hugepages").exists(), "and listed as kept");
    // Back, and the guest starts again: the leftover is returned before reserving.
    fs::rename(&moved, &h.pool).unwrap();
    let (ok, report, stderr) = h.simulate("start", &h.guest);
    assert!(ok, "{stderr}\n{report}");
    assert_eq!(h.pages(), 2048, "not 4096: the earlier reservation went back first");
    let runs = plugin_runs(&report);
    assert!(runs[0].1.contains("returned 2048 pages"), "{runs:?}");
}

/// The keys a settings file's `struct File` (and `MatchFile`) declares in `source`.
fn declared_keys(source: &str, structs: &[&str]) -> Vec<String> {
    let mut keys = Vec::new();
    for name in structs {
        let start = source
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("no struct {name}"));
        let body = &source[start..];
        let body = &body[..body.find("\n}").unwrap()];
        let mut rename = None;
        for line in body.lines().skip(1).map(str::trim) {
            if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(str::to_owned);
            } else if let Some((field, _)) = line.split_once(':') {
                if !field.starts_with("//") && !field.starts_with('#') {
                    keys.push(rename.take().unwrap_or_else(|| field.trim().to_owned()));
                }
            }
        }
    }
    keys
}

#[test]
fn every_settings_key_is_in_the_man_page_and_the_guide() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
    let man = read("packaging/man/hookctl-settings.5");
    let guide = read("docs/settings.md");
    assert!(man.starts_with(".\\\"") && man.contains("\n.TH HOOKCTL-SETTINGS 5 "));
    let sidecar = declared_keys(&read("hooks-core/src/settings/sidecar.rs"), &["File", "MatchFile"]);
    // hookctl.toml is read key by key, from the list of keys it knows.
    let config = read("hookctl/src/config.rs");
    let list = config
        .lines()
        .find_map(|l| l.strip_prefix("const KEYS: "))
        .and_then(|l| l.split_once("= ["))
        .map(|(_, rest)| rest.trim_end_matches("];"))
        .expect("no `const KEYS` in hookctl/src/config.rs");
    let dispatcher: Vec<String> = list.split(',').map(|k| k.trim().trim_matches('"').to_owned()).collect();
    assert!(sidecar.contains(&"xpath".to_owned()) && dispatcher.contains(&"journal".to_owned()));
    for key in sidecar.iter().chain(&dispatcher) {
        let in_man = key == "match" && man.contains(".SS The [match] table")
            || [".BI \"", ".BR \"", ".B \""]
                .iter()
                .any(|m| man.contains(&format!("{m}{key} ")))
            || man.contains(&format!(".BR \"{key} = "));
        assert!(in_man, "hookctl-settings.5 does not document `{key}`");
        let in_guide = guide.contains(&format!("| `{key}` |"))
            || guide.contains(&format!("| `[match] {key}` |"))
            || key == "match" && guide.contains("[match]");
        assert!(in_guide, "docs/settings.md has no table row for `{key}`");
    }
}

#[test]
fn every_deb_asset_names_files_that_exist() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo: toml::Table = fs::read_to_string(manifest.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let assets = cargo["package"]["metadata"]["deb"]["assets"].as_array().unwrap();
    let mut shipped = Vec::new();
    for asset in assets {
        let source = match asset {
            toml::Value::Array(a) => a[0].as_str().unwrap(),
            toml::Value::Table(t) => t["source"].as_str().unwrap(),
            other => panic!("unexpected asset {other:?}"),
        };
        // Built or generated by packaging/build-deb.sh, not in the tree.
        if source.starts_with("target/") || source.contains("/generated/") {
            continue;
        }
        let pattern = manifest.join(source);
        let found: Vec<PathBuf> = glob::glob(pattern.to_str().unwrap())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!found.is_empty(), "deb asset {source} matches no file");
        shipped.extend(found);
    }
    // The guides go gzipped, from what build-deb.sh makes of docs/*.md.
    assert!(
        assets.iter().any(|a| a
            .as_array()
            .is_some_and(|a| a[0].as_str() == Some("target/release/deb-assets/docs/*.md.gz"))),
        "the package does not ship the guides under docs/"
    );
    for needed in [
        "../packaging/man/hookctl-settings.5",
        "../examples/plugins-real/hugepages/hugepages",
        "../examples/plugins-real/hugepages/hugepages.toml",
        "../examples/plugins-real/hugepages/hugepages.conf",
    ] {
        let needed = manifest.join(needed);
        assert!(
            shipped.contains(&needed),
            "the package does not ship {}",
            needed.display()
        );
    }
}
