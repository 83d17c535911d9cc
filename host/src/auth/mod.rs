//! Downstream access control: bearer tokens and JWTs, identities, per-identity access rules.
