//! ferry-core: what the helper and the frontend share. Nothing privileged.
//!
//! - [`config`]: the service config model and its validation,
//! - [`status`]: resource states, merging and the status tree,
//! - [`dbus`]: bus names, object paths, error names and client proxies,
//! - [`docker_args`]: the argument checks of the docker passthrough.

pub mod config;
pub mod dbus;
pub mod docker_args;
pub mod helper_cli;
pub mod status;
