//! The record of a sequence: each step's report and how it went, and the verdict.

use super::*;

/// How one step of a sequence went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    /// Every hook succeeded.
    Ok,
    /// A hook failed and libvirt ignores it (or reports it without rollback).
    FailureIgnored,
    /// A hook failed and the operation stops here.
    Fatal,
}

/// One event of a sequence.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the hooks did.
    pub report: Report,
    /// How it went.
    pub result: StepResult,
    /// Whether the driver ran it to clean up after a failure.
    pub cleanup: bool,
}

/// The end of a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The operation goes through.
    Proceed,
    /// The operation is refused (the guest does not start, the restore fails, ...).
    Aborted {
        /// libvirt's message for the failure.
        message: String,
        /// The hook that refused; `None` when the driver's own action failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
    },
    /// The guest is killed (a failed reconnect).
    Killed {
        /// libvirt's message for the failure.
        message: String,
        /// The hook that failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
    },
}

/// A whole sequence's record.
#[derive(Debug, Clone, Serialize)]
pub struct Sequence {
    /// What was run.
    pub scenario: Scenario,
    /// Each event, in order.
    pub steps: Vec<Step>,
    /// What libvirt would do.
    pub verdict: Verdict,
    /// For restore/migrate-in: the XML the guest starts with (after filters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    /// Whether it was cancelled ([`Lifecycle::cancel_with`]): its last step is the
    /// event that was stopped, and nothing ran after it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

impl Sequence {
    /// Whether the operation goes through.
    pub fn proceeds(&self) -> bool {
        self.verdict == Verdict::Proceed
    }

    /// Every failure libvirt ignores, in order (a `stopped` hook that failed, ...).
    pub fn ignored_failures(&self) -> impl Iterator<Item = &crate::HookRecord> {
        self.steps
            .iter()
            .filter(|s| s.result == StepResult::FailureIgnored)
            .flat_map(|s| s.report.hooks.iter().filter(|r| !r.success))
    }
}
