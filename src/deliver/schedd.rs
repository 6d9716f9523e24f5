//! A schedd's credmon settings, read with `condor_config_val` (one command per knob of
//! [`credd_names::KNOBS`], all in the exec request that resolves the host's account ids, or on
//! their own for `check --remote`), and the credd files the settings rule out.
//!
//! `condor_config_val <knob>` prints the value and exits 0, or prints `Not defined: <knob>` on
//! stderr and exits 1; a shell that cannot find it exits 127. What it printed is hostile input:
//! bounded by the batch runner (64 KiB per exec, one line of at most 300 characters kept per
//! command) and judged only by [`credd_names`].
//!
//! Must never decide what a value means (that is [`credd_names`]'s), nor fail a delivery
//! because the command is missing: the strict defaults then apply.

use crate::credd_names::{self, KNOBS, KnobOutput, ScheddRead};

use super::batch::{self, ItemError};
use super::session::Remote;
use super::{DeliverError, HostTarget};

/// One command per knob, in the order of [`KNOBS`].
pub(crate) fn commands() -> Vec<String> {
    KNOBS.iter().map(|k| format!("condor_config_val {k}")).collect()
}

/// What the commands of [`commands`] came to.
pub(crate) fn read(host: &str, results: Vec<Result<String, ItemError>>) -> ScheddRead {
    if results.len() != KNOBS.len() {
        return ScheddRead::Unknown("condor_config_val did not answer for every knob".into());
    }
    let outputs: Vec<(&'static str, KnobOutput)> = KNOBS.iter().copied().zip(results).map(|(knob, r)| (knob, output_of(knob, r))).collect();
    credd_names::from_outputs(host, &outputs)
}

fn output_of(knob: &str, result: Result<String, ItemError>) -> KnobOutput {
    match result {
        Ok(value) if value.contains('\n') => KnobOutput::Failed(format!("printed more than one line: {}", batch::one_line(&value))),
        Ok(value) => KnobOutput::Value(value),
        Err(ItemError::Exited { status: 1, output }) if output == format!("Not defined: {knob}") => KnobOutput::Undefined,
        Err(ItemError::Exited { status: 127, .. }) => KnobOutput::NoTool,
        Err(e) => KnobOutput::Failed(e.to_string()),
    }
}

/// Connects to the host (host key verified) and reads its settings in one exec request.
pub fn read_schedd(target: &HostTarget) -> Result<ScheddRead, DeliverError> {
    let span = tracing::info_span!("schedd", host = %target.name);
    let _entered = span.enter();
    let remote = Remote::connect(target)?;
    let results = batch::run(&remote, "read the schedd's credmon settings", commands());
    Ok(read(&target.name, results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        let exited = |status, output: &str| Err(ItemError::Exited { status, output: output.into() });
        assert_eq!(output_of("A", Ok("x".into())), KnobOutput::Value("x".into()));
        assert!(matches!(output_of("A", Ok("x\ny".into())), KnobOutput::Failed(_)));
        assert_eq!(output_of("A", exited(1, "Not defined: A")), KnobOutput::Undefined);
        assert!(matches!(output_of("A", exited(1, "Not defined: B")), KnobOutput::Failed(_)));
        assert!(matches!(output_of("A", exited(1, "ERROR: cannot read config")), KnobOutput::Failed(_)));
        assert_eq!(output_of("A", exited(127, "sh: condor_config_val: not found")), KnobOutput::NoTool);
        assert!(matches!(output_of("A", Err(ItemError::Unknown("x".into()))), KnobOutput::Failed(_)));
        assert!(matches!(read("h", vec![Ok("x".into())]), ScheddRead::Unknown(_)));
    }
}
