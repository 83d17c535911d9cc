//! The layer's small store on PostgreSQL. Entries are rows of `<schema>.kv`: bytea keys (byte
//! order, any character), revisions from one sequence, expiry in the server's clock. Each
//! conditional write is one statement, atomic under concurrent writers. A channel is
//! `NOTIFY <schema>_<channel>` with the payload in hex, received on the same connection;
//! `NOTIFY` takes under 8000 bytes, so the layer passes larger payloads by reference.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::poll_fn;
use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::{CoordError, CoordResult, Entry};
use mcpg_plugin_api::layer::{Cond, Store};
use mcpg_plugin_api::support::{Fanout, error_chain, fanout, redacted_url};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Run on each connect, by one replica at a time (concurrent `IF NOT EXISTS` can race).
const DDL: &str = "BEGIN; SELECT pg_advisory_xact_lock(7262747); CREATE SCHEMA IF NOT EXISTS {s};
CREATE SEQUENCE IF NOT EXISTS {s}.rev; CREATE TABLE IF NOT EXISTS {s}.kv (k bytea PRIMARY KEY,
v bytea NOT NULL, rev bigint NOT NULL, exp timestamptz); COMMIT";
const LIVE: &str = "(exp IS NULL OR exp > now())";
const GET: &str = "SELECT v, rev FROM {s}.kv WHERE k = $1 AND LIVE";
/// `$4 = 1`: unconditionally; else only over an absent or expired row.
const UPSERT: &str = "INSERT INTO {s}.kv AS t VALUES ($1, $2, nextval('{s}.rev'),
now() + $3 * interval '1 ms') ON CONFLICT (k) DO UPDATE SET v = excluded.v, rev = excluded.rev,
exp = excluded.exp WHERE $4::int8 = 1 OR t.exp <= now() RETURNING rev";
const UPDATE: &str = "UPDATE {s}.kv SET v = $2, rev = nextval('{s}.rev'),
exp = now() + $3 * interval '1 ms' WHERE k = $1 AND rev = $4 AND LIVE RETURNING rev";
const DELETE: &str = "DELETE FROM {s}.kv WHERE k = $1 AND ($2::int8 IS NULL OR rev = $2)
AND LIVE RETURNING nextval('{s}.rev')";
const LIST: &str = "SELECT k, v, rev FROM {s}.kv WHERE k >= $1
AND substring(k for length($1)) = $1 AND LIVE ORDER BY k";
const SEND: &str = "SELECT pg_notify($1, encode($2, 'hex'))";
const SWEEP: &str = "DELETE FROM {s}.kv WHERE exp <= now()";
/// Prepared on each connect.
const ALL: [&str; 7] = [GET, UPSERT, UPDATE, DELETE, LIST, SEND, SWEEP];

/// The connection: its client, prepared statements, and the notifications it receives, whose
/// streams end with the connection.
type Conn = Arc<(Client, Vec<Statement>, Fanout)>;

pub struct PgStore {
    pg: Config,
    tls: MakeRustlsConnect,
    schema: String,
    conn: Mutex<Option<Conn>>,
}

fn error(e: tokio_postgres::Error) -> CoordError {
    match e.as_db_error() {
        Some(db) => CoordError::backend(format!("postgres: {}", db.message())),
        None => CoordError::unavailable(format!("postgres: {}", error_chain(&e))),
    }
}

impl PgStore {
    /// Connects (creating what is missing), or says where it could not.
    pub async fn connect(config: &crate::Config) -> Result<Self, String> {
        let url = redacted_url(&config.url);
        let mut pg: Config = config.url.parse().map_err(|e| format!("{url}: {e}"))?;
        pg.connect_timeout(*pg.get_connect_timeout().unwrap_or(&Duration::from_secs(5)));
        let tls = MakeRustlsConnect::new(config.tls.client_config()?);
        let schema = config.schema.clone();
        let store = Self {
            pg,
            tls,
            schema,
            conn: Mutex::new(None),
        };
        let fail = |e: CoordError| format!("cannot reach postgres at {url}: {}", e.message);
        store.conn().await.map_err(fail)?;
        Ok(store)
    }

    fn sql(&self, text: &str) -> String {
        text.replace("LIVE", LIVE).replace("{s}", &self.schema)
    }

    /// The command connection, made again once it has closed.
    async fn conn(&self) -> CoordResult<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.0.is_closed()) {
            return Ok(c.clone());
        }
        let (client, mut connection) = self.pg.connect(self.tls.clone()).await.map_err(error)?;
        let (tx, notes) = fanout(1024);
        tokio::spawn(async move {
            while let Some(Ok(m)) = poll_fn(|cx| connection.poll_message(cx)).await {
                if let AsyncMessage::Notification(n) = m
                    && let Ok(payload) = hex::decode(n.payload())
                {
                    let _ = tx.send((n.channel().to_owned(), payload));
                }
            }
        });
        client.batch_execute(&self.sql(DDL)).await.map_err(error)?;
        let mut stmts = Vec::new();
        for text in ALL {
            stmts.push(client.prepare(&self.sql(text)).await.map_err(error)?);
        }
        Ok(slot.insert(Arc::new((client, stmts, notes))).clone())
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> CoordResult<Vec<Row>> {
        let (c, n) = (self.conn().await?, ALL.iter().position(|s| *s == sql));
        c.0.query(&c.1[n.unwrap_or(0)], params).await.map_err(error)
    }

    async fn revision(&self, q: &str, params: &[&(dyn ToSql + Sync)]) -> CoordResult<Option<u64>> {
        let rows = self.query(q, params).await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64))
    }
}

fn entry(key: String, r: &Row, at: usize) -> Entry {
    Entry::new(key, r.get(at), r.get::<_, i64>(at + 1) as u64)
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let rows = self.query(GET, &[&key.as_bytes()]).await?;
        Ok(rows.first().map(|r| entry(key.to_owned(), r, 0)))
    }

    async fn put_if(
        &self,
        key: &str,
        cond: Cond,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let ms = ttl.map(|t| t.as_secs_f64() * 1000.0);
        let (q, at) = match cond {
            Cond::Revision(r) => (UPDATE, r as i64),
            _ => (UPSERT, i64::from(cond == Cond::Any)),
        };
        self.revision(q, &[&key.as_bytes(), &value, &ms, &at]).await
    }

    async fn delete_if(&self, key: &str, cond: Cond) -> CoordResult<Option<u64>> {
        let at = cond.revision().map(|r| r as i64);
        self.revision(DELETE, &[&key.as_bytes(), &at]).await
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let rows = self.query(LIST, &[&prefix.as_bytes()]).await?;
        let entries = rows
            .iter()
            .map(|r| Some(entry(String::from_utf8(r.get(0)).ok()?, r, 1)));
        Ok(entries.flatten().collect())
    }

    fn max_payload(&self) -> usize {
        3900
    }

    async fn send(&self, channel: &str, payload: Vec<u8>) -> CoordResult<()> {
        let channel = format!("{}_{channel}", self.schema);
        self.query(SEND, &[&channel, &payload]).await.map(|_| ())
    }

    async fn listen(&self, channel: &str) -> CoordResult<BoxStream<'static, Vec<u8>>> {
        let (c, channel) = (self.conn().await?, format!("{}_{channel}", self.schema));
        let notes = c.2.listen(channel.as_str());
        let listen = format!("LISTEN {channel}");
        c.0.batch_execute(&listen).await.map_err(error)?;
        Ok(notes)
    }

    async fn sweep(&self) -> CoordResult<()> {
        self.query(SWEEP, &[]).await.map(|_| ())
    }
}
