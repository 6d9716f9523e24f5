//! The one integration-test binary. Every test talks to real peers (OpenBao, OpenSSH sshd, an
//! SMTP server) started on loopback by the shared [`harness`], and runs the real
//! `token-bastion` binary against them.

mod harness;

mod broker;
mod chaos;
mod check;
mod credmon;
#[cfg(feature = "failpoints")]
mod crash;
mod hostile;
mod idtoken;
mod daemon;
mod deliver;
#[cfg(feature = "failpoints")]
mod deliver_attacks;
mod deliver_hostkeys;
mod deliver_protocol;
mod handles;
mod lifecycle;
mod kerberos;
mod ledger;
mod metrics;
mod names;
mod notify;
mod overlap;
mod alerting;
mod push;
mod run;
