//! `check --remote`: every host with credd destinations is connected to (host key verified, as
//! a dry run does), its credmon settings are read with `condor_config_val`, and every credd name
//! it would receive is judged by them (`crate::credd_names`).
//!
//! Must never write or signal anything remotely, nor touch the state database.

use crate::credd_names::{self, Ignored, ScheddRead};
use crate::deliver;
use crate::inventory::{DestinationKind, Inventory};

/// What one host came to.
#[derive(Debug)]
pub struct HostNames {
    pub host: String,
    /// The settings, or why the host could not be read (connection, host key, login).
    pub read: Result<ScheddRead, String>,
    /// The inventory's spool for the host.
    pub spool: Option<String>,
    /// (service, name) of every name the host's credmon would ignore.
    pub ignored: Vec<(String, Ignored)>,
    /// How many credd names the host would receive.
    pub names: usize,
}

/// Reads every credd host's settings, one host at a time, and judges its names.
pub fn check_remote(inv: &Inventory) -> Vec<HostNames> {
    inv.hosts
        .values()
        .filter_map(|host| {
            // (service, stem, is handle) of every credd destination on the host.
            let names: Vec<(String, String, bool)> = inv
                .services
                .values()
                .flat_map(|s| {
                    s.destinations.iter().filter(|d| d.host == host.name).filter_map(move |d| match &d.kind {
                        DestinationKind::Credd => Some((s.name.clone(), s.oauth_service.clone(), false)),
                        DestinationKind::Handle { name } => Some((s.name.clone(), s.handle_stem(name), true)),
                        _ => None,
                    })
                })
                .collect();
            (!names.is_empty()).then(|| {
                let read = super::plan::host_target(host).and_then(|target| deliver::read_schedd(&target).map_err(|e| super::error_chain(&e)));
                let ignored = match read.as_ref().map(ScheddRead::settings) {
                    Ok(Ok(settings)) => names
                        .iter()
                        .filter_map(|(service, stem, handle)| credd_names::judge(&settings, stem, *handle).map(|i| (service.clone(), i)))
                        .collect(),
                    _ => Vec::new(),
                };
                HostNames { host: host.name.clone(), read, spool: host.spool.clone(), ignored, names: names.len() }
            })
        })
        .collect()
}
