//! The fan-out of what an upstream sends outside any exchange (list changes, resource updates,
//! logs, server requests) to the readers of its conversation. Each reader has its own queue,
//! which holds only the messages waiting for it: an idle conversation holds no message slots.
//! (tokio's broadcast channel, used before, allocates every slot up front: 64 slots were about
//! 6 kB per legacy session, the largest part of an idle session's memory.) A reader that falls
//! more than [`LAG_BOUND`] messages behind loses the oldest, and is told how many, as a
//! broadcast receiver is (`RecvError::Lagged`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use futures::Stream;
use tokio::sync::Notify;
pub use tokio::sync::broadcast::error::RecvError;

use crate::mcp::wire::jsonrpc::Message;

/// How many messages one reader may have waiting before the oldest are dropped.
pub const LAG_BOUND: usize = 64;

/// The sending side, owned by the conversation; readers see `Closed` once it is dropped.
#[derive(Default)]
pub struct Unsolicited {
    readers: Mutex<Vec<Weak<Queue>>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// One reader per queue, so `notify_one`'s stored permit means no wake-up is lost.
    ready: Notify,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Message>,
    lagged: u64,
    closed: bool,
}

/// One reader of a conversation's unsolicited messages.
pub struct Receiver {
    queue: Arc<Queue>,
}

impl Unsolicited {
    /// A new reader; it sees what is sent from now on.
    pub fn subscribe(&self) -> Receiver {
        let queue = Arc::new(Queue::default());
        let mut readers = self.readers.lock().expect("readers lock");
        readers.retain(|r| r.strong_count() > 0);
        readers.push(Arc::downgrade(&queue));
        Receiver { queue }
    }

    /// Queues `m` for every reader (a reader that has gone is forgotten).
    pub fn send(&self, m: Message) {
        let mut readers = self.readers.lock().expect("readers lock");
        readers.retain(|r| r.strong_count() > 0);
        let Some((last, rest)) = readers.split_last() else {
            return;
        };
        for r in rest {
            if let Some(q) = r.upgrade() {
                q.push(m.clone());
            }
        }
        if let Some(q) = last.upgrade() {
            q.push(m);
        }
    }
}

impl Drop for Unsolicited {
    fn drop(&mut self) {
        let readers = self.readers.get_mut().unwrap_or_else(|e| e.into_inner());
        for q in readers.drain(..).filter_map(|r| r.upgrade()) {
            q.state.lock().expect("queue lock").closed = true;
            q.ready.notify_one();
        }
    }
}

impl Queue {
    fn push(&self, m: Message) {
        {
            let mut s = self.state.lock().expect("queue lock");
            if s.waiting.len() >= LAG_BOUND {
                s.waiting.pop_front();
                s.lagged += 1;
            }
            s.waiting.push_back(m);
        }
        self.ready.notify_one();
    }
}

impl Receiver {
    /// The next message; `Lagged(n)` first when `n` were dropped because this reader was
    /// behind; `Closed` once the conversation is gone and nothing is left.
    pub async fn recv(&mut self) -> Result<Message, RecvError> {
        loop {
            {
                let mut s = self.queue.state.lock().expect("queue lock");
                if s.lagged > 0 {
                    return Err(RecvError::Lagged(std::mem::take(&mut s.lagged)));
                }
                if let Some(m) = s.waiting.pop_front() {
                    // The queue's memory goes back once it has drained.
                    if s.waiting.is_empty() {
                        s.waiting = VecDeque::new();
                    }
                    return Ok(m);
                }
                if s.closed {
                    return Err(RecvError::Closed);
                }
            }
            self.queue.ready.notified().await;
        }
    }

    /// The messages as a stream (lagging shows as `Err(Lagged)`); it ends when the
    /// conversation is gone.
    pub fn into_stream(self) -> impl Stream<Item = Result<Message, RecvError>> + Send {
        futures::stream::unfold(self, |mut rx| async move {
            match rx.recv().await {
                Err(RecvError::Closed) => None,
                r => Some((r, rx)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn msg(n: u64) -> Message {
        let serde_json::Value::Object(m) =
            json!({"jsonrpc": "2.0", "method": "n", "params": {"n": n}})
        else {
            unreachable!()
        };
        m
    }

    fn n(m: &Message) -> u64 {
        m["params"]["n"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn every_reader_gets_every_message_sent_after_it_subscribed() {
        let tx = Unsolicited::default();
        tx.send(msg(0));
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        tx.send(msg(1));
        tx.send(msg(2));
        for rx in [&mut a, &mut b] {
            assert_eq!(n(&rx.recv().await.unwrap()), 1);
            assert_eq!(n(&rx.recv().await.unwrap()), 2);
        }
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_send() {
        let tx = Arc::new(Unsolicited::default());
        let mut rx = tx.subscribe();
        let sender = tx.clone();
        let h = tokio::spawn(async move { rx.recv().await.map(|m| n(&m)) });
        tokio::task::yield_now().await;
        sender.send(msg(7));
        assert_eq!(h.await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn a_reader_behind_loses_the_oldest_and_is_told_how_many() {
        let tx = Unsolicited::default();
        let mut rx = tx.subscribe();
        let total = LAG_BOUND as u64 + 5;
        for i in 0..total {
            tx.send(msg(i));
        }
        assert!(matches!(rx.recv().await, Err(RecvError::Lagged(5))));
        assert_eq!(n(&rx.recv().await.unwrap()), 5);
    }

    #[tokio::test]
    async fn readers_see_closed_after_what_was_queued_once_the_sender_is_gone() {
        let tx = Unsolicited::default();
        let rx = tx.subscribe();
        tx.send(msg(1));
        drop(tx);
        let got: Vec<_> = rx.into_stream().collect().await;
        assert_eq!(got.len(), 1);
        assert_eq!(n(got[0].as_ref().unwrap()), 1);
    }

    #[tokio::test]
    async fn a_dropped_reader_is_forgotten() {
        let tx = Unsolicited::default();
        drop(tx.subscribe());
        let mut kept = tx.subscribe();
        tx.send(msg(3));
        assert_eq!(tx.readers.lock().unwrap().len(), 1);
        assert_eq!(n(&kept.recv().await.unwrap()), 3);
    }
}
