//! In-process unit tests of the stateful core on the in-memory coordinator: session records
//! under fencing ([`records`]), claims racing, placement decisions ([`placement`]), the sweep
//! ([`sweep`]), the delivery log ([`delivery`]) and sessions across a config reload ([`reload`]). Time is paused where leases matter.

mod delivery;
mod fencing;
mod placement;
mod records;
mod reload;
mod sweep;
