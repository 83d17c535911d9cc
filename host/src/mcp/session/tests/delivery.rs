//! The delivery log: a GET stream resumed after `Last-Event-ID` replays what came after it, in
//! order, then continues with new messages without repeating any; the log is bounded by count;
//! a stream held on another replica gets what this one delivers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::Coordinator;
use serde_json::json;

use crate::capabilities::Capabilities;
use crate::mcp::session::delivery::Delivery;
use crate::mcp::tests::kit;
use crate::mcp::wire::jsonrpc::{self, Message};

fn delivery(store: &mcpg_plugin_api::memory::MemoryStore, node: &str, max: u64) -> Delivery {
    let c: Arc<dyn Coordinator> = Arc::new(store.handle(node));
    let caps = Capabilities::build(&Default::default(), &c).unwrap();
    Delivery::new(caps.delivery, max, Duration::from_secs(600))
}

fn note(n: u64) -> Message {
    jsonrpc::notification("notifications/message", Some(json!({"n": n})))
}

async fn next(s: &mut BoxStream<'static, (u64, Message)>) -> (u64, u64) {
    let (id, m) = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on");
    (id, m["params"]["n"].as_u64().unwrap())
}

async fn nothing_more(s: &mut BoxStream<'static, (u64, Message)>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(50), s.next())
            .await
            .is_err(),
        "no further message"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_stream_replays_after_the_last_event_id_then_goes_on() {
    let store = kit::store();
    let d = delivery(&store, "node-a", 100);
    let seq = AtomicU64::new(100);
    for n in 1..=5 {
        d.deliver("s1", &seq, &note(n)).await;
    }
    d.deliver("other", &AtomicU64::new(100), &note(99)).await;

    let (at, mut resumed) = d.stream("s1", Some(102)).await.unwrap();
    assert_eq!(at, 105, "positioned after the replay");
    assert_eq!(next(&mut resumed).await, (103, 3));
    assert_eq!(next(&mut resumed).await, (104, 4));
    assert_eq!(next(&mut resumed).await, (105, 5));
    // A message both in the log and still on its way over the bus is not given twice.
    let c: Arc<dyn Coordinator> = Arc::new(store.handle("node-a"));
    let bus = Capabilities::build(&Default::default(), &c)
        .unwrap()
        .delivery
        .bus;
    let late = serde_json::to_vec(&json!({"seq": 104, "message": note(4)})).unwrap();
    bus.publish("s.s1", late).await.unwrap();
    d.deliver("s1", &seq, &note(6)).await;
    assert_eq!(
        next(&mut resumed).await,
        (106, 6),
        "then new ones, once each"
    );
    nothing_more(&mut resumed).await;

    // A stream that is not a resumption gets only what comes next, and starts at the newest
    // message logged: a client that reconnects from there before anything came gets what
    // was delivered in between.
    let (at, mut fresh) = d.stream("s1", None).await.unwrap();
    assert_eq!(at, 106, "the newest logged");
    d.deliver("s1", &seq, &note(7)).await;
    assert_eq!(next(&mut fresh).await, (107, 7));
    nothing_more(&mut fresh).await;
    let (_, mut from_start) = d.stream("s1", Some(at)).await.unwrap();
    assert_eq!(next(&mut from_start).await, (107, 7));
    nothing_more(&mut from_start).await;

    // Resuming at the end replays nothing.
    let (at, mut caught_up) = d.stream("s1", Some(107)).await.unwrap();
    assert_eq!(at, 107);
    nothing_more(&mut caught_up).await;
    // A session nothing was delivered to starts at 0.
    assert_eq!(d.stream("quiet", None).await.unwrap().0, 0);
}

/// The log keeps the last `max_events` messages; a stream held on another replica receives
/// what this one delivers.
#[tokio::test(start_paused = true)]
async fn the_log_is_bounded_and_shared_by_replicas() {
    let store = kit::store();
    let a = delivery(&store, "node-a", 3);
    let b = delivery(&store, "node-b", 3);
    let seq = AtomicU64::new(0);
    let (_, mut held_on_b) = b.stream("s1", None).await.unwrap();
    for n in 1..=5 {
        a.deliver("s1", &seq, &note(n)).await;
    }
    for n in 1..=5 {
        assert_eq!(next(&mut held_on_b).await, (n, n));
    }
    let (_, mut replay) = b.stream("s1", Some(0)).await.unwrap();
    assert_eq!(next(&mut replay).await, (3, 3), "the two oldest fell out");
    assert_eq!(next(&mut replay).await, (4, 4));
    assert_eq!(next(&mut replay).await, (5, 5));
    nothing_more(&mut replay).await;
}
