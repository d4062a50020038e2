//! What can go wrong for a user, each with its exit code and a message that
//! says what to do.

use std::fmt;

use ferry_core::config::ConfigErrors;
use ferry_core::dbus::errors;

#[derive(Debug)]
pub enum FerryError {
    /// A config file that does not validate: every error, positioned.
    Config(ConfigErrors),
    /// Bad arguments or an unknown service.
    Usage(String),
    /// polkit refused an action.
    NotAuthorized(String),
    /// No helper on the bus (or no bus).
    HelperDown(String),
    /// A peer node did not answer in time.
    Unreachable(String),
    /// An action failed; the service may have been rolled back.
    Failed(String),
}

impl FerryError {
    pub fn exit_code(&self) -> u8 {
        match self {
            FerryError::Failed(_) => 1,
            FerryError::Config(_) | FerryError::Usage(_) => 2,
            FerryError::NotAuthorized(_) => 3,
            FerryError::HelperDown(_) => 4,
            FerryError::Unreachable(_) => 5,
        }
    }
}

impl fmt::Display for FerryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FerryError::Config(e) => write!(f, "{e}"),
            FerryError::Usage(m) => write!(f, "{m}"),
            FerryError::NotAuthorized(m) => write!(f, "not authorized: {m}"),
            FerryError::HelperDown(m) => write!(f, "{m}"),
            FerryError::Unreachable(m) => write!(f, "{m}"),
            FerryError::Failed(m) => write!(f, "{m}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, FerryError>;

impl From<zbus::Error> for FerryError {
    fn from(e: zbus::Error) -> Self {
        // Errors of the bus itself (no owner, policy) come as fdo errors.
        if let zbus::Error::FDO(fdo) = &e {
            return match fdo.as_ref() {
                zbus::fdo::Error::ServiceUnknown(m) | zbus::fdo::Error::NameHasNoOwner(m) => {
                    FerryError::HelperDown(format!(
                        "ferry-helper is not running on this node (nobody owns io.ferry.Helper1 on the \
                         system bus): start it (systemctl start ferry-helper) — {m}"
                    ))
                }
                zbus::fdo::Error::AccessDenied(m) => FerryError::NotAuthorized(format!(
                    "the system bus refused the call (is dbus-policy/io.ferry.Helper1.conf installed?): {m}"
                )),
                other => FerryError::Failed(other.to_string()),
            };
        }
        if let zbus::Error::MethodError(name, msg, _) = &e {
            let msg = msg.clone().unwrap_or_default();
            return match name.as_str() {
                errors::NOT_AUTHORIZED => FerryError::NotAuthorized(msg),
                errors::UNKNOWN_SERVICE => FerryError::Usage(msg),
                errors::INVALID_ARGUMENT => FerryError::Usage(msg),
                _ => {
                    let short = name.as_str().rsplit('.').next().unwrap_or(name.as_str());
                    FerryError::Failed(format!("{short}: {msg}"))
                }
            };
        }
        FerryError::Failed(e.to_string())
    }
}
