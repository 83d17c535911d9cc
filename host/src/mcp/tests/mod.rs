//! In-process unit tests of the data plane on the in-memory coordinator: access and task
//! ownership, the routing of each era path and the status of every refusal, the signed
//! `requestState`. The session machinery's own tests are in `session/tests`; both use
//! [`kit`]. No upstream runs (their program does not exist) and no socket is opened.

pub(crate) mod kit;

mod access_tasks;
mod request_state;
mod routing;
