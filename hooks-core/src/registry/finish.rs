//! The state of an object after its last event, and after a refused event that opened
//! a lifecycle with no last event to follow.

use super::*;

impl Registry {
    /// The state roots of this registry's hooks dirs (each once), with the hooks that
    /// have a directory there for the event's object.
    pub(super) fn state_dirs(&self, event: &dyn HookEvent) -> Vec<(&crate::StateRoot, Vec<std::ffi::OsString>)> {
        let object = EventArgs::new(event.os_args());
        let mut roots: Vec<(&crate::StateRoot, Vec<std::ffi::OsString>)> = Vec::new();
        for source in &self.inner.sources {
            let Source::Dir(dir) = source else { continue };
            let Some(root) = dir.state_root() else { continue };
            if !roots.iter().any(|(r, _)| r.path() == root.path()) {
                roots.push((root, root.hooks_of(event.driver(), object.get(0))));
            }
        }
        roots
    }

    /// After a failed `restore`/`migrate begin`, which libvirt follows with no
    /// `release`: the state directories made during it are abandoned
    /// ([`StateRoot::abandon`](crate::state::StateRoot::abandon)) rather than left live for a release that never
    /// comes.
    pub(super) fn abandon_state(
        &self,
        event: &dyn HookEvent,
        before: &[(&crate::StateRoot, Vec<std::ffi::OsString>)],
        report: &mut Report,
    ) {
        let object = EventArgs::new(event.os_args());
        let why = format!(
            "{op} {subop} failed, and libvirt sends no last event after a refused {op}: nothing undid what the plugin recorded",
            op = event.op(),
            subop = event.subop()
        );
        for (root, had) in before {
            match root.abandon(event.driver(), object.get(0), had, &why) {
                Ok(kept) => report.state_kept.extend(kept),
                Err(e) => {
                    tracing::error!(error = %e, "state directory made by a failed event not handled");
                    report.state_errors.push(e.to_string());
                }
            }
        }
    }

    /// After an object's last event: its state directories go, except those of hooks
    /// that failed the event or are no longer in their directory (set aside, renamed,
    /// removed: nothing undid what they recorded), kept for the operator and listed in
    /// the report.
    pub(super) fn finish_state(&self, event: &dyn HookEvent, report: &mut Report) {
        let object = EventArgs::new(event.os_args());
        // One line: the status and the first line the hook printed.
        let note = |r: &HookRecord| {
            let status = match &r.status {
                crate::StatusRecord::Exited { code } => format!("exit status {code}"),
                crate::StatusRecord::Signaled { signal } => format!("killed by signal {signal}"),
                crate::StatusRecord::TimedOut { after_ms } => format!("timed out after {after_ms} ms"),
                crate::StatusRecord::Crashed { message } => format!("crashed: {message}"),
                crate::StatusRecord::Failed { message } => format!("could not run: {message}"),
            };
            let said: String = crate::outcome::explaining_line(&r.log, r.stderr.as_bytes())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            let sep = if said.is_empty() { "" } else { ": " };
            let line = format!("{} {} failed: {status}{sep}{said}", event.op(), event.subop());
            line.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(400)
                .collect::<String>()
        };
        let mut kept = Vec::new();
        let mut errors = Vec::new();
        let mut finished: SmallVec<[&std::path::Path; 2]> = SmallVec::new();
        for source in &self.inner.sources {
            let Source::Dir(dir) = source else { continue };
            let Some(root) = dir.state_root() else { continue };
            // Two dirs sharing a root are one set of objects; no directory, no work (the
            // scan below is a second read of the hooks dir).
            if finished.contains(&root.path()) || !root.holds(event.driver(), object.get(0)) {
                continue;
            }
            finished.push(root.path());
            // A directory is its hook's, in this dir: a hook of the same file name
            // elsewhere that failed is not a reason to keep it.
            let scanned = dir.scan(event.driver()).ok();
            let paths: Option<Vec<String>> = scanned
                .as_ref()
                .map(|entries| entries.iter().map(|e| e.path.display().to_string()).collect());
            // Hooks that would run here now: a directory of none of them belongs to a
            // plugin set aside, renamed or removed while its object ran.
            let present: Option<Vec<std::ffi::OsString>> = scanned.as_ref().map(|entries| {
                entries
                    .iter()
                    .filter(|e| !matches!(e.disposition, crate::loader::Disposition::Skipped(_)))
                    .filter_map(|e| e.path.file_name().map(ToOwned::to_owned))
                    .collect()
            });
            // Whether the hook here by that name no longer asks for state: one that had a
            // record ran without it, and undid nothing of it. Read only for a hook that ran
            // and has a record, never for every entry of the dir.
            let stateless = |name: &std::ffi::OsStr| {
                (scanned.iter().flatten())
                    .find(|e| e.path.file_name() == Some(name))
                    .is_some_and(|e| e.settings().is_ok_and(|s| !s.state))
            };
            let failed = |name: &std::ffi::OsStr| {
                let own = |r: &&HookRecord| match &paths {
                    Some(paths) => paths
                        .iter()
                        .any(|p| r.name == *p && std::path::Path::new(p).file_name() == Some(name)),
                    None => std::path::Path::new(&r.name).file_name() == Some(name),
                };
                if let Some(why) = report.hooks.iter().filter(|r| !r.success).find(own).map(note) {
                    return Some(why);
                }
                // Nothing can undo what it did but the plugin itself: keep its record.
                let gone = present.as_ref().is_some_and(|p| !p.iter().any(|n| n == name));
                // There, but skipped (no execute bit, a dangling link): it could not run.
                let skipped = (scanned.iter().flatten())
                    .find(|e| e.path.file_name() == Some(name))
                    .and_then(|e| match e.disposition {
                        crate::loader::Disposition::Skipped(why) => Some(why),
                        _ => None,
                    });
                if let (true, Some(why)) = (gone, skipped) {
                    return Some(format!(
                        "{} {}: its plugin is there but could not run ({why}), so nothing undid what it recorded",
                        event.op(),
                        event.subop()
                    ));
                }
                if gone {
                    return Some(format!(
                        "{} {}: its plugin is no longer in {} (set aside, renamed or removed while the object \
                         ran), so nothing undid what it recorded",
                        event.op(),
                        event.subop(),
                        crate::text::escape(&dir.root().display().to_string())
                    ));
                }
                // A plugin that did not run at this last event (its `[match]` did not take
                // it: another op, or no document to evaluate) undid nothing: a record it
                // wrote is kept; an empty directory goes.
                let ran = report.hooks.iter().any(|r| own(&r));
                let recorded = root
                    .dir(event.driver(), object.get(0), name)
                    .ok()
                    .and_then(|d| std::fs::read_dir(d).ok())
                    .is_some_and(|mut entries| entries.next().is_some());
                if !recorded {
                    return None;
                }
                if !ran {
                    return Some(format!(
                        "{} {}: its plugin did not run at it (its [match] did not take the event), so nothing \
                         undid what it recorded",
                        event.op(),
                        event.subop()
                    ));
                }
                stateless(name).then(|| {
                    format!(
                        "{} {}: its plugin's settings no longer say `state = true`, so it ran without this \
                         record and undid nothing of it",
                        event.op(),
                        event.subop()
                    )
                })
            };
            match root.finish(event.driver(), object.get(0), &failed) {
                Ok(dirs) => kept.extend(dirs),
                Err(e) => {
                    tracing::error!(error = %e, "state directory not removed after the object's last event");
                    errors.push(e.to_string());
                }
            }
        }
        for dir in &kept {
            tracing::warn!(dir = %dir.display(), "state directory kept: its hook failed the object's last event, or is gone");
        }
        report.state_kept = kept;
        report.state_errors = errors;
    }
}
