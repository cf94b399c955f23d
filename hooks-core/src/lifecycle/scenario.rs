//! What a sequence is made of: the guest, the scenarios and their phases, and the driver's
//! own work between the phases.

use super::*;

/// A guest (or network) as the hooks see it: driver, name and XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// A domain driver (qemu, lxc, libxl, bhyve) or network.
    pub driver: Driver,
    /// Its name, the hooks' first argument.
    pub name: String,
    /// Its XML, the hooks' stdin.
    pub xml: String,
}

impl Guest {
    /// A guest.
    pub fn new(driver: Driver, name: impl Into<String>, xml: impl Into<String>) -> Self {
        Guest {
            driver,
            name: name.into(),
            xml: xml.into(),
        }
    }
}

/// A whole sequence libvirt runs for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Scenario {
    /// prepare → start → started, with stopped + `release failed` cleanup on failure.
    Start,
    /// stopped → release.
    Stop,
    /// restore (filter) → start sequence.
    Restore,
    /// migrate (filter) → start sequence, on the destination.
    MigrateIn,
    /// stopped → `release migrated`, on the source.
    MigrateOut,
    /// reconnect at daemon start; a failure kills the guest.
    Reconnect,
    /// `daemon - start - start`, then reconnect for each running guest.
    DaemonStart,
    /// `daemon - reload begin SIGHUP`, then the presence cache is refreshed.
    DaemonReload,
    /// `daemon - shutdown - shutdown`.
    DaemonShutdown,
}

const GUEST_SCENARIOS: [Scenario; 6] = [
    Scenario::Start,
    Scenario::Stop,
    Scenario::Restore,
    Scenario::MigrateIn,
    Scenario::MigrateOut,
    Scenario::Reconnect,
];
const DAEMON_SCENARIOS: [Scenario; 3] = [Scenario::DaemonStart, Scenario::DaemonReload, Scenario::DaemonShutdown];

impl Scenario {
    /// The name `hookctl simulate` uses (daemon scenarios are `start`, `reload`, `shutdown`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Scenario::Start | Scenario::DaemonStart => "start",
            Scenario::Stop => "stop",
            Scenario::Restore => "restore",
            Scenario::MigrateIn => "migrate-in",
            Scenario::MigrateOut => "migrate-out",
            Scenario::Reconnect => "reconnect",
            Scenario::DaemonReload => "reload",
            Scenario::DaemonShutdown => "shutdown",
        }
    }

    /// The scenarios a driver has.
    pub fn all_for(driver: Driver) -> &'static [Scenario] {
        if driver == Driver::Daemon {
            &DAEMON_SCENARIOS
        } else {
            &GUEST_SCENARIOS
        }
    }

    /// Parses a scenario name for a driver.
    ///
    /// # Errors
    /// [`UnknownScenario`], whose message lists the scenarios the driver has.
    pub fn parse_for(driver: Driver, name: &str) -> Result<Scenario, UnknownScenario> {
        Self::all_for(driver)
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownScenario {
                driver,
                name: name.to_owned(),
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scenario {
    type Err = UnknownScenario;
    /// A guest scenario's name (`start`, `migrate-in`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::parse_for(Driver::Qemu, s)
    }
}

/// One hook event of a sequence, by its operation: where a driver does its own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Phase {
    /// `migrate`: the incoming guest's XML, filtered.
    Migrate,
    /// `restore`: the restored guest's XML, filtered.
    Restore,
    /// `prepare`: before resources are allocated.
    Prepare,
    /// `start`: before the guest is launched.
    Start,
    /// `started`: the guest runs.
    Started,
    /// `stopped`: the guest has stopped.
    Stopped,
    /// `release`: its resources are released.
    Release,
    /// `reconnect`: the daemon found it running.
    Reconnect,
}

impl Phase {
    /// The operation, libvirt's second argument.
    pub const fn op(self) -> &'static str {
        match self {
            Phase::Migrate => "migrate",
            Phase::Restore => "restore",
            Phase::Prepare => "prepare",
            Phase::Start => "start",
            Phase::Started => "started",
            Phase::Stopped => "stopped",
            Phase::Release => "release",
            Phase::Reconnect => "reconnect",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op())
    }
}

/// What a driver does between the hook events of a sequence: allocate after `prepare`,
/// launch after `start`, use the filtered XML after `migrate`, ...
///
/// ```
/// use async_trait::async_trait;
/// use virt_hooks_core::{block_on, Driver, DriverActions, Guest, Lifecycle, LifecycleError, Phase, RegistryBuilder};
///
/// #[derive(Default)]
/// struct Launch { pid: Option<u32> }
///
/// #[async_trait]
/// impl DriverActions for Launch {
///     type Error = std::io::Error;
///     async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), Self::Error> {
///         if phase == Phase::Start {
///             self.pid = Some(4242); // spawn the VMM with guest.xml here
///         }
///         Ok(())
///     }
///     async fn undo(&mut self, _done: &[Phase], _guest: &Guest) {
///         if let Some(_pid) = self.pid.take() { /* kill it */ }
///     }
/// }
///
/// let registry = RegistryBuilder::new().build();
/// let guest = Guest::new(Driver::Qemu, "web1", "<domain/>\n");
/// let mut launch = Launch::default();
/// let seq = block_on(Lifecycle::new(&registry).start_with(&guest, &mut launch)).unwrap();
/// assert!(seq.proceeds());
/// assert_eq!(launch.pid, Some(4242));
/// ```
#[async_trait]
pub trait DriverActions: Send {
    /// The driver's own error, returned unchanged in [`LifecycleError::Driver`].
    type Error: Send;

    /// Runs after the hooks of `phase` let the operation go on. `guest` carries the XML
    /// the hooks ended with (after `migrate` or `restore`, the filtered one).
    ///
    /// An error stops a start: [`DriverActions::undo`] runs for the phases before this
    /// one (if any did work), then the cleanup hooks. What this call itself had half
    /// done is its own to clean up before it returns the error. An error after
    /// `migrate` or `restore` ends the sequence before anything started: no undo, no
    /// cleanup hooks. In a stop, an error does not stop the sequence.
    async fn after(&mut self, phase: Phase, guest: &Guest) -> Result<(), Self::Error>;

    /// A start failed (a hook refused, or [`DriverActions::after`] failed) after the work
    /// of `done` was in place (phases in order; never empty): undo it. Runs once, before
    /// the cleanup hooks (`stopped`, `release failed`). After a failed reconnect, `done`
    /// is `[Reconnect]`: stop the guest that was found running.
    async fn undo(&mut self, done: &[Phase], guest: &Guest);
}

/// No driver work: what [`Lifecycle::start`] and the other plain sequences use.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoActions;

#[async_trait]
impl DriverActions for NoActions {
    type Error = Infallible;
    async fn after(&mut self, _phase: Phase, _guest: &Guest) -> Result<(), Infallible> {
        Ok(())
    }
    async fn undo(&mut self, _done: &[Phase], _guest: &Guest) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_typed_errors() {
        let err = Scenario::parse_for(Driver::Daemon, "migrate-in").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown scenario `migrate-in` for daemon, expected one of start, reload, shutdown"
        );
        assert_eq!("migrate-in".parse::<Scenario>(), Ok(Scenario::MigrateIn));
    }
}
