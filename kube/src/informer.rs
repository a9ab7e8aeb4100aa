//! The informer: drives a [`Reflector`] from an [`ObjectSource`] and shares its store.
//!
//! [`Informer::run`] lists, watches from the list's version, watches again from the last version
//! when a stream ends, and lists again on [`SourceError::Gone`]; any other failure is logged and
//! retried after a backoff that doubles from [`Backoff::min`] to [`Backoff::max`] (reset by the
//! next success). Consumers hold a [`Store`]: they wait for [`Store::changed`] and then read the
//! whole store (reconcile from the store, not from single events).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::reflector::{Reflector, Relisted, Step};
use crate::source::{Object, ObjectSource, SourceError};

/// Retry delays after failures.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { min: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

/// A reader of an informer's store.
#[derive(Clone, Debug)]
pub struct Store<K> {
    inner: Arc<RwLock<Reflector<K>>>,
    changes: watch::Receiver<u64>,
}

impl<K: Object> Store<K> {
    /// Runs `f` on the store (under a read lock: keep it short).
    pub fn read<T>(&self, f: impl FnOnce(&Reflector<K>) -> T) -> T {
        f(&self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until the store changed since this reader last looked; false if the informer is
    /// gone.
    pub async fn changed(&mut self) -> bool {
        self.changes.changed().await.is_ok()
    }

    /// Whether a list has been stored.
    pub fn synced(&self) -> bool {
        self.read(|r| r.synced())
    }
}

/// Runs one kind of object from a source into a store.
pub struct Informer<K, S> {
    source: S,
    inner: Arc<RwLock<Reflector<K>>>,
    tx: watch::Sender<u64>,
    backoff: Backoff,
}

impl<K: Object, S: ObjectSource<K>> Informer<K, S> {
    /// An informer over `source`, and a reader of its store.
    pub fn new(source: S, backoff: Backoff) -> (Informer<K, S>, Store<K>) {
        let inner = Arc::new(RwLock::new(Reflector::new()));
        let (tx, changes) = watch::channel(0);
        let store = Store { inner: inner.clone(), changes };
        (Informer { source, inner, tx, backoff }, store)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Reflector<K>) -> T) -> T {
        let (out, generation) = {
            let mut r = self.inner.write().unwrap_or_else(|p| p.into_inner());
            let out = f(&mut r);
            (out, r.generation())
        };
        self.tx.send_if_modified(|g| std::mem::replace(g, generation) != generation);
        out
    }

    /// Lists once into the store (what [`Informer::run`] does first; the router calls it
    /// before anything else to count the nodes).
    pub async fn list(&mut self) -> Result<Relisted, SourceError> {
        let list = self.source.list().await?;
        Ok(self.with(|r| r.listed(list)))
    }

    /// Does the next step: a list, or one watch until its stream ends; returns which. A 410
    /// Gone makes the next step a list again and is not an error.
    pub async fn step(&mut self) -> Result<Step, SourceError> {
        let step = self.with(|r| r.next());
        self.run_step(&step).await?;
        Ok(step)
    }

    async fn run_step(&mut self, step: &Step) -> Result<(), SourceError> {
        match step {
            Step::List => {
                let d = self.list().await?;
                tracing::debug!(what = %self.source.what(), added = d.added, modified = d.modified, removed = d.removed, "listed");
                Ok(())
            }
            Step::Watch(version) => {
                let mut events = match self.source.watch(version).await {
                    Err(SourceError::Gone { version }) => {
                        self.gone(&version);
                        return Ok(());
                    }
                    other => other?,
                };
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(ev) => self.with(|r| r.apply(ev)),
                        Err(SourceError::Gone { version }) => {
                        self.gone(&version);
                        return Ok(());
                    }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    fn gone(&self, version: &str) {
        tracing::info!(what = %self.source.what(), version, "watch version too old (410 Gone): listing again");
        self.with(|r| r.expire());
    }

    /// Runs for ever (until the task is dropped). A watch that ends sooner than
    /// [`Backoff::min`] is followed by a pause of that long, so a server that closes watches at
    /// once is not asked again in a tight loop.
    pub async fn run(mut self) {
        let mut delay = self.backoff.min;
        loop {
            let started = tokio::time::Instant::now();
            match self.step().await {
                Ok(Step::Watch(_)) if started.elapsed() < self.backoff.min => {
                    delay = self.backoff.min;
                    tokio::time::sleep_until(started + self.backoff.min).await;
                }
                Ok(_) => delay = self.backoff.min,
                Err(e) => {
                    tracing::warn!(what = %self.source.what(), "{}; again in {delay:?}", chain(&e));
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                }
            }
        }
    }
}

/// An error and its causes on one line, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
