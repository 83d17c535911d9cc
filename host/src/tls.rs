//! TLS: listener certificates reloaded on change, and client trust roots with custom CAs.
