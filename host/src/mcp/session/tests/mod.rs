//! In-process unit tests of the stateful core on the in-memory coordinator: session records
//! under fencing ([`records`]), claims racing, placement decisions ([`placement`]), the sweep
//! ([`sweep`]) and the delivery log ([`delivery`]). Time is paused where leases matter.

mod delivery;
mod fencing;
mod placement;
mod records;
mod sweep;
