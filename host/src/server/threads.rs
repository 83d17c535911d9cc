//! Serving threads (`server.scheduler: pinned`, the default): one single-threaded Tokio runtime
//! per thread, and each accepted connection handed to the thread with the fewest open ones.
//! A connection is then served start to finish on that thread: its requests, the tasks they
//! spawn, and the upstream connections they use (each upstream keeps a pool per thread,
//! [`PerThread`]), so a request never wakes another thread, as in nginx's worker processes.
//! The process's main runtime keeps the accept loops and the control plane (coordinator,
//! sweeps, reload).
//!
//! Without serving threads (`server.scheduler: work_stealing`, and in-process tests) connections
//! are served on the runtime that accepted them, and [`PerThread`] holds one value.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

/// The serving threads, once started.
static THREADS: OnceLock<Box<[Thread]>> = OnceLock::new();

thread_local! {
    /// This thread's place in [`THREADS`], counted from 1; 0 on every other thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

struct Thread {
    handle: Handle,
    /// Connections it serves now.
    open: AtomicUsize,
}

/// Starts `n` serving threads (at least one), once per process, before anything is served
/// (upstream pools are laid out per thread when they are built). Each runs its runtime until
/// the process exits.
pub fn start(n: usize) -> io::Result<()> {
    if THREADS.get().is_some() {
        return Err(io::Error::other("the serving threads are already started"));
    }
    let mut threads = Vec::with_capacity(n.max(1));
    for i in 1..=n.max(1) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("mcpg-serve-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                SLOT.set(i);
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("a serving thread ended while starting"))??;
        threads.push(Thread {
            handle,
            open: AtomicUsize::new(0),
        });
    }
    THREADS
        .set(threads.into_boxed_slice())
        .map_err(|_| io::Error::other("the serving threads are already started"))
}

/// How many serving threads there are (0 when connections are served where accepted).
pub fn count() -> usize {
    THREADS.get().map_or(0, |t| t.len())
}

/// This thread's serving slot: 1..=[`count`] on a serving thread, 0 elsewhere.
pub fn slot() -> usize {
    SLOT.get()
}

/// Where one connection is served: the runtime of the serving thread with the fewest open
/// connections (`None` without serving threads), counted as open until this is dropped.
pub struct Placement {
    thread: &'static Thread,
}

impl Placement {
    pub fn handle(&self) -> &Handle {
        &self.thread.handle
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.thread.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the serving thread for a new connection (see [`Placement`]).
pub fn place() -> Option<Placement> {
    let thread = THREADS
        .get()?
        .iter()
        .min_by_key(|t| t.open.load(Ordering::Relaxed))?;
    thread.open.fetch_add(1, Ordering::Relaxed);
    Some(Placement { thread })
}

/// One value per serving thread, plus one for every other thread, built up front; [`get`]
/// gives the calling thread's. Used for what must not be shared between threads to stay on
/// one: an upstream's connection pool, whose connections each run as a task of the runtime
/// that opened them.
///
/// [`get`]: PerThread::get
pub struct PerThread<T> {
    values: Box<[T]>,
}

impl<T> PerThread<T> {
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        Self {
            values: (0..=count()).map(|_| make()).collect(),
        }
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        // A value built before the threads started has one slot only.
        &self.values[slot().min(self.values.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_per_thread_and_connections_go_to_the_least_loaded_thread() {
        // Outside serving threads, and before they start: one value, no placement.
        assert_eq!(slot(), 0);
        let before = PerThread::new(|| 7);
        assert_eq!(*before.get(), 7);
        if THREADS.get().is_none() {
            assert!(place().is_none());
        }
        start(2).unwrap();
        assert!(start(2).is_err(), "starting twice is refused");
        assert_eq!(count(), 2);

        let mut n = 0;
        let per = PerThread::new(|| {
            n += 1;
            n
        });
        assert_eq!(
            *per.get(),
            1,
            "a thread that does not serve has the first value"
        );
        let per = std::sync::Arc::new(per);
        // Placements spread over the threads by open connections; each thread sees its own
        // value.
        let a = place().unwrap();
        let b = place().unwrap();
        let c = place().unwrap();
        let on = |p: &Placement| {
            let per = per.clone();
            p.handle()
                .block_on(p.handle().spawn(async move { (slot(), *per.get()) }))
                .unwrap()
        };
        let (sa, va) = on(&a);
        let (sb, vb) = on(&b);
        assert_ne!(sa, sb, "the second connection goes to the idle thread");
        assert_eq!((va, vb), (sa + 1, sb + 1));
        assert_eq!(on(&c).0, sa, "then back to the first, both holding one");
        drop(a);
        drop(c);
        assert_eq!(
            on(&place().unwrap()).0,
            sa,
            "the thread whose connections closed"
        );
        assert_eq!(
            *before.get(),
            7,
            "a value built before the threads started is shared"
        );
        drop(b);
    }
}
