//! What one cycle came to, in the terms the daemon, the metrics and health read it.
//!
//! Owns the small value types shared by the cycle (which produces them) and by the daemon and
//! metrics (which fold them): the [`Stage`] at which a service stopped, and one
//! [`CycleOutcome`] per cycle, which says first of all whether the cycle ran at all. It sits
//! below `cycle`, `daemon` and `metrics` so that none of them borrows a type from another.
//!
//! Never: does IO; holds a token or anything built from one (reasons come from product errors,
//! which are secret-free by construction).

use std::time::Duration;

/// The stage at which a service stopped (also the `stage` label of metrics).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The cycle could not run at all (templates, CA file, state directory lock or database):
    /// no service got as far as its own first stage.
    Setup,
    Login,
    Lookup,
    Fetch,
    Validate,
    Deliver,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [Stage::Setup, Stage::Login, Stage::Lookup, Stage::Fetch, Stage::Validate, Stage::Deliver];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::Login => "login",
            Stage::Lookup => "lookup",
            Stage::Fetch => "fetch",
            Stage::Validate => "validate",
            Stage::Deliver => "deliver",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service × destination after a cycle: delivered, or the stage at which it was not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationOutcome {
    pub destination: String,
    pub result: Result<(), Stage>,
}

/// One service after a cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOutcome {
    pub service: String,
    /// How long each stage the service went through took.
    pub timings: Vec<(Stage, Duration)>,
    pub destinations: Vec<DestinationOutcome>,
}

/// What one cycle came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CycleOutcome {
    /// The cycle ran: every service went as far as it could, failures included.
    Ran(Vec<ServiceOutcome>),
    /// The cycle could not run (a broken templates dir, a CA file gone, the state-directory
    /// lock busy past its wait, a state database that cannot be opened, shutdown before it
    /// began): a failure of every destination of every service it was for, at
    /// [`Stage::Setup`]. Never a success.
    NotRun { reason: String, services: Vec<ServiceOutcome> },
}

impl CycleOutcome {
    /// A cycle that could not run, for these services and their destinations.
    pub fn not_run(reason: impl Into<String>, services: impl IntoIterator<Item = (String, Vec<String>)>) -> CycleOutcome {
        let services = services
            .into_iter()
            .map(|(service, destinations)| ServiceOutcome {
                service,
                timings: Vec::new(),
                destinations: destinations
                    .into_iter()
                    .map(|destination| DestinationOutcome { destination, result: Err(Stage::Setup) })
                    .collect(),
            })
            .collect();
        CycleOutcome::NotRun { reason: reason.into(), services }
    }

    /// Whether the cycle ran (whatever each service came to).
    pub fn ran(&self) -> bool {
        matches!(self, CycleOutcome::Ran(_))
    }

    pub fn services(&self) -> &[ServiceOutcome] {
        match self {
            CycleOutcome::Ran(services) | CycleOutcome::NotRun { services, .. } => services,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_that_could_not_run_fails_every_destination_at_setup() {
        let o = CycleOutcome::not_run("lock busy", [("a".to_string(), vec!["credd@s1".to_string(), "credd@s2".to_string()])]);
        assert!(!o.ran());
        let results: Vec<_> = o.services()[0].destinations.iter().map(|d| (d.destination.as_str(), d.result)).collect();
        assert_eq!(results, [("credd@s1", Err(Stage::Setup)), ("credd@s2", Err(Stage::Setup))]);
        assert_eq!(Stage::ALL.map(Stage::as_str), ["setup", "login", "lookup", "fetch", "validate", "deliver"]);
    }
}
