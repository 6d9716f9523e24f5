//! The `SEC_TOKEN_REVOCATION_EXPR` the revocation drill installs on the daemons that accept a
//! service's IDTokens. Pure.
