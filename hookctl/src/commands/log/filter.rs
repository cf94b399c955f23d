//! The filters: which events match `--object`, `--driver`, `--op`, `--plugin`,
//! `--failed KIND` and `--since`/`--until`, and how a plugin failed.

use std::path::Path;
use std::time::SystemTime;

use virt_hooks_core::Driver;

use super::FailedKind;
use crate::audit::line::{AuditLine, HookEntry};

/// How a plugin failed, as told from its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// It ran and said no: a non-zero exit status.
    Refused,
    /// It never ran as itself: refused by the trust rule, not loadable, not executable
    /// (exit 126/127 from its exec), no time left in the event's budget.
    NotRun,
    /// It ran and broke: timed out, killed by a signal, crashed, printed a bad document.
    Error,
}

impl Failure {
    /// From the `status` hookctl wrote (`output::status`): `exit status N`, `exit status
    /// 0, but …`, `could not run: …`, `timed out after …`, `fatal signal N`, `crashed: …`.
    pub(super) fn of(status: &str) -> Failure {
        if status.starts_with("could not run") {
            return Failure::NotRun;
        }
        match status
            .strip_prefix("exit status ")
            .map(|rest| rest.split([' ', ',']).next())
        {
            // The shell's and the exec backend's "cannot execute" and "not found".
            Some(Some("126" | "127")) => Failure::NotRun,
            Some(Some("0")) | None => Failure::Error,
            Some(_) => Failure::Refused,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::NotRun => "not run",
            Failure::Error => "error",
        }
    }

    fn filtered_as(self) -> FailedKind {
        match self {
            Failure::Refused => FailedKind::Refused,
            Failure::NotRun => FailedKind::NotRun,
            Failure::Error => FailedKind::Error,
        }
    }
}

/// How `log` reads an audit line ([`AuditLine`], as the dispatcher writes it).
impl AuditLine {
    /// How `h` failed, and whether the event went on regardless (an optional plugin, or
    /// an event that succeeded all the same: a failure libvirt or the dispatcher ignores).
    pub(super) fn failure(&self, h: &HookEntry) -> Option<(Failure, bool)> {
        (!h.success).then(|| {
            (
                Failure::of(&h.status),
                h.optional || self.result == "ok" || self.ignores_failures(),
            )
        })
    }

    /// Whether libvirt ignores a failure at this event (`stopped`, `release`, the
    /// daemon's): the dispatcher exits 1 there, and the operation went on all the same.
    pub(super) fn ignores_failures(&self) -> bool {
        self.policy == "ignore"
    }

    /// The plugin that failed the event and how, when it failed.
    pub(super) fn failed_by(&self) -> Option<(&HookEntry, Failure)> {
        if self.result == "ok" {
            return None;
        }
        let h = (self.hooks.iter().find(|h| !h.success && !h.optional))
            .or_else(|| self.hooks.iter().find(|h| !h.success))?;
        Some((h, Failure::of(&h.status)))
    }

    /// Whether the event passes `--failed KIND` (for every plugin, or with `--plugin`
    /// for those `named`).
    fn failed_as(&self, kind: FailedKind, named: Option<&dyn Fn(&str) -> bool>) -> bool {
        let accepts = |failure: Failure, ignored: bool| match kind {
            FailedKind::Failed | FailedKind::All => true,
            FailedKind::Ignored => ignored,
            other => !ignored && other == failure.filtered_as(),
        };
        // A crash line: the dispatcher itself died in a native plugin.
        if let Some(crashed) = &self.crashed_plugin {
            if named.is_none_or(|named| named(crashed)) && accepts(Failure::Error, false) {
                return true;
            }
        }
        let Some(named) = named else {
            return match kind {
                FailedKind::Failed => self.result != "ok",
                FailedKind::All => self.result != "ok" || self.hooks.iter().any(|h| !h.success),
                FailedKind::Ignored => self.hooks.iter().any(|h| self.failure(h).is_some_and(|(_, i)| i)),
                other => !self.ignores_failures() && self.failed_by().is_some_and(|(_, f)| f.filtered_as() == other),
            };
        };
        self.hooks
            .iter()
            .filter(|h| named(&h.name))
            .filter_map(|h| self.failure(h))
            .any(|(failure, ignored)| accepts(failure, ignored))
    }
}

/// The filters, and how to show what passes them.
pub(super) struct Ctx<'a> {
    pub(super) hooks_dir: &'a Path,
    pub(super) json: bool,
    pub(super) object: Option<String>,
    pub(super) driver: Option<Driver>,
    pub(super) op: Option<String>,
    pub(super) plugin: Option<String>,
    pub(super) failed: Option<FailedKind>,
    pub(super) since: Option<SystemTime>,
    pub(super) until: Option<SystemTime>,
    /// `--plugins`: a row per plugin run.
    pub(super) plugins: bool,
}

impl Ctx<'_> {
    pub(super) fn named(&self, name: &str) -> bool {
        self.plugin
            .as_deref()
            .is_some_and(|p| !p.is_empty() && Path::new(name).ends_with(p))
    }

    pub(super) fn in_time(&self, t: SystemTime) -> bool {
        self.since.is_none_or(|since| t >= since) && self.until.is_none_or(|until| t <= until)
    }

    pub(super) fn matches(&self, r: &AuditLine, time: SystemTime) -> bool {
        if !self.in_time(time)
            || self.driver.is_some_and(|d| r.driver != d.as_str())
            || self.object.as_deref().is_some_and(|o| r.object != o)
        {
            return false;
        }
        if let Some(op) = &self.op {
            let matched = match op.split_once('/') {
                Some((op, subop)) => r.op == op && r.subop == subop,
                None => r.op == *op,
            };
            if !matched {
                return false;
            }
        }
        let named = |name: &str| self.named(name);
        let named: Option<&dyn Fn(&str) -> bool> = self.plugin.is_some().then_some(&named);
        match (self.failed, named) {
            (Some(kind), named) => r.failed_as(kind, named),
            (None, Some(named)) => {
                r.hooks.iter().any(|h| named(&h.name)) || r.crashed_plugin.as_deref().is_some_and(named)
            }
            (None, None) => true,
        }
    }
}
