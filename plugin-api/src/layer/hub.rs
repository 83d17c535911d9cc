//! One backend subscription per channel, fanned out to the layer's local subscribers, and the
//! byte encoding of what travels on the channels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};

use super::Store;
use crate::coordinator::{CoordResult, Entry, KvEvent};
use crate::support::{receiver_stream, reconnecting};

const SPILL_PREFIX: &str = "\u{1}mcpg/spill/";

type Sink = Box<dyn FnMut(&[u8]) -> bool + Send>;

struct Shared {
    sinks: Mutex<Vec<Sink>>,
    /// Dropped with the last holder of the hub: stops the dispatch task.
    _stop: watch::Sender<()>,
}

/// A channel's local fan-out. The dispatch task ends when the layer and every stream it gave
/// out are gone.
#[derive(Clone)]
pub(super) struct Hub(Arc<Shared>);

impl Hub {
    /// Subscribes to `channel` (live once this returns) and starts dispatching.
    pub(super) async fn start(store: Arc<dyn Store>, channel: &str) -> CoordResult<Self> {
        let (again, name) = (store.clone(), channel.to_owned());
        let mut source = reconnecting(Duration::from_millis(300), move || {
            let (store, name) = (again.clone(), name.clone());
            async move { store.listen(&name).await }
        })
        .await?;
        let (stop, mut stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            sinks: Mutex::new(Vec::new()),
            _stop: stop,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    b = source.next() => match b { Some(b) => b, None => return },
                    _ = stopped.changed() => return,
                };
                let Some(bytes) = resolve(store.as_ref(), bytes).await else {
                    continue;
                };
                let Some(shared) = weak.upgrade() else { return };
                shared.sinks.lock().unwrap().retain_mut(|sink| sink(&bytes));
            }
        });
        Ok(Self(shared))
    }

    /// A stream of what `pick` makes of each payload, buffering `buffer` items; it holds the
    /// hub. A full buffer drops the item (the consumer is behind); a closed one ends the sink.
    pub(super) fn stream<T: Send + 'static>(
        &self,
        buffer: usize,
        pick: impl Fn(&[u8]) -> Option<T> + Send + 'static,
    ) -> BoxStream<'static, T> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        self.0.sinks.lock().unwrap().push(Box::new(move |bytes| {
            if tx.is_closed() {
                return false;
            }
            if let Some(item) = pick(bytes) {
                let _ = tx.try_send(item);
            }
            true
        }));
        let hold = self.clone();
        receiver_stream(rx)
            .map(move |item| {
                let _ = &hold;
                item
            })
            .boxed()
    }
}

/// A payload sent as it is: tagged 0.
pub(super) fn inline(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.insert(0, 0);
    bytes
}

/// A payload stored under `key`: tagged 1.
pub(super) fn reference(key: &str) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(key.as_bytes());
    out
}

/// A fresh key for a payload too large for the channel.
pub(super) fn spill_key(node_id: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{SPILL_PREFIX}{node_id}/{nanos:x}-{n}")
}

/// What a received payload stands for; `None` if a referenced one is gone (it is lost).
async fn resolve(store: &dyn Store, bytes: Vec<u8>) -> Option<Vec<u8>> {
    match bytes.split_first()? {
        (0, rest) => Some(rest.to_vec()),
        (1, key) => Some(store.get(std::str::from_utf8(key).ok()?).await.ok()??.value),
        _ => None,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(bytes.get(4..4 + len)?).ok()?;
    Some((s.to_owned(), &bytes[4 + len..]))
}

pub(super) fn encode_message(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(subject.len() + payload.len() + 4);
    put_str(&mut out, subject);
    out.extend_from_slice(payload);
    out
}

pub(super) fn decode_message(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let (subject, rest) = take_str(bytes)?;
    Some((subject, rest.to_vec()))
}

/// `p|d`, the revision (8 bytes), the key, then the value of a put.
pub(super) fn encode_kv(ev: &KvEvent) -> Vec<u8> {
    let (tag, key, revision, value) = match ev {
        KvEvent::Put(e) => (b'p', &e.key, e.revision, &e.value[..]),
        KvEvent::Delete { key, revision } => (b'd', key, *revision, &[][..]),
    };
    let mut out = vec![tag];
    out.extend_from_slice(&revision.to_be_bytes());
    put_str(&mut out, key);
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_kv(bytes: &[u8]) -> Option<KvEvent> {
    let (&tag, rest) = bytes.split_first()?;
    let revision = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let (key, value) = take_str(&rest[8..])?;
    match tag {
        b'p' => Some(KvEvent::Put(Entry {
            key,
            value: value.to_vec(),
            revision,
        })),
        b'd' => Some(KvEvent::Delete { key, revision }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        let m = encode_message("a.b", b"\0\xff x");
        assert_eq!(
            decode_message(&m),
            Some(("a.b".into(), b"\0\xff x".to_vec()))
        );
        for ev in [
            KvEvent::Put(Entry {
                key: "k \u{e9}".into(),
                value: vec![0, 255],
                revision: 7,
            }),
            KvEvent::Delete {
                key: "k".into(),
                revision: 9,
            },
        ] {
            assert_eq!(decode_kv(&encode_kv(&ev)), Some(ev));
        }
        assert_eq!(decode_kv(b"x"), None);
    }
}
