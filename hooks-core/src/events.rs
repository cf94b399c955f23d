//! Typed events for every driver, one enum per driver, whose policies come from
//! libvirt's table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Driver, HookEvent};

/// Why a guest was released: the extra argument of `release end` (qemu, libvirt ≥ 10.5).
///
/// ```
/// use virt_hooks_core::events::ReleaseReason;
/// assert_eq!(ReleaseReason::FromSnapshot.as_str(), "from snapshot");
/// assert_eq!("destroyed".parse::<ReleaseReason>().unwrap(), ReleaseReason::Destroyed);
/// ```
/// It serializes as the argument libvirt passes (`"from snapshot"`, `"-"`): one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
#[non_exhaustive]
pub enum ReleaseReason {
    /// `-`: no reason given (drivers other than qemu, and libvirt before 10.5).
    Unspecified,
    /// `unknown`
    Unknown,
    /// `shutdown`
    Shutdown,
    /// `destroyed`
    Destroyed,
    /// `crashed`
    Crashed,
    /// `migrated`
    Migrated,
    /// `saved`
    Saved,
    /// `failed`: the start failed and the driver cleaned up.
    Failed,
    /// `from snapshot`: one argument with a space.
    FromSnapshot,
    /// `daemon`
    Daemon,
}

impl ReleaseReason {
    const ALL: [ReleaseReason; 10] = [
        ReleaseReason::Unspecified,
        ReleaseReason::Unknown,
        ReleaseReason::Shutdown,
        ReleaseReason::Destroyed,
        ReleaseReason::Crashed,
        ReleaseReason::Migrated,
        ReleaseReason::Saved,
        ReleaseReason::Failed,
        ReleaseReason::FromSnapshot,
        ReleaseReason::Daemon,
    ];

    /// The argument libvirt passes.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Unspecified => "-",
            ReleaseReason::Unknown => "unknown",
            ReleaseReason::Shutdown => "shutdown",
            ReleaseReason::Destroyed => "destroyed",
            ReleaseReason::Crashed => "crashed",
            ReleaseReason::Migrated => "migrated",
            ReleaseReason::Saved => "saved",
            ReleaseReason::Failed => "failed",
            ReleaseReason::FromSnapshot => "from snapshot",
            ReleaseReason::Daemon => "daemon",
        }
    }
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a release reason libvirt never passes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown release reason `{0}`, expected one of -, unknown, shutdown, destroyed, crashed, migrated, saved, failed, from snapshot, daemon")]
pub struct UnknownReleaseReason(pub String);

impl From<ReleaseReason> for &'static str {
    fn from(r: ReleaseReason) -> Self {
        r.as_str()
    }
}

impl TryFrom<String> for ReleaseReason {
    type Error = UnknownReleaseReason;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for ReleaseReason {
    type Err = UnknownReleaseReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReleaseReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReleaseReason(s.to_owned()))
    }
}

/// Daemon events: no object, `/dev/null` on stdin, failures ignored.
///
/// ```
/// use virt_hooks_core::HookEvent;
/// use virt_hooks_core::events::DaemonEvent;
/// let ev = DaemonEvent::Reload;
/// assert_eq!([ev.object(), ev.op(), ev.subop(), ev.extra()], ["-", "reload", "begin", "SIGHUP"]);
/// assert_eq!(ev.input(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DaemonEvent {
    /// `- start - start`
    Start,
    /// `- shutdown - shutdown`
    Shutdown,
    /// `- reload begin SIGHUP`
    Reload,
}

impl HookEvent for DaemonEvent {
    fn driver(&self) -> Driver {
        Driver::Daemon
    }
    fn object(&self) -> &str {
        "-"
    }
    fn op(&self) -> &str {
        match self {
            DaemonEvent::Start => "start",
            DaemonEvent::Shutdown => "shutdown",
            DaemonEvent::Reload => "reload",
        }
    }
    fn subop(&self) -> &str {
        match self {
            DaemonEvent::Reload => "begin",
            _ => "-",
        }
    }
    fn extra(&self) -> &str {
        match self {
            DaemonEvent::Start => "start",
            DaemonEvent::Shutdown => "shutdown",
            DaemonEvent::Reload => "SIGHUP",
        }
    }
    fn input(&self) -> Option<&[u8]> {
        None
    }
}

/// Generates one driver's event enum: every variant carries the object name and the
/// document, `Release` also a reason; op and subop come from libvirt's table.
macro_rules! object_events {
    (
        $(#[$meta:meta])*
        $name:ident, $driver:expr, document = $doc:literal,
        { $( $(#[$vmeta:meta])* $variant:ident => $op:literal, $subop:literal ),* $(,)? }
        $( release: $(#[$rmeta:meta])* $release:ident )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "kebab-case")]
        #[non_exhaustive]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant {
                    /// The object's name (first argument).
                    name: String,
                    #[doc = $doc]
                    xml: String,
                },
            )*
            $(
                $(#[$rmeta])*
                $release {
                    /// The guest's name (first argument).
                    name: String,
                    #[doc = $doc]
                    xml: String,
                    /// The extra argument.
                    reason: ReleaseReason,
                },
            )?
        }

        impl $name {
            /// The object's name.
            pub fn name(&self) -> &str {
                match self {
                    $( $name::$variant { name, .. } => name, )*
                    $( $name::$release { name, .. } => name, )?
                }
            }

            /// The document passed on stdin.
            pub fn xml(&self) -> &str {
                match self {
                    $( $name::$variant { xml, .. } => xml, )*
                    $( $name::$release { xml, .. } => xml, )?
                }
            }
        }

        impl HookEvent for $name {
            fn driver(&self) -> Driver {
                $driver
            }
            fn object(&self) -> &str {
                self.name()
            }
            fn op(&self) -> &str {
                match self {
                    $( $name::$variant { .. } => $op, )*
                    $( $name::$release { .. } => "release", )?
                }
            }
            fn subop(&self) -> &str {
                match self {
                    $( $name::$variant { .. } => $subop, )*
                    $( $name::$release { .. } => "end", )?
                }
            }
            fn extra(&self) -> &str {
                match self {
                    $( $name::$release { reason, .. } => reason.as_str(), )?
                    #[allow(unreachable_patterns)]
                    _ => "-",
                }
            }
            fn input(&self) -> Option<&[u8]> {
                Some(self.xml().as_bytes())
            }
        }
    };
}

object_events! {
    /// QEMU/KVM guest events.
    ///
    /// ```
    /// use virt_hooks_core::HookEvent;
    /// use virt_hooks_core::events::{QemuEvent, ReleaseReason};
    /// let ev = QemuEvent::Release { name: "vm".into(), xml: String::new(), reason: ReleaseReason::FromSnapshot };
    /// assert_eq!([ev.op(), ev.subop(), ev.extra()], ["release", "end", "from snapshot"]);
    /// ```
    QemuEvent, Driver::Qemu, document = "The domain XML on stdin (ends with `</domain>\\n`).",
    {
        /// `prepare begin -`: before resources are allocated; a failure aborts the start.
        Prepare => "prepare", "begin",
        /// `start begin -`: before the guest's CPUs run; a failure aborts the start.
        Start => "start", "begin",
        /// `started begin -`: the guest runs; a failure tears it down.
        Started => "started", "begin",
        /// `stopped end -`: the guest stopped; failures are ignored.
        Stopped => "stopped", "end",
        /// `migrate begin -`: incoming migration; stdout may replace the XML.
        Migrate => "migrate", "begin",
        /// `restore begin -`: restore from a save image; stdout may replace the XML.
        Restore => "restore", "begin",
        /// `reconnect begin -`: the daemon found the guest running; a failure kills it.
        Reconnect => "reconnect", "begin",
    }
    release: /// `release end <reason>`: resources released; failures are ignored.
    Release
}

object_events! {
    /// Linux container events.
    LxcEvent, Driver::Lxc, document = "The domain XML on stdin (ends with `</domain>\\n`).",
    {
        /// `prepare begin -`
        Prepare => "prepare", "begin",
        /// `start begin -`
        Start => "start", "begin",
        /// `started begin -`
        Started => "started", "begin",
        /// `stopped end -`
        Stopped => "stopped", "end",
        /// `reconnect begin -`
        Reconnect => "reconnect", "begin",
    }
    release: /// `release end -` (lxc passes no reason: use [`ReleaseReason::Unspecified`]).
    Release
}

object_events! {
    /// Xen (libxl) guest events.
    LibxlEvent, Driver::Libxl, document = "The domain XML on stdin (ends with `</domain>\\n`).",
    {
        /// `prepare begin -`
        Prepare => "prepare", "begin",
        /// `start begin -`
        Start => "start", "begin",
        /// `started begin -`
        Started => "started", "begin",
        /// `stopped end -`
        Stopped => "stopped", "end",
        /// `migrate begin -` (filter)
        Migrate => "migrate", "begin",
        /// `reconnect begin -`
        Reconnect => "reconnect", "begin",
    }
    release: /// `release end -`
    Release
}

object_events! {
    /// bhyve guest events.
    BhyveEvent, Driver::Bhyve, document = "The domain XML on stdin (ends with `</domain>\\n`).",
    {
        /// `prepare begin -`
        Prepare => "prepare", "begin",
        /// `start begin -`
        Start => "start", "begin",
        /// `started begin -`
        Started => "started", "begin",
        /// `stopped end -`
        Stopped => "stopped", "end",
    }
    release: /// `release end -`
    Release
}

object_events! {
    /// Virtual network events; stdin is `<hookData>` XML with no trailing newline.
    ///
    /// ```
    /// use virt_hooks_core::{FailurePolicy, HookEvent};
    /// use virt_hooks_core::events::NetworkEvent;
    /// let ev = NetworkEvent::PortDeleted { name: "default".into(), xml: "<hookData/>".into() };
    /// assert_eq!(ev.op(), "port-deleted");
    /// assert_eq!(ev.on_failure(), FailurePolicy::Ignore);
    /// ```
    NetworkEvent, Driver::Network, document = "The `<hookData>` XML on stdin.",
    {
        /// `start begin -`
        Start => "start", "begin",
        /// `started begin -`
        Started => "started", "begin",
        /// `stopped end -`
        Stopped => "stopped", "end",
        /// `port-created begin -`
        PortCreated => "port-created", "begin",
        /// `port-deleted begin -`
        PortDeleted => "port-deleted", "begin",
        /// `updated begin -`: a failure is reported, nothing is rolled back.
        Updated => "updated", "begin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{libvirt_event_spec, RawEvent};

    fn all_typed() -> Vec<Box<dyn HookEvent>> {
        let (n, x) = (String::from("g"), String::from("<domain/>\n"));
        let mut v: Vec<Box<dyn HookEvent>> = vec![
            Box::new(DaemonEvent::Start),
            Box::new(DaemonEvent::Shutdown),
            Box::new(DaemonEvent::Reload),
        ];
        macro_rules! push {
            ($ty:ident: $($var:ident),*) => {
                $( v.push(Box::new($ty::$var { name: n.clone(), xml: x.clone() })); )*
                v.push(Box::new($ty::Release { name: n.clone(), xml: x.clone(), reason: ReleaseReason::Failed }));
            };
        }
        push!(QemuEvent: Prepare, Start, Started, Stopped, Migrate, Restore, Reconnect);
        push!(LxcEvent: Prepare, Start, Started, Stopped, Reconnect);
        push!(LibxlEvent: Prepare, Start, Started, Stopped, Migrate, Reconnect);
        push!(BhyveEvent: Prepare, Start, Started, Stopped);
        for ev in [
            NetworkEvent::Start {
                name: n.clone(),
                xml: x.clone(),
            },
            NetworkEvent::Started {
                name: n.clone(),
                xml: x.clone(),
            },
            NetworkEvent::Stopped {
                name: n.clone(),
                xml: x.clone(),
            },
            NetworkEvent::PortCreated {
                name: n.clone(),
                xml: x.clone(),
            },
            NetworkEvent::PortDeleted {
                name: n.clone(),
                xml: x.clone(),
            },
            NetworkEvent::Updated {
                name: n.clone(),
                xml: x.clone(),
            },
        ] {
            v.push(Box::new(ev));
        }
        v
    }

    #[test]
    fn every_typed_event_is_a_table_row_with_its_subop() {
        for ev in all_typed() {
            let spec = libvirt_event_spec(ev.driver(), ev.op()).unwrap_or_else(|| panic!("{ev:?} not in table"));
            assert_eq!(ev.subop(), spec.subop, "{ev:?}");
            assert_eq!(ev.on_failure(), spec.policy);
            assert_eq!(ev.filters_input(), spec.filters);
            assert_eq!(ev.input().is_none(), ev.driver() == Driver::Daemon);
        }
    }

    #[test]
    fn typed_events_equal_their_raw_form() {
        for ev in all_typed() {
            let raw = RawEvent::from_os_args(ev.driver(), ev.os_args().map(ToOwned::to_owned))
                .with_input(ev.input().map(<[u8]>::to_vec));
            assert_eq!(raw.os_args(), ev.os_args());
            assert_eq!(raw.on_failure(), ev.on_failure());
            assert_eq!(raw.filters_input(), ev.filters_input());
            assert_eq!(raw.input(), ev.input());
        }
    }

    #[test]
    fn release_reason_round_trips() {
        for r in ReleaseReason::ALL {
            assert_eq!(r.as_str().parse::<ReleaseReason>(), Ok(r));
        }
        assert!("from-snapshot".parse::<ReleaseReason>().is_err());
        // One spelling: JSON carries what libvirt passes.
        assert_eq!(
            serde_json::to_value(ReleaseReason::FromSnapshot).unwrap(),
            "from snapshot"
        );
        assert_eq!(serde_json::to_value(ReleaseReason::Unspecified).unwrap(), "-");
        for r in ReleaseReason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ReleaseReason>(&json).unwrap(), r);
        }
        assert!(serde_json::from_str::<ReleaseReason>("\"from-snapshot\"").is_err());
    }

    #[test]
    fn events_serialize_with_their_op() {
        let ev = QemuEvent::Prepare {
            name: "a".into(),
            xml: "<domain/>".into(),
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["op"], "prepare");
        let back: QemuEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }
}
