//! The object source interface: what an informer needs from the API server for one kind of
//! object.
//!
//! Contract: [`ObjectSource::list`] returns every object at one resourceVersion;
//! [`ObjectSource::watch`] from that version returns every change after it, in order, each
//! object carrying its own resourceVersion. A watch from a version the source no longer keeps
//! fails with [`SourceError::Gone`], at once or as an event of the stream (the API server's 410
//! Gone / "too old resource version"); the caller then lists again. A stream may end at any time
//! (the server's watch timeout): the caller watches again from the last version it saw.

use std::future::Future;

use futures::stream::BoxStream;
use kube::Resource;

/// An object as the informer stores it: a Kubernetes resource.
pub trait Object: Resource + Clone + Send + Sync + 'static {}
impl<K: Resource + Clone + Send + Sync + 'static> Object for K {}

/// Where an object lives: namespace (empty for cluster-scoped objects) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The namespace, empty for cluster-scoped kinds such as Node.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Key {
    /// The key of `obj`.
    pub fn of<K: Resource>(obj: &K) -> Key {
        let m = obj.meta();
        Key { namespace: m.namespace.clone().unwrap_or_default(), name: m.name.clone().unwrap_or_default() }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() { f.write_str(&self.name) } else { write!(f, "{}/{}", self.namespace, self.name) }
    }
}

/// The result of a list: the objects and the resourceVersion to watch from.
#[derive(Clone, Debug)]
pub struct Listed<K> {
    /// Every object.
    pub items: Vec<K>,
    /// The list's resourceVersion.
    pub version: String,
}

/// One change seen by a watch.
#[derive(Clone, Debug)]
pub enum Event<K> {
    /// An object was added or modified (the new state).
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
    /// Nothing changed, but the watch has reached this resourceVersion.
    Bookmark(String),
}

/// The events of one watch.
pub type Watch<K> = BoxStream<'static, Result<Event<K>, SourceError>>;

/// Lists and watches one kind of object.
pub trait ObjectSource<K>: Send + Sync + 'static {
    /// What is listed, for logs ("nodes").
    fn what(&self) -> String;
    /// Every object, at one resourceVersion.
    fn list(&self) -> impl Future<Output = Result<Listed<K>, SourceError>> + Send;
    /// The changes after `version`.
    fn watch(&self, version: &str) -> impl Future<Output = Result<Watch<K>, SourceError>> + Send;
}

/// Why a list or watch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The version watched from is no longer kept (410 Gone): list again.
    #[error("resource version {version:?} is too old to watch from (410 Gone): listing again")]
    Gone {
        /// The version watched from.
        version: String,
    },
    /// The API server answered with an error status.
    #[error("the API server refused to {verb} {what}: {code} {reason}: {message}")]
    Api {
        /// list or watch.
        verb: &'static str,
        /// What.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The machine-readable reason (Forbidden, ...).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The request could not be made or its answer not read.
    #[error("cannot {verb} {what}")]
    Request {
        /// list or watch.
        verb: &'static str,
        /// What.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}
