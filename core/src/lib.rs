//! ferry-core: what the helper and the frontend share. Nothing privileged.
//!
//! - [`config`]: the service config model and its validation,
//! - [`status`]: resource states, merging and the status tree,
//! - [`dbus`]: bus names, object paths, error names and client proxies.

pub mod config;
pub mod dbus;
pub mod helper_cli;
pub mod status;
