//! One Redis pub/sub connection per coordinator, shared by every local subscriber, that
//! reconnects with backoff and re-subscribes every pattern after a disconnect.
//!
//! Redis pub/sub is fire-and-forget: a message published while this connection is down is not
//! delivered to it. Subscribers are told nothing about the gap; the capabilities built on top
//! treat pub/sub as a wake-up and keep their truth in the key-value store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcpg_plugin_api::coordinator::{CoordError, CoordResult};
use tokio::sync::{mpsc, oneshot};

/// A message as received: the full channel name and the payload.
pub type Raw = (String, Vec<u8>);

/// Decides whether a message on a channel is for a subscriber.
pub type Filter = Box<dyn Fn(&str) -> bool + Send + Sync>;

enum Cmd {
    Subscribe {
        glob: String,
        filter: Filter,
        tx: mpsc::Sender<Raw>,
        ack: oneshot::Sender<CoordResult<()>>,
    },
}

/// Handle to the dispatcher task; dropping every handle stops it.
#[derive(Clone)]
pub struct Dispatcher {
    cmds: mpsc::UnboundedSender<Cmd>,
    buffer: usize,
}

struct Sub {
    glob: String,
    filter: Filter,
    tx: mpsc::Sender<Raw>,
}

impl Dispatcher {
    pub fn start(client: redis::Client, buffer: usize, where_: Arc<str>) -> Self {
        let (cmds, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx, where_));
        Self { cmds, buffer }
    }

    /// Subscribes to the Redis glob `glob`, keeping the messages whose channel passes
    /// `filter`. Returns once Redis has confirmed the subscription.
    pub async fn subscribe(
        &self,
        glob: String,
        filter: Filter,
    ) -> CoordResult<mpsc::Receiver<Raw>> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let (ack, done) = oneshot::channel();
        self.cmds
            .send(Cmd::Subscribe {
                glob,
                filter,
                tx,
                ack,
            })
            .map_err(|_| {
                CoordError::new(
                    mcpg_plugin_api::coordinator::ErrorKind::Closed,
                    "pub/sub dispatcher stopped",
                )
            })?;
        done.await.map_err(|_| {
            CoordError::new(
                mcpg_plugin_api::coordinator::ErrorKind::Closed,
                "pub/sub dispatcher stopped",
            )
        })??;
        Ok(rx)
    }
}

/// Escapes Redis glob metacharacters in a literal.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn run(client: redis::Client, mut cmds: mpsc::UnboundedReceiver<Cmd>, where_: Arc<str>) {
    let mut subs: Vec<Sub> = Vec::new();
    // What this connection is subscribed to in Redis (the sink does not say).
    let mut subscribed: HashSet<String>;
    let mut backoff = Duration::from_millis(100);
    let mut dropped: u64 = 0;
    // Subscriptions outlive the coordinator handle that made them: once every handle is gone
    // the task keeps serving the streams still held, and ends with the last of them.
    let mut cmds_open = true;
    'connect: loop {
        // (Re)connect and re-subscribe every live pattern.
        subscribed = subs.iter().map(|s| s.glob.clone()).collect();
        let conn = async {
            let pubsub = client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            for g in &subscribed {
                sink.psubscribe(g).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream))
        };
        let (mut sink, mut stream) = match tokio::time::timeout(Duration::from_secs(5), conn).await
        {
            Ok(Ok(c)) => {
                if backoff > Duration::from_millis(100) {
                    tracing::info!(redis = %where_, "pub/sub reconnected; patterns re-subscribed");
                }
                backoff = Duration::from_millis(100);
                c
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::warn!(redis = %where_, error = %why, "pub/sub connection failed; retrying");
                // Answer subscribe requests while down, so callers do not hang.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        cmd = cmds.recv(), if cmds_open => match cmd {
                            None => {
                                cmds_open = false;
                                if subs.is_empty() {
                                    return;
                                }
                            }
                            Some(Cmd::Subscribe { ack, .. }) => {
                                let _ = ack.send(Err(CoordError::unavailable(format!("redis {where_} pub/sub unavailable: {why}"))));
                            }
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'connect;
            }
        };
        loop {
            tokio::select! {
                cmd = cmds.recv(), if cmds_open => match cmd {
                    None => {
                        cmds_open = false;
                        if subs.is_empty() {
                            return;
                        }
                    }
                    Some(Cmd::Subscribe { glob, filter, tx, ack }) => {
                        let new = !subscribed.contains(&glob);
                        if new && let Err(e) = sink.psubscribe(&glob).await {
                            let _ = ack.send(Err(CoordError::unavailable(format!("redis {where_}: psubscribe failed: {e}"))));
                            continue 'connect;
                        }
                        subscribed.insert(glob.clone());
                        subs.push(Sub { glob, filter, tx });
                        let _ = ack.send(Ok(()));
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!(redis = %where_, "pub/sub connection lost; reconnecting (messages published meanwhile are not delivered)");
                        continue 'connect;
                    };
                    let channel = msg.get_channel_name().to_owned();
                    let payload = msg.get_payload_bytes().to_vec();
                    // Redis delivers a message once per matching pattern; each copy goes only to
                    // the subscribers of that pattern, so nobody gets it twice.
                    let pattern: Option<String> = msg.get_pattern().ok();
                    let before = subs.len();
                    subs.retain(|s| {
                        if pattern.as_deref() != Some(s.glob.as_str()) || !(s.filter)(&channel) {
                            return !s.tx.is_closed();
                        }
                        match s.tx.try_send((channel.clone(), payload.clone())) {
                            Ok(()) => true,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                dropped += 1;
                                tracing::warn!(redis = %where_, channel = %channel, dropped, "a subscriber is behind by subscribe_pattern_buffer messages; message dropped for it");
                                true
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        }
                    });
                    if !cmds_open && subs.is_empty() {
                        return;
                    }
                    if subs.len() != before
                        && let Err(e) = unsubscribe_unused(&mut sink, &subs, &mut subscribed).await
                    {
                        tracing::warn!(redis = %where_, error = %e, "punsubscribe failed; reconnecting");
                        continue 'connect;
                    }
                }
            }
        }
    }
}

/// Drops the Redis subscriptions no local subscriber needs any more.
async fn unsubscribe_unused(
    sink: &mut redis::aio::PubSubSink,
    subs: &[Sub],
    subscribed: &mut HashSet<String>,
) -> redis::RedisResult<()> {
    let live: HashSet<&str> = subs.iter().map(|s| s.glob.as_str()).collect();
    let gone: Vec<String> = subscribed
        .iter()
        .filter(|g| !live.contains(g.as_str()))
        .cloned()
        .collect();
    for g in gone {
        sink.punsubscribe(&g).await?;
        subscribed.remove(&g);
    }
    Ok(())
}
