//! `hookctl list`: the run order per driver, and what is skipped and why.

use std::path::Path;

use clap::Args;
use serde::Serialize;
use virt_hooks_core::backend::{Disposition, EntryRole};
use virt_hooks_core::{Driver, HooksDir};

use super::args::parse_driver;
use super::{require_dir, Outcome};
use crate::output;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this driver.
    #[arg(value_parser = parse_driver)]
    pub(crate) driver: Option<Driver>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct DriverListing {
    driver: Driver,
    /// Set for a dispatcher's `<driver>.plugins/` dir (run by hookctl installed as the hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    plugins_dir: Option<String>,
    /// For a plugins dir: the audit log its dispatcher writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    /// For a plugins dir whose dispatcher writes no audit log: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_log: Option<String>,
    /// For a plugins dir: the root of its plugins' state directories, when it can be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_root: Option<String>,
    /// For a plugins dir: why the dispatcher will not run it, if it will not.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_run: Option<String>,
    entries: Vec<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Plugins' per-object state directories that exist now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    state: Vec<StateView>,
    /// For a listing with exec hooks: what contains them when this process runs them.
    #[serde(skip_serializing_if = "Option::is_none")]
    exec_containment: Option<String>,
}

#[derive(Serialize)]
struct StateView {
    object: String,
    plugin: String,
    path: String,
    /// Why it outlived its object's last event (its plugin failed that event).
    #[serde(skip_serializing_if = "Option::is_none")]
    kept: Option<String>,
}

fn state_views(root: &virt_hooks_core::state::StateRoot, driver: Driver) -> Vec<StateView> {
    root.entries(driver)
        .into_iter()
        .map(|e| StateView {
            object: e.object.to_string_lossy().into_owned(),
            plugin: e.hook.to_string_lossy().into_owned(),
            path: e.path.display().to_string(),
            kept: e.kept,
        })
        .collect()
}

#[derive(Serialize)]
struct Entry {
    path: String,
    role: EntryRole,
    /// Position in the run order, for entries that run.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    /// Effective settings from the sidecar `.toml`, when it sets anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    settings: Option<String>,
    /// Why it would fail to load or start, if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
    /// Why hookctl refuses to run it (the trust rule); the event fails instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    /// The settings in effect, as data (`--json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<Effective>,
    /// Something to fix although it runs here (a plugin where libvirt would not load it).
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    /// Something to know about when it runs (`[match] xpath`: only with a document).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// What `list` says about a hook whose sidecar has `[match] xpath`.
const XPATH_NOTE: &str = "xpath: matches only events that carry an XML document (a domain's XML, a network's \
                          <hookData>); daemon events and events without a document never match";

/// A hook's settings in effect, defaults included.
#[derive(Serialize)]
struct Effective {
    /// Seconds; absent when there is no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_secs: Option<f64>,
    /// Whether the timeout is a default rather than the sidecar's own.
    timeout_is_default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output: Option<u64>,
    policy: virt_hooks_core::HookPolicy,
    #[serde(rename = "match")]
    matcher: MatchView,
    /// The sidecar these came from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    sidecar: Option<String>,
    /// In a plugins dir, for a driver with `reconnect`: what a failure there does.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_reconnect_failure: Option<virt_hooks_core::OnReconnectFailure>,
    /// The sidecar's `[config]`, as the plugin gets it.
    #[serde(skip_serializing_if = "virt_hooks_core::backend::PluginConfig::is_empty")]
    config: virt_hooks_core::backend::PluginConfig,
}

#[derive(Serialize)]
struct MatchView {
    objects: Vec<String>,
    ops: Vec<String>,
    subops: Vec<String>,
    /// XPath 1.0 expressions that must all hold on the event's document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    xpath: Vec<String>,
    /// Prefixes the expressions use: prefix → namespace URI.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    xmlns: std::collections::BTreeMap<String, String>,
    /// Whether it matches only events that carry an XML document (it has `xpath`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    needs_document: bool,
}

impl Effective {
    fn of(s: &virt_hooks_core::backend::HookSettings, backend_default: Option<std::time::Duration>) -> Self {
        let own = |it: &mut dyn Iterator<Item = &str>| it.map(str::to_owned).collect();
        Effective {
            timeout_secs: s.effective_timeout(backend_default).map(|t| t.as_secs_f64()),
            timeout_is_default: s.timeout == virt_hooks_core::backend::TimeoutSetting::Default,
            memory: s.memory,
            max_output: s.max_output,
            policy: s.policy,
            matcher: MatchView {
                objects: own(&mut s.matcher.objects()),
                ops: own(&mut s.matcher.ops()),
                subops: own(&mut s.matcher.subops()),
                xpath: own(&mut s.matcher.xpath()),
                xmlns: s.matcher.xmlns().map(|(p, u)| (p.to_owned(), u.to_owned())).collect(),
                needs_document: s.matcher.needs_document(),
            },
            sidecar: s.source.as_ref().map(|p| p.display().to_string()),
            on_reconnect_failure: None,
            config: s.config.clone(),
        }
    }
}

pub(crate) fn exec(dir: &Path, args: ListArgs) -> Outcome {
    require_dir(dir)?;
    let hooks = super::with_backends(HooksDir::new(dir));
    let drivers = args.driver.map_or(Driver::ALL.to_vec(), |d| vec![d]);
    let mut listings: Vec<DriverListing> = Vec::new();
    for d in drivers {
        listings.push(listing(&hooks, d));
        if let Some(plugins) = super::plugins_dir(dir, d) {
            let settings = crate::config::settings(&plugins);
            // The timeout and the other usable keys as the dispatcher applies them.
            let in_effect = settings.in_effect();
            let hooks = super::dispatch::dispatcher_dir(&plugins, d, &in_effect);
            let mut l = listing(&hooks, d);
            l.plugins_dir = Some(plugins.display().to_string());
            if let Ok(state) = &settings.state {
                l.state = state_views(&virt_hooks_core::state::StateRoot::new(state), d);
                l.state_root = Some(state.display().to_string());
            }
            match &settings.log {
                Ok(Some(log)) => l.log = Some(log.display().to_string()),
                Ok(None) => l.no_log = Some(no_log_why(dir)),
                Err(_) => {}
            }
            if let Err(e) = settings.config() {
                l.error = Some(format!("{e} (the other settings apply; `hookctl check`)"));
            }
            if !super::install::is_hookctl(&dir.join(d.as_str())) {
                l.not_run = Some(format!(
                    "{} is not hookctl, so nothing runs this dir (`hookctl install {d}`)",
                    dir.join(d.as_str()).display()
                ));
            }
            listings.push(l);
        }
    }
    exec_containment(&mut listings);
    if args.json {
        output::json(&listings);
        return Ok(true);
    }
    // Every name, path and message is escaped (`output::name`, `output::message`): file
    // names, guests' names and plugins' messages reach the operator's terminal.
    let (name, message) = (output::name, output::message);
    let mut text = String::new();
    for l in &listings {
        if l.entries.is_empty() && l.error.is_none() && l.state.is_empty() && args.driver.is_none() {
            continue;
        }
        match (&l.plugins_dir, &l.not_run) {
            (Some(p), None) => {
                let log = match (&l.log, &l.no_log) {
                    (Some(log), _) => format!("; audit log {}", name(log)),
                    (None, Some(why)) => format!("; no audit log: {}", message(why)),
                    (None, None) => String::new(),
                };
                let state = (l.state_root.as_deref())
                    .map(|root| format!("; state root {}", name(root)))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{} plugins ({}, run by the hookctl dispatcher{log}{state}):\n",
                    l.driver,
                    name(p)
                ));
                if virt_hooks_core::backend::libvirt_ops(l.driver).contains(&"reconnect") {
                    text.push_str("  at reconnect a plugin's failure is logged and the guest lives, unless its sidecar says on_reconnect_failure=kill\n");
                }
            }
            (Some(p), Some(why)) => text.push_str(&format!(
                "{} plugins ({}): NOT RUN: {}\n",
                l.driver,
                name(p),
                message(why)
            )),
            (None, _) => text.push_str(&format!("{}:\n", l.driver)),
        }
        if let Some(e) = &l.error {
            text.push_str(&format!("  error: {}\n", message(e)));
        }
        if l.entries.is_empty() {
            text.push_str("  (no hooks)\n");
        }
        for e in &l.entries {
            match (e.order, e.backend, &e.skipped) {
                (Some(n), Some(backend), _) => {
                    let settings = (e.settings.as_deref())
                        .map(|s| format!("  [{}]", message(s)))
                        .unwrap_or_default();
                    let mut broken = match (&e.refused, &e.broken) {
                        (Some(r), _) => format!("  REFUSED: {}", message(r)),
                        (None, Some(b)) => format!("  BROKEN: {}", message(b)),
                        (None, None) => String::new(),
                    };
                    if let Some(w) = &e.warning {
                        broken.push_str(&format!("  WARNING: {}", message(w)));
                    }
                    text.push_str(&format!("  {n:>3}. {backend:<6} {}{settings}{broken}\n", name(&e.path)));
                    if let Some(note) = &e.note {
                        text.push_str(&format!("              {note}\n"));
                    }
                }
                (_, _, Some(why)) => {
                    let warning = (e.warning.as_deref()).map(|w| format!("  WARNING: {}", message(w)));
                    let (path, why) = (name(&e.path), message(why));
                    text.push_str(&format!("     skip   {path}  ({why}){}\n", warning.unwrap_or_default()));
                }
                _ => {}
            }
        }
        if let Some(c) = &l.exec_containment {
            text.push_str(&format!("  exec containment: {c}\n"));
        }
        for st in &l.state {
            let (path, plugin, object) = (name(&st.path), name(&st.plugin), name(&st.object));
            match &st.kept {
                Some(why) => text.push_str(&format!(
                    "  state KEPT: {path} ({plugin} for {object}): {}; remove it once the plugin's work is undone\n",
                    message(why)
                )),
                None => text.push_str(&format!("  state: {path} ({plugin} for {object})\n")),
            }
        }
    }
    if text.is_empty() {
        text = format!("no hooks in {}\n", output::path(dir));
    }
    output::stdout(text.as_bytes());
    Ok(true)
}

/// Why the plugins dirs of the hooks dir `dir` write no audit log by default.
fn no_log_why(dir: &Path) -> String {
    format!(
        "{} is not {} and hookctl.toml names no `log`",
        dir.display(),
        crate::config::system_hooks_dir().display()
    )
}

/// Which containment exec hooks get (a cgroup of their own, or a per-hook subreaper), on
/// each listing that has any. The dispatcher runs in the cgroup of the libvirt daemon
/// that calls it, not in this one's: what that daemon's cgroup gives, where one runs;
/// else what a dispatcher in this process's cgroup would get, and that it is a guess.
/// Nothing is created either way.
fn exec_containment(listings: &mut [DriverListing]) {
    #[cfg(feature = "exec")]
    let mut running: Option<Vec<(String, u32)>> = None;
    #[cfg(feature = "exec")]
    for l in listings.iter_mut() {
        if !l.entries.iter().any(|e| e.backend == Some("exec")) {
            continue;
        }
        // One look at /proc, whichever drivers are listed.
        let running = running.get_or_insert_with(running_daemons);
        let found = daemons(l.driver).iter().find_map(|name| {
            running
                .iter()
                .filter(|(n, _)| n == name)
                .map(|&(_, pid)| pid)
                .min()
                .map(|pid| (name, pid))
        });
        let (pid, who) = match &found {
            Some((name, pid)) => (*pid, format!("as {name} (pid {pid}) runs them")),
            None => (
                std::process::id(),
                "no libvirt daemon runs now; a dispatcher in this shell's cgroup would get".to_owned(),
            ),
        };
        l.exec_containment = Some(match virt_hooks_exec::containment_of(pid) {
            Ok(c) => format!("{who}: {c}"),
            Err(e) => format!("{who}: unknown ({e})"),
        });
    }
    #[cfg(not(feature = "exec"))]
    let _ = listings;
}

/// The libvirt daemons that run a driver's hooks: the modular one first, then the
/// monolithic `libvirtd`.
#[cfg(feature = "exec")]
fn daemons(driver: Driver) -> &'static [&'static str] {
    match driver {
        Driver::Qemu => &["virtqemud", "libvirtd"],
        Driver::Lxc => &["virtlxcd", "libvirtd"],
        Driver::Libxl => &["virtxend", "libvirtd"],
        Driver::Bhyve => &["virtbhyved", "libvirtd"],
        Driver::Network => &["virtnetworkd", "libvirtd"],
        _ => &["libvirtd", "virtqemud"],
    }
}

/// Every libvirt daemon that runs hooks.
#[cfg(feature = "exec")]
const DAEMONS: [&str; 6] = [
    "libvirtd",
    "virtqemud",
    "virtlxcd",
    "virtxend",
    "virtbhyved",
    "virtnetworkd",
];

/// The libvirt daemons running now (by `/proc/<pid>/comm`), with their pids.
#[cfg(feature = "exec")]
fn running_daemons() -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim_end();
            DAEMONS.contains(&comm).then(|| (comm.to_owned(), pid))
        })
        .collect()
}

fn listing(hooks: &HooksDir, driver: Driver) -> DriverListing {
    match hooks.scan(driver) {
        Ok(entries) => {
            let mut order = 0;
            let entries = entries
                .into_iter()
                .filter(|e| !super::is_own_state_dir(hooks, e, driver))
                .map(|e| {
                    let path = e.path.display().to_string();
                    let warning = super::misplaced_plugin(hooks, &e, driver).or_else(|| e.stray_settings_warning());
                    let loaded = e.settings();
                    let note = loaded
                        .as_ref()
                        .is_ok_and(|s| s.matcher.needs_document())
                        .then(|| XPATH_NOTE.to_owned());
                    // Where the dispatcher decides what a failure at `reconnect` does.
                    let reconnect = (hooks.is_flat()
                        && virt_hooks_core::backend::libvirt_ops(driver).contains(&"reconnect"))
                    .then(|| loaded.as_ref().ok().map(|s| e.on_reconnect_failure(s)))
                    .flatten();
                    let effective = match (&loaded, e.loader()) {
                        (Ok(s), Some(loader)) => Some(Effective {
                            on_reconnect_failure: reconnect,
                            ..Effective::of(s, loader.default_timeout())
                        }),
                        _ => None,
                    };
                    let mut settings = match &loaded {
                        Ok(s) if s.summary().is_empty() => None,
                        Ok(s) => Some(s.summary()),
                        Err(err) => Some(format!("invalid settings: {err}")),
                    };
                    // The time limit in effect, default included, for whatever runs.
                    if let (Ok(s), Some(loader)) = (&loaded, e.loader()) {
                        let effective = s.effective_timeout(loader.default_timeout());
                        if let (virt_hooks_core::backend::TimeoutSetting::Default, Some(t)) = (s.timeout, effective) {
                            let shown = format!("timeout={} (default)", virt_hooks_core::backend::format_duration(t));
                            settings = Some(settings.map_or(shown.clone(), |other| format!("{shown} {other}")));
                        }
                    }
                    match e.disposition {
                        Disposition::Hook(loader) => {
                            order += 1;
                            let broken = loaded.as_ref().ok().and_then(|s| loader.inspect(&e.path, s).err()).map(
                                |err| match &err.source {
                                    Some(source) => {
                                        format!("{}: {}", err.kind, virt_hooks_core::error::chain(&**source))
                                    }
                                    None => err.kind.to_string(),
                                },
                            );
                            Entry {
                                path,
                                role: e.role,
                                order: Some(order),
                                backend: Some(loader.backend()),
                                skipped: None,
                                settings,
                                broken,
                                refused: None,
                                effective,
                                warning,
                                note,
                            }
                        }
                        Disposition::Refused(loader, why) => {
                            order += 1;
                            Entry {
                                path,
                                role: e.role,
                                order: Some(order),
                                backend: Some(loader.map_or("-", |l| l.backend())),
                                skipped: None,
                                settings,
                                broken: None,
                                refused: Some(why.reason()),
                                effective: None,
                                warning,
                                note,
                            }
                        }
                        Disposition::Skipped(why) => Entry {
                            broken: None,
                            refused: None,
                            effective: None,
                            warning,
                            note: None,
                            path,
                            role: e.role,
                            order: None,
                            backend: None,
                            skipped: Some(why.to_string()),
                            settings: None,
                        },
                    }
                })
                .collect();
            DriverListing {
                driver,
                plugins_dir: None,
                log: None,
                no_log: None,
                state_root: None,
                not_run: None,
                entries,
                error: None,
                state: Vec::new(),
                exec_containment: None,
            }
        }
        Err(e) => DriverListing {
            driver,
            plugins_dir: None,
            log: None,
            no_log: None,
            state_root: None,
            not_run: None,
            entries: Vec::new(),
            error: Some(format!("cannot read `{}`: {e}", hooks.drop_in_dir(driver).display())),
            state: Vec::new(),
            exec_containment: None,
        },
    }
}
