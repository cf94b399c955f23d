//! `hookctl list`: the run order per driver, and what is skipped and why.

use std::path::Path;

use hooks_core::{Disposition, Driver, EntryRole, HooksDir};
use serde::Serialize;

use crate::cli::{require_dir, ListArgs, Outcome};
use crate::output;

#[derive(Serialize)]
struct DriverListing {
    driver: Driver,
    /// Set for a dispatcher's `<driver>.plugins/` dir (run by hookctl installed as the hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    plugins_dir: Option<String>,
    entries: Vec<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
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
}

pub(crate) fn exec(dir: &Path, args: ListArgs) -> Outcome {
    require_dir(dir)?;
    let hooks = HooksDir::new(dir);
    let drivers = args.driver.map_or(Driver::ALL.to_vec(), |d| vec![d]);
    let mut listings: Vec<DriverListing> = Vec::new();
    for d in drivers {
        listings.push(listing(&hooks, d));
        if let Some(plugins) = super::plugins_dir(dir, d) {
            let mut l = listing(&super::dispatch::plugins_with_original(&plugins, d), d);
            l.plugins_dir = Some(plugins.display().to_string());
            listings.push(l);
        }
    }
    if args.json {
        output::json(&listings);
        return Ok(true);
    }
    let mut text = String::new();
    for l in &listings {
        if l.entries.is_empty() && l.error.is_none() && args.driver.is_none() {
            continue;
        }
        match &l.plugins_dir {
            Some(p) => text.push_str(&format!("{} plugins ({p}, run by the hookctl dispatcher):\n", l.driver)),
            None => text.push_str(&format!("{}:\n", l.driver)),
        }
        if let Some(e) = &l.error {
            text.push_str(&format!("  error: {e}\n"));
        }
        if l.entries.is_empty() {
            text.push_str("  (no hooks)\n");
        }
        for e in &l.entries {
            match (e.order, e.backend, &e.skipped) {
                (Some(n), Some(backend), _) => {
                    let settings = e.settings.as_deref().map(|s| format!("  [{s}]")).unwrap_or_default();
                    let broken = match (&e.refused, &e.broken) {
                        (Some(r), _) => format!("  REFUSED: {r}"),
                        (None, Some(b)) => format!("  BROKEN: {b}"),
                        (None, None) => String::new(),
                    };
                    text.push_str(&format!("  {n:>3}. {backend:<6} {}{settings}{broken}\n", e.path));
                }
                (_, _, Some(why)) => text.push_str(&format!("     skip   {}  ({why})\n", e.path)),
                _ => {}
            }
        }
    }
    if text.is_empty() {
        text = format!("no hooks in {}\n", dir.display());
    }
    output::stdout(text.as_bytes());
    Ok(true)
}

fn listing(hooks: &HooksDir, driver: Driver) -> DriverListing {
    match hooks.scan(driver) {
        Ok(entries) => {
            let mut order = 0;
            let entries = entries
                .into_iter()
                .map(|e| {
                    let path = e.path.display().to_string();
                    let settings = match e.settings() {
                        Ok(s) if s.summary().is_empty() => None,
                        Ok(s) => Some(s.summary()),
                        Err(err) => Some(format!("invalid settings: {err}")),
                    };
                    match e.disposition {
                        Disposition::Hook(loader) => {
                            order += 1;
                            let broken = e
                                .settings()
                                .ok()
                                .and_then(|s| loader.check(&e.path, &s).err())
                                .map(|err| {
                                    let text = hooks_core::error_chain(&err);
                                    let prefix = format!("cannot load hook `{path}` ({}): ", loader.backend());
                                    text.strip_prefix(&prefix).map(str::to_owned).unwrap_or(text)
                                });
                            Entry {
                                path,
                                role: e.role,
                                order: Some(order),
                                backend: Some(loader.backend()),
                                skipped: None,
                                settings,
                                broken,
                                refused: None,
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
                            }
                        }
                        Disposition::Skipped(why) => Entry {
                            broken: None,
                            refused: None,
                            path,
                            role: e.role,
                            order: None,
                            backend: None,
                            skipped: Some(why),
                            settings: None,
                        },
                    }
                })
                .collect();
            DriverListing {
                driver,
                plugins_dir: None,
                entries,
                error: None,
            }
        }
        Err(e) => DriverListing {
            driver,
            plugins_dir: None,
            entries: Vec::new(),
            error: Some(format!("cannot read `{}`: {e}", hooks.drop_in_dir(driver).display())),
        },
    }
}
