//! Telling systemd how the replica is doing, for a `Type=notify` unit: `READY=1` once it is
//! ready (presence registered, listeners serving), `STOPPING=1` when it starts to drain, each
//! with a `STATUS=` line; nothing at all without `$NOTIFY_SOCKET`.

use sd_notify::NotifyState;

/// The replica is ready.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// The replica has started to drain.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: handing sessions over"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}
