//! The hypervisor drivers that call hooks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A libvirt driver: the name of its hook script (`/etc/libvirt/hooks/<driver>`).
///
/// ```
/// use virt_hooks_core::Driver;
/// assert_eq!(Driver::Qemu.as_str(), "qemu");
/// assert_eq!("network".parse::<Driver>().unwrap(), Driver::Network);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Driver {
    /// The daemon itself (`libvirtd`/`virtqemud` start, reload, shutdown).
    Daemon,
    /// QEMU/KVM guests.
    Qemu,
    /// Linux containers.
    Lxc,
    /// Xen through libxl.
    Libxl,
    /// FreeBSD bhyve guests.
    Bhyve,
    /// Virtual networks.
    Network,
}

impl Driver {
    /// Every driver, in the order `hookctl list` shows them.
    pub const ALL: [Driver; 6] = [
        Driver::Daemon,
        Driver::Qemu,
        Driver::Lxc,
        Driver::Libxl,
        Driver::Bhyve,
        Driver::Network,
    ];

    /// The script name libvirt uses for this driver.
    pub const fn as_str(self) -> &'static str {
        match self {
            Driver::Daemon => "daemon",
            Driver::Qemu => "qemu",
            Driver::Lxc => "lxc",
            Driver::Libxl => "libxl",
            Driver::Bhyve => "bhyve",
            Driver::Network => "network",
        }
    }

    /// Whether the driver's objects are guests (domains), whose hooks get domain XML.
    pub const fn is_domain(self) -> bool {
        matches!(self, Driver::Qemu | Driver::Lxc | Driver::Libxl | Driver::Bhyve)
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no known driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown driver `{0}`, expected one of daemon, qemu, lxc, libxl, bhyve, network")]
pub struct UnknownDriver(pub String);

impl FromStr for Driver {
    type Err = UnknownDriver;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Driver::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDriver(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_driver_name() {
        for d in Driver::ALL {
            assert_eq!(d.as_str().parse::<Driver>(), Ok(d));
        }
    }

    #[test]
    fn unknown_driver_names_the_input() {
        let err = "xen".parse::<Driver>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown driver `xen`, expected one of daemon, qemu, lxc, libxl, bhyve, network"
        );
    }
}
