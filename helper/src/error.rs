//! The helper's typed errors, each a named D-Bus error
//! (`io.ferry.Helper1.Error.<Variant>`), so callers can tell a denial from a
//! busy mount from a taken address without parsing text.

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.ferry.Helper1.Error")]
pub enum HelperError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// polkit said no (or the caller could not be identified).
    NotAuthorized(String),
    UnknownService(String),
    /// A method argument the helper will not accept.
    InvalidArgument(String),
    /// A config text that does not validate (InstallConfig).
    InvalidConfig(String),
    /// Another host answers for the service address: the service may be
    /// running elsewhere.
    AddressInUse(String),
    /// Another node holds the service's disk lease.
    LeaseHeld(String),
    /// The resource may not change state now: the order of the service's
    /// resources forbids it (the message says which resource and why).
    OutOfOrder(String),
    /// The service's docker daemon is not running.
    DaemonNotRunning(String),
    /// The resource is in use and could not be released.
    Busy(String),
    /// A driver step failed; the message says which command and why.
    Failed(String),
    /// Another caller holds the service's lock (Service.Lock); the message
    /// names it: uid, pid and command, since when.
    Locked(String),
    /// The caller's lock was broken while it was idle (Service.BreakLock):
    /// it no longer holds the service, and must not act as if it did.
    LockBroken(String),
}

pub type Result<T> = std::result::Result<T, HelperError>;

impl HelperError {
    pub fn failed(msg: impl Into<String>) -> Self {
        HelperError::Failed(msg.into())
    }

    /// The D-Bus error name's last element, for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            HelperError::ZBus(_) => "ZBus",
            HelperError::NotAuthorized(_) => "NotAuthorized",
            HelperError::UnknownService(_) => "UnknownService",
            HelperError::InvalidArgument(_) => "InvalidArgument",
            HelperError::InvalidConfig(_) => "InvalidConfig",
            HelperError::AddressInUse(_) => "AddressInUse",
            HelperError::LeaseHeld(_) => "LeaseHeld",
            HelperError::OutOfOrder(_) => "OutOfOrder",
            HelperError::DaemonNotRunning(_) => "DaemonNotRunning",
            HelperError::Busy(_) => "Busy",
            HelperError::Failed(_) => "Failed",
            HelperError::Locked(_) => "Locked",
            HelperError::LockBroken(_) => "LockBroken",
        }
    }

    pub fn message(&self) -> String {
        match self {
            HelperError::ZBus(e) => e.to_string(),
            HelperError::NotAuthorized(m)
            | HelperError::UnknownService(m)
            | HelperError::InvalidArgument(m)
            | HelperError::InvalidConfig(m)
            | HelperError::AddressInUse(m)
            | HelperError::LeaseHeld(m)
            | HelperError::OutOfOrder(m)
            | HelperError::DaemonNotRunning(m)
            | HelperError::Busy(m)
            | HelperError::Failed(m)
            | HelperError::Locked(m)
            | HelperError::LockBroken(m) => m.clone(),
        }
    }
}

impl From<std::io::Error> for HelperError {
    fn from(e: std::io::Error) -> Self {
        HelperError::Failed(e.to_string())
    }
}
