//! `hookctl state`: every object's plugin state, live and kept, under the state root of
//! each driver's dispatcher; `hookctl state clear` removes it. `uninstall` asks
//! [`live_state`] before it takes hookctl away.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde::Serialize;
use virt_hooks_core::state::{StateEntry, StateRoot};
use virt_hooks_core::Driver;

use super::args::parse_driver;
use super::{require_dir, Outcome, UsageError};
use crate::output;

/// What `hookctl state --help` says after the options.
pub(crate) const HELP: &str = "\
A plugin with `state = true` keeps a directory per guest or network from the object's first
event until its last (`release end`; a network's `stopped end`). LIVE: that last event has not
come (the object runs, or libvirt lost track of it). KEPT: the plugin failed the last event,
so what it did may not be undone; the note says why.

Examples:
  hookctl state                         # every object's state, for every driver
  hookctl state --json
  hookctl state clear qemu web1         # remove web1's kept state, once its work is undone
  hookctl state clear qemu web1 10-fw --force   # remove live state (its release will miss it)

Exit status: 0; 1 when a state root cannot be read (listing) or a live directory is not
removed without --force (clear); 2 usage error or nothing to clear.";

#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    #[command(subcommand)]
    pub(crate) action: Option<StateAction>,
    /// Only this driver (when listing).
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Print JSON (when listing).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum StateAction {
    /// Remove an object's kept state (every plugin's, or PLUGIN's); live state only with --force.
    Clear(StateClearArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StateClearArgs {
    /// daemon, qemu, lxc, libxl, bhyve or network.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Driver,
    /// The guest or network.
    #[arg(allow_hyphen_values = true)]
    pub(crate) object: OsString,
    /// Only this plugin's directory (its file name).
    #[arg(allow_hyphen_values = true)]
    pub(crate) plugin: Option<OsString>,
    /// Remove live state too: the object's `release` will then find nothing to undo.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The state root of each driver (not the daemon: it has no objects) whose dispatcher
/// has a plugins dir in `dir`, or why it cannot be known or read.
pub(crate) fn roots(dir: &Path, drivers: &[Driver]) -> Vec<(Driver, Result<StateRoot, String>)> {
    let with_plugins = drivers
        .iter()
        .filter(|&&d| d != Driver::Daemon)
        .filter_map(|&d| Some((d, super::plugins_dir(dir, d)?)));
    with_plugins
        .map(|(d, plugins)| {
            let root = match crate::config::settings(&plugins).state {
                Ok(root) => StateRoot::new(root),
                Err(e) => return (d, Err(format!("`state` in hookctl.toml cannot be used: {e}"))),
            };
            (d, root.check().map(|()| root).map_err(|e| e.to_string()))
        })
        .collect()
}

/// What `uninstall` must not orphan: the live state of `drivers`' objects, and the
/// drivers whose state cannot be read.
#[derive(Debug, Default)]
pub(crate) struct LiveState {
    /// The hooks dir (for hints).
    pub(crate) hooks_dir: PathBuf,
    pub(crate) live: Vec<(Driver, StateEntry)>,
    /// How many kept directories there are (not held back: their note says what is left).
    pub(crate) kept: usize,
    /// Under the default root, which the driver's `hookctl.toml` no longer names.
    pub(crate) orphaned: Vec<(Driver, StateEntry)>,
    pub(crate) unknown: Vec<(Driver, String)>,
}

impl LiveState {
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty() && self.orphaned.is_empty() && self.unknown.is_empty()
    }

    /// The objects, one line each (`  qemu web1: 10-fw, 20-hugepages`), and the drivers
    /// whose state cannot be read.
    /// Each object with its plugins; `before` says how to release it while hookctl is
    /// still the hook (after it is not, only the by-hand dispatch reaches the plugins).
    pub(crate) fn describe(&self, before: bool) -> String {
        let mut text = String::new();
        let mut objects: Vec<(Driver, &OsStr, Vec<String>)> = Vec::new();
        for (d, e) in &self.live {
            let plugin = output::name(&e.hook.to_string_lossy()).into_owned();
            match objects.iter_mut().find(|(od, o, _)| od == d && *o == e.object) {
                Some((_, _, plugins)) => plugins.push(plugin),
                None => objects.push((*d, &e.object, vec![plugin])),
            }
        }
        for (d, object, plugins) in &objects {
            let object = output::name(&object.to_string_lossy()).into_owned();
            text.push_str(&format!("  {d} {object}: {}\n", plugins.join(", ")));
            if before {
                text.push_str(&format!("      release it: {}\n", release_hint(*d, &object)));
            } else {
                text.push_str(&format!(
                    "      its plugins get its last event only by hand: {}\n",
                    by_hand_hint(&self.hooks_dir, *d, &object)
                ));
            }
        }
        for (d, e) in &self.orphaned {
            text.push_str(&format!(
                "  {d} {}: {} under {}, which hookctl.toml no longer names: {}\n",
                output::name(&e.object.to_string_lossy()),
                output::name(&e.hook.to_string_lossy()),
                output::path(&e.path),
                ORPHANED_HINT
            ));
        }
        for (d, why) in &self.unknown {
            text.push_str(&format!(
                "  {d}: cannot tell which objects hold state: {}\n",
                output::message(why)
            ));
        }
        text
    }
}

/// Where a driver's dispatcher records the state roots it has used:
/// `<hooks dir>/.<driver>.state-roots`, one absolute path per line. In the hooks dir
/// (which only root may write), and a dotfile, so that neither libvirt nor a plugins
/// dir scan sees it.
pub(crate) fn roots_record(hooks_dir: &Path, driver: Driver) -> PathBuf {
    hooks_dir.join(format!(".{driver}.state-roots"))
}

/// The roots recorded for `driver` in `hooks_dir` (none when nothing was recorded, or
/// the record is not a regular file of ours).
fn recorded_roots(hooks_dir: &Path, driver: Driver) -> Vec<PathBuf> {
    let record = roots_record(hooks_dir, driver);
    let Ok(bytes) = virt_hooks_core::backend::TrustPolicy::current_user().read(&record) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .collect()
}

/// Adds `root` to the record of `driver`'s state roots if it is not there yet: the
/// dispatcher calls this once the root exists, so that a later move of `state` leaves
/// no state unseen. Best effort: a read-only `/etc` records nothing (and says nothing).
pub(crate) fn record_root(hooks_dir: &Path, driver: Driver, root: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if recorded_roots(hooks_dir, driver).iter().any(|r| r == root) {
        return;
    }
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(roots_record(hooks_dir, driver))
        .and_then(|mut f| f.write_all(format!("{}\n", root.display()).as_bytes()));
    if let Err(e) = appended {
        tracing::debug!(error = %e, "state root not recorded");
    }
}

/// The roots `driver`'s dispatcher used before that its `hookctl.toml` no longer names
/// (the default one counts as used where it holds the driver's objects and nothing says
/// otherwise): state left there is out of its dispatcher's reach (its release finds
/// nothing) and must be named. Never the root in use under another name (`/var/run` is
/// `/run`) or one that is not ours; a root inside another (`state =
/// "/run/virt-hooks/state/network"`) is one of its own ([`entries_of`]).
pub(crate) fn former_roots(hooks_dir: &Path, driver: Driver, current: &StateRoot) -> Vec<StateRoot> {
    let mut found: Vec<StateRoot> = Vec::new();
    for path in used_roots(hooks_dir, driver) {
        let root = StateRoot::new(&path);
        let other = path.exists() && !same_dir(&path, current.path());
        if other && root.check().is_ok() && !found.iter().any(|f| same_dir(f.path(), &path)) {
            found.push(root);
        }
    }
    found
}

/// Whether two paths name the same directory (`/var/run` is `/run`).
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    a == b || id(a).is_some_and(|i| Some(i) == id(b))
}

/// The roots recorded for `driver` (with the default one for the system hooks dir of an
/// earlier version, which recorded none). The system root is the system hooks dir's
/// alone: another dir's dispatcher used it only by default before issue 22 (a scratch
/// dir's trial), and what is there now is the real guests' state, not that dir's.
fn used_roots(hooks_dir: &Path, driver: Driver) -> Vec<PathBuf> {
    let system_root = Path::new(virt_hooks_core::state::SYSTEM_STATE_ROOT);
    let mut recorded = recorded_roots(hooks_dir, driver);
    if !crate::config::is_system_hooks_dir(hooks_dir) {
        recorded.retain(|root| !same_dir(root, system_root));
    } else if recorded.is_empty() {
        recorded.push(system_root.to_owned());
    }
    recorded
}

/// `driver`'s state under `root`, less what belongs to another root in use nested in it:
/// under `/run/virt-hooks/state`, `network/network/…` is the state of a root
/// `/run/virt-hooks/state/network` (its `network` level), not of an object `network`.
pub(crate) fn entries_of(root: &StateRoot, driver: Driver, hooks_dir: &Path, current: &StateRoot) -> Vec<StateEntry> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let here = canonical(root.path());
    let mut others: Vec<PathBuf> = used_roots(hooks_dir, driver).iter().map(|p| canonical(p)).collect();
    others.push(canonical(current.path()));
    others.retain(|o| *o != here && o.starts_with(&here));
    let theirs = |path: &Path| {
        let path = canonical(path);
        others.iter().any(|o| {
            (path.strip_prefix(o).ok())
                .and_then(|rest| rest.components().next())
                .and_then(|c| c.as_os_str().to_str())
                .is_some_and(|level| level.parse::<Driver>().is_ok())
        })
    };
    root.entries(driver).into_iter().filter(|e| !theirs(&e.path)).collect()
}

/// A driver's state under roots its `hookctl.toml` no longer names ([`former_roots`]).
pub(crate) fn orphaned(hooks_dir: &Path, driver: Driver, current: &StateRoot) -> Vec<StateEntry> {
    (former_roots(hooks_dir, driver, current).iter())
        .flat_map(|root| entries_of(root, driver, hooks_dir, current))
        .collect()
}

/// The live state of `drivers`' objects in `dir` (state whose object has not had its
/// last event), state left under the default root after `state` moved, and the
/// drivers whose state root cannot be read.
pub(crate) fn live_state(dir: &Path, drivers: &[Driver]) -> LiveState {
    let mut found = LiveState {
        hooks_dir: dir.to_owned(),
        ..LiveState::default()
    };
    for (d, root) in roots(dir, drivers) {
        match root {
            Ok(root) => {
                let (live, kept): (Vec<_>, Vec<_>) = entries_of(&root, d, dir, &root)
                    .into_iter()
                    .partition(|e| e.kept.is_none());
                found.live.extend(live.into_iter().map(|e| (d, e)));
                found.kept += kept.len();
                // A root it used that cannot be read now (a link, another owner): what it
                // holds cannot be told.
                for used in used_roots(dir, d) {
                    let unreadable = std::fs::symlink_metadata(&used).is_ok()
                        && !same_dir(&used, root.path())
                        && StateRoot::new(&used).check().is_err();
                    if unreadable {
                        let why = StateRoot::new(&used)
                            .check()
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        found
                            .unknown
                            .push((d, format!("a state root its dispatcher used cannot be read: {why}")));
                    }
                }
                // Out of any release's reach: live ones hold uninstall back, kept ones are noted.
                let (live, kept): (Vec<_>, Vec<_>) =
                    orphaned(dir, d, &root).into_iter().partition(|e| e.kept.is_none());
                found.orphaned.extend(live.into_iter().map(|e| (d, e)));
                found.kept += kept.len();
            }
            Err(why) => found.unknown.push((d, why)),
        }
    }
    found
}

/// What to do about state the dispatcher can no longer reach.
pub(crate) const ORPHANED_HINT: &str = "its release will find nothing there (or found nothing, if it was released since); move the directory to the same place under the root hookctl.toml names (or put `state` back) before the object's release, or undo its work by hand and `rm -r` the directory";

/// How to give an object its last event, so that its plugins undo what they did.
fn release_hint(driver: Driver, object: &str) -> String {
    let (stop, last) = match driver {
        Driver::Network => (format!("virsh net-destroy {object}"), "stopped end"),
        Driver::Lxc => (format!("virsh -c lxc:///system destroy {object}"), "release end"),
        Driver::Libxl => (format!("virsh -c xen:///system destroy {object}"), "release end"),
        Driver::Bhyve => (format!("virsh -c bhyve:///system destroy {object}"), "release end"),
        _ => (format!("virsh destroy {object}"), "release end"),
    };
    format!("`{stop}` (or shut it down); if libvirt no longer runs it, run its {last} by hand ({BY_HAND_DOC})")
}

/// Where giving an object its last event by hand is explained.
const BY_HAND_DOC: &str = "docs/matching-and-state.md, \"Running an object's `release` by hand\"";

/// Giving an object its last event with the dispatcher itself, once hookctl is not the
/// hook (libvirt's own events no longer reach the plugins).
fn by_hand_hint(hooks_dir: &Path, driver: Driver, object: &str) -> String {
    let last = if driver == Driver::Network {
        "stopped end"
    } else {
        "release end"
    };
    let plugins = output::path(&hooks_dir.join(format!("{driver}.plugins")));
    format!("`hookctl dispatch --plugins {plugins} {driver} {object} {last} - < its XML` ({BY_HAND_DOC})")
}

pub(crate) fn exec(dir: &Path, args: StateArgs) -> Outcome {
    require_dir(dir)?;
    match args.action {
        Some(StateAction::Clear(clear_args)) => clear(dir, clear_args),
        None => list(dir, args.driver, args.json),
    }
}

/// One state directory, as listed.
#[derive(Serialize)]
struct Row {
    driver: Driver,
    object: String,
    plugin: String,
    path: String,
    /// `live` (the object has not had its last event), `kept` (its plugin failed it) or
    /// `orphaned` (under the default root, which `hookctl.toml` no longer names).
    state: &'static str,
    /// Why it was kept (the note).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// When the directory was made (else last changed), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    age_secs: Option<u64>,
}

#[derive(Serialize)]
struct Unreadable {
    driver: Driver,
    why: String,
}

#[derive(Serialize)]
struct Listing {
    state: Vec<Row>,
    /// Drivers whose state root cannot be known or read.
    unreadable: Vec<Unreadable>,
}

fn row(driver: Driver, e: StateEntry, now: SystemTime) -> Row {
    let meta = std::fs::symlink_metadata(&e.path).ok();
    let since = meta.and_then(|m| m.created().or_else(|_| m.modified()).ok());
    Row {
        driver,
        object: e.object.to_string_lossy().into_owned(),
        plugin: e.hook.to_string_lossy().into_owned(),
        path: e.path.display().to_string(),
        state: if e.kept.is_some() { "kept" } else { "live" },
        note: e.kept,
        since: since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        age_secs: since.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
    }
}

fn list(dir: &Path, driver: Option<Driver>, json: bool) -> Outcome {
    let drivers = driver.map_or(Driver::ALL.to_vec(), |d| vec![d]);
    let now = SystemTime::now();
    let mut listing = Listing {
        state: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut where_ = Vec::<PathBuf>::new();
    for (d, root) in roots(dir, &drivers) {
        match root {
            Ok(root) => {
                listing
                    .state
                    .extend(entries_of(&root, d, dir, &root).into_iter().map(|e| row(d, e, now)));
                listing.state.extend(orphaned(dir, d, &root).into_iter().map(|e| {
                    let mut row = row(d, e, now);
                    row.state = "orphaned";
                    let left = format!("left under a root hookctl.toml no longer names: {ORPHANED_HINT}");
                    row.note = Some(match row.note.take() {
                        Some(kept) => format!("{left} (kept: {kept})"),
                        None => left,
                    });
                    row
                }));
                if !where_.iter().any(|p| p == root.path()) {
                    where_.push(root.path().to_owned());
                }
            }
            Err(why) => listing.unreadable.push(Unreadable { driver: d, why }),
        }
    }
    let complete = listing.unreadable.is_empty();
    if json {
        output::json(&listing);
        return Ok(complete);
    }
    for u in &listing.unreadable {
        eprintln!("hookctl: {}: {}", u.driver, output::message(&u.why));
    }
    let shown: Vec<String> = where_.iter().map(|p| output::path(p)).collect();
    if listing.state.is_empty() {
        if !complete {
            // The reasons are on stderr: nothing can be said of state that cannot be read.
            let note = match shown.is_empty() {
                true => String::new(),
                false => format!(" (and none under {})", shown.join(", ")),
            };
            outln!("state not listed: see the errors above{note}");
        } else if shown.is_empty() {
            outln!(
                "no plugins dir in {}: no dispatcher keeps state here",
                output::path(dir)
            );
        } else {
            outln!("no state (under {})", shown.join(", "));
        }
        return Ok(complete);
    }
    output::stdout(table(&listing.state).as_bytes());
    outln!("(under {})", shown.join(", "));
    if listing.state.iter().any(|r| r.state == "live") {
        outln!("live: until the object's last event (release end; a network's stopped end), which the plugin needs to undo its work.");
    }
    if listing.state.iter().any(|r| r.state == "kept") {
        outln!("KEPT: its plugin failed the object's last event (or the refused event that opened it); undo what it did, then `hookctl state clear DRIVER OBJECT PLUGIN`.");
    }
    if listing.state.iter().any(|r| r.state == "orphaned") {
        outln!("ORPHANED: under a state root that hookctl.toml no longer names since `state` moved: the object's release will not find it.");
    }
    Ok(complete)
}

/// The rows as a table; every name and note escaped.
fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.driver.to_string(),
                output::name(&r.object).into_owned(),
                output::name(&r.plugin).into_owned(),
                match r.state {
                    "kept" => "KEPT".into(),
                    "orphaned" => "ORPHANED".into(),
                    other => other.into(),
                },
                r.age_secs.map(age).unwrap_or_else(|| "?".into()),
                r.note
                    .as_deref()
                    .map(|n| output::message(n).into_owned())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["DRIVER", "OBJECT", "PLUGIN", "STATE", "AGE", "NOTE"].map(String::from);
    let mut widths = [0usize; 6];
    for line in std::iter::once(&header).chain(&cells) {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let mut out = String::new();
        for (i, (cell, w)) in line.iter().zip(widths).enumerate() {
            if i == 5 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    }
    text
}

/// An age a person reads at a glance: `45s`, `12m`, `3h 5m`, `2d 4h`.
fn age(secs: u64) -> String {
    let d = Duration::from_secs(secs);
    let rounded = match secs {
        0..3600 => d,
        3600..86400 => Duration::from_secs(secs / 60 * 60),
        _ => Duration::from_secs(secs / 3600 * 3600),
    };
    humantime::format_duration(rounded).to_string()
}

fn clear(dir: &Path, args: StateClearArgs) -> Outcome {
    let d = args.driver;
    if d == Driver::Daemon {
        return Err(UsageError(
            "daemon events have no object: the daemon driver keeps no state".into(),
        ));
    }
    let root = match roots(dir, &[d]).pop() {
        None => {
            return Err(UsageError(format!(
                "no {d}.plugins in {}: no dispatcher keeps {d} state here",
                output::path(dir)
            )))
        }
        Some((_, Err(why))) => return Err(UsageError(format!("{d}: {why}"))),
        Some((_, Ok(root))) => root,
    };
    let object = args.object.as_os_str();
    let entries: Vec<StateEntry> = (root.entries(d).into_iter())
        .filter(|e| e.object == object && args.plugin.as_ref().is_none_or(|p| e.hook == *p))
        .collect();
    let named = format!(
        "{d} {}{}",
        output::name(&object.to_string_lossy()),
        (args.plugin.as_ref())
            .map(|p| format!(" {}", output::name(&p.to_string_lossy())))
            .unwrap_or_default()
    );
    if entries.is_empty() {
        return Err(UsageError(format!(
            "no state for {named} under {}",
            output::path(root.path())
        )));
    }
    let live: Vec<&StateEntry> = entries.iter().filter(|e| e.kept.is_none()).collect();
    if !live.is_empty() && !args.force {
        let plugins: Vec<_> = live
            .iter()
            .map(|e| output::name(&e.hook.to_string_lossy()).into_owned())
            .collect();
        let object = output::name(&object.to_string_lossy()).into_owned();
        eprintln!(
            "hookctl: not removing the live state of {d} {object} ({}): its plugins need it at the object's last event to undo their work. Release it: {}. Or pass --force to remove it anyway. Nothing was removed.",
            plugins.join(", "),
            release_hint(d, &object)
        );
        return Ok(false);
    }
    let mut all_removed = true;
    for e in &entries {
        let shown = output::path(&e.path);
        match root.remove(d, &e.object, &e.hook) {
            Ok(true) if e.kept.is_none() => {
                outln!("removed {shown} (it was live: the object's release will find nothing to undo)")
            }
            Ok(true) => outln!("removed {shown}"),
            Ok(false) => outln!("{shown}: already gone"),
            Err(err) => {
                all_removed = false;
                eprintln!("hookctl: {}", output::message(&err.to_string()));
            }
        }
    }
    Ok(all_removed)
}
