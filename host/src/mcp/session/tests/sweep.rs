//! The sweep: idle records of departed owners (and handed-over ones) are removed; records of
//! live owners, fresh records, records of a newer format and sessions live on the sweeping
//! replica are kept; one sweeper at a time; and each owner reaps its own idle sessions.

use std::time::Duration;

use crate::mcp::session::RECORD_FORMAT;
use crate::mcp::tests::kit::{self, Replica};

#[tokio::test(start_paused = true)]
async fn the_sweep_removes_idle_records_of_departed_owners_and_keeps_the_rest() {
    let store = kit::store();
    let s = Replica::start(&store, "node-s", None, 10).await;
    // A live owner holding its ownership lease, not in the peer directory.
    let a = Replica::start(&store, "node-a", None, 10).await;
    // A live owner in the peer directory.
    let c = Replica::start(&store, "node-c", Some("http://node-c.test"), 10).await;
    let idle = kit::long_idle();
    s.put_record(&kit::record("gone-idle", "node-gone", 3, idle))
        .await;
    s.put_record(&kit::record("handed-over-idle", "", 0, idle))
        .await;
    // Left by an earlier instance of the sweeping replica (which now holds the lease).
    s.put_record(&kit::record("earlier-instance-idle", "node-s", 1, idle))
        .await;
    s.put_record(&kit::record(
        "live-owner-idle",
        "node-a",
        a.ownership.token(),
        idle,
    ))
    .await;
    s.put_record(&kit::record(
        "present-owner-idle",
        "node-c",
        c.ownership.token(),
        idle,
    ))
    .await;
    s.put_record(&kit::record("gone-fresh", "node-gone", 3, kit::fresh()))
        .await;
    let mut newer = kit::record("newer-format-idle", "node-gone", 3, idle);
    newer.format = RECORD_FORMAT + 1;
    s.put_record(&newer).await;
    let mine = s.create(None).await;
    let mut live_here = s.record(&mine).await.unwrap();
    live_here.active_ms = idle;
    live_here.created_ms = idle;
    s.put_record(&live_here).await;

    s.sessions.sweep(std::slice::from_ref(&s.binding)).await;

    for gone in ["gone-idle", "handed-over-idle", "earlier-instance-idle"] {
        assert!(s.record(gone).await.is_none(), "{gone} was swept");
    }
    for kept in [
        "live-owner-idle",
        "present-owner-idle",
        "gone-fresh",
        "newer-format-idle",
        mine.as_str(),
    ] {
        let r = s
            .caps
            .sessions
            .store
            .get(&format!("s/{kept}"))
            .await
            .unwrap();
        assert!(r.is_some(), "{kept} was kept");
    }
    assert_eq!(
        s.record("live-owner-idle").await.unwrap().owner,
        "node-a",
        "not claimed either"
    );
    assert_eq!(s.sessions.live_count(), 1, "the sweep serves nothing");

    // Once the live owner's lease is gone, its idle session is swept too.
    a.ownership.release().await;
    s.sessions.sweep(std::slice::from_ref(&s.binding)).await;
    assert!(s.record("live-owner-idle").await.is_none());
    assert!(s.record("present-owner-idle").await.is_some());
    drop(c);
}

/// The sweeper lease is cluster-wide: while one replica holds it, another cannot take it;
/// once released, the other can.
#[tokio::test(start_paused = true)]
async fn the_sweeper_lease_admits_one_sweeper_at_a_time() {
    let store = kit::store();
    let s1 = Replica::start(&store, "node-1", None, 10).await;
    let s2 = Replica::start(&store, "node-2", None, 10).await;
    let ttl = Duration::from_secs(60);
    let held = s1
        .ownership
        .sweeper_lease(ttl)
        .await
        .expect("the first sweeper");
    assert!(s2.ownership.sweeper_lease(ttl).await.is_none());
    assert!(
        s1.ownership.sweeper_lease(ttl).await.is_none(),
        "not re-entrant"
    );
    held.release().await.unwrap();
    assert!(s2.ownership.sweeper_lease(ttl).await.is_some());
}

/// The owner reaps its own sessions idle past the TTL (record deleted, session closed) and
/// keeps the ones in use.
#[tokio::test(start_paused = true)]
async fn the_owner_reaps_its_idle_sessions_and_keeps_busy_ones() {
    let store = kit::store();
    let ttl = Duration::from_secs(2);
    let a = Replica::with_idle_ttl(&store, "node-a", None, 10, ttl).await;
    let idle = a.create(None).await;
    // Slept rather than advanced at once, so the ownership lease is renewed on time.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let used = a.create(None).await;
    a.sessions.reap().await;
    assert!(
        a.record(&idle).await.is_none(),
        "the idle session's record is gone"
    );
    assert!(
        a.record(&used).await.is_some(),
        "the session in use is kept"
    );
    assert_eq!(a.sessions.live_count(), 1);
}

/// A session that never sent a request after `initialize` is ended after the short unused
/// TTL; one that did keeps the idle TTL. (Eight sessions opened and left alone no longer hold
/// a binding's children for the whole idle TTL.)
#[tokio::test(start_paused = true)]
async fn sessions_that_never_sent_a_request_end_after_the_unused_ttl() {
    let store = kit::store();
    let unused_ttl = Duration::from_secs(2);
    let a = Replica::with_unused_ttl(&store, "node-a", kit::IDLE_TTL, unused_ttl).await;
    let left = a.create(None).await;
    let used = a.create(None).await;
    a.sessions
        .live
        .lock()
        .unwrap()
        .get(&used)
        .expect("live here")
        .mark_used();
    a.sessions.reap().await;
    assert_eq!(a.sessions.live_count(), 2, "both are young");
    tokio::time::sleep(unused_ttl + Duration::from_secs(1)).await;
    a.sessions.reap().await;
    assert!(a.record(&left).await.is_none(), "the unused session ended");
    assert!(a.record(&used).await.is_some(), "the used one is kept");
    assert_eq!(a.sessions.live_count(), 1);
}
