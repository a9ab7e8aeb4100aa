//! The peer registry: which weft peer runs on which node, and who is reclaiming whom.
//!
//! It lives in one ConfigMap ([`DEFAULT_NAME`] in the router's namespace) as two JSON objects:
//! `peers` (peer name → node name; each router writes its own entry at start) and `claims`
//! (dead peer name → the peer reclaiming its space). Every write is a compare-and-swap: it names
//! the resourceVersion it read, and the API server refuses it with 409 Conflict when the
//! ConfigMap changed since ([`RegistryError::Conflict`]); the writer then reads again and
//! decides again ([`update`]). So two routers can never both believe they hold one claim.

use std::collections::BTreeMap;
use std::future::Future;

/// The ConfigMap's default name.
pub const DEFAULT_NAME: &str = "weft-peers";
/// Writes [`update`] tries before giving up on a contended registry.
pub const MAX_TRIES: usize = 8;

/// The registry's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerDoc {
    /// Peer name → node name.
    pub peers: BTreeMap<String, String>,
    /// Dead peer name → the peer reclaiming it.
    pub claims: BTreeMap<String, String>,
}

/// The ConfigMap data keys.
const PEERS: &str = "peers";
const CLAIMS: &str = "claims";

impl PeerDoc {
    /// The ConfigMap data of this document.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let json = |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
        BTreeMap::from([(PEERS.to_owned(), json(&self.peers)), (CLAIMS.to_owned(), json(&self.claims))])
    }

    /// The document in ConfigMap `data` (missing keys are empty).
    pub fn from_data(data: Option<&BTreeMap<String, String>>) -> Result<PeerDoc, RegistryError> {
        let field = |key: &'static str| -> Result<BTreeMap<String, String>, RegistryError> {
            match data.and_then(|d| d.get(key)) {
                None => Ok(BTreeMap::new()),
                Some(text) if text.trim().is_empty() => Ok(BTreeMap::new()),
                Some(text) => serde_json::from_str(text).map_err(|source| RegistryError::Decode { key, source }),
            }
        };
        Ok(PeerDoc { peers: field(PEERS)?, claims: field(CLAIMS)? })
    }
}

/// A value with the resourceVersion it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The resourceVersion.
    pub version: String,
    /// The value.
    pub value: T,
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// It changed since it was read (or, on create, it exists): read again.
    #[error("the peer registry changed since it was read (409 Conflict)")]
    Conflict,
    /// It kept changing: [`MAX_TRIES`] writes in a row met a conflict.
    #[error("the peer registry changed under {0} writes in a row: giving up for now")]
    Contended(usize),
    /// A data key does not hold a JSON object of strings (someone edited it by hand?).
    #[error("the peer registry's key {key:?} is not a JSON object of strings: fix or delete the ConfigMap")]
    Decode {
        /// The key.
        key: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The API server refused the request.
    #[error("the API server refused to {verb} the peer registry {what}: {code} {reason}: {message}")]
    Api {
        /// get, create or replace.
        verb: &'static str,
        /// The ConfigMap, as namespace/name.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The machine-readable reason.
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The request could not be made or its answer not read.
    #[error("cannot {verb} the peer registry {what}")]
    Request {
        /// get, create or replace.
        verb: &'static str,
        /// The ConfigMap, as namespace/name.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Where the registry is kept.
pub trait Registry: Send + Sync + 'static {
    /// The document and its version; `None` if it does not exist yet.
    fn read(&self) -> impl Future<Output = Result<Option<Versioned<PeerDoc>>, RegistryError>> + Send;
    /// Creates it with `doc`; [`RegistryError::Conflict`] if it exists. Returns the new version.
    fn create(&self, doc: &PeerDoc) -> impl Future<Output = Result<String, RegistryError>> + Send;
    /// Replaces it with `doc` if its version is still `version`, else [`RegistryError::Conflict`].
    /// Returns the new version.
    fn replace(&self, version: &str, doc: &PeerDoc) -> impl Future<Output = Result<String, RegistryError>> + Send;
}

/// Read, change, compare-and-swap; on a conflict read again and apply `change` again (it must
/// decide from the document it is given). `change` returns whether it changed anything; nothing
/// is written if not. Returns the document as it now stands.
pub async fn update<R: Registry>(r: &R, mut change: impl FnMut(&mut PeerDoc) -> bool) -> Result<Versioned<PeerDoc>, RegistryError> {
    for _ in 0..MAX_TRIES {
        let current = r.read().await?;
        let mut doc = current.as_ref().map(|v| v.value.clone()).unwrap_or_default();
        if !change(&mut doc) {
            // Nothing to write (and nothing created when there is no registry yet).
            return Ok(current.unwrap_or(Versioned { version: String::new(), value: doc }));
        }
        let written = match &current {
            Some(v) => r.replace(&v.version, &doc).await,
            None => r.create(&doc).await,
        };
        match written {
            Ok(version) => return Ok(Versioned { version, value: doc }),
            Err(RegistryError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(RegistryError::Contended(MAX_TRIES))
}

/// Records that peer `me` runs on node `node` (at start; idempotent).
pub async fn register<R: Registry>(r: &R, me: &str, node: &str) -> Result<(), RegistryError> {
    update(r, |doc| {
        if doc.peers.get(me).map(String::as_str) == Some(node) {
            return false;
        }
        doc.peers.insert(me.to_owned(), node.to_owned());
        true
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_round_trips_through_configmap_data_and_bad_data_is_refused() {
        let mut doc = PeerDoc::default();
        doc.peers.insert("0e:00:00:00:00:01".into(), "node-1".into());
        doc.claims.insert("0e:00:00:00:00:02".into(), "0e:00:00:00:00:01".into());
        let data = doc.to_data();
        assert_eq!(data["peers"], r#"{"0e:00:00:00:00:01":"node-1"}"#);
        assert_eq!(PeerDoc::from_data(Some(&data)).unwrap(), doc);
        assert_eq!(PeerDoc::from_data(None).unwrap(), PeerDoc::default());
        let bad = BTreeMap::from([("claims".to_owned(), "[1,2]".to_owned())]);
        let e = PeerDoc::from_data(Some(&bad)).unwrap_err();
        assert!(matches!(e, RegistryError::Decode { key: "claims", .. }), "{e}");
    }
}
