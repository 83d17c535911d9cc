//! What replicas agree on through the coordinator so that any of them serves any session:
//! each replica's ownership lease and the peer directory ([`ownership`]), and forwarding a
//! request to the replica that owns its session ([`forward`]); what they share about upstream
//! pools ([`pool_views`]).

pub mod forward;
pub mod ownership;
pub mod pool_views;
