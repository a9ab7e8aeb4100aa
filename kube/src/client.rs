//! The API server behind the interfaces: [`ApiSource`] (an [`ObjectSource`] over `kube::Api`)
//! and [`ConfigMapRegistry`] (the peer registry in a ConfigMap).
//!
//! A watch asks the server to end it after [`WATCH_TIMEOUT_SECS`] (the informer then watches
//! again from the last version), with bookmarks. A 410 Gone, whether the answer to the watch
//! request or an ERROR event inside its stream, becomes [`SourceError::Gone`]. Writes to the
//! ConfigMap carry the resourceVersion read, so the server refuses a stale one with 409, which
//! becomes [`RegistryError::Conflict`] (as does a 404 on replace: it was deleted meanwhile).

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use serde::de::DeserializeOwned;

use crate::registry::{PeerDoc, Registry, RegistryError, Versioned};
use crate::source::{Event, Listed, Object, ObjectSource, SourceError, Watch};

/// How long the server keeps one watch open.
pub const WATCH_TIMEOUT_SECS: u32 = 290;

/// One kind of object on the API server.
pub struct ApiSource<K> {
    api: Api<K>,
    what: String,
}

impl<K> ApiSource<K>
where
    K: Object + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    /// Every object of the kind: cluster-scoped kinds, or namespaced ones in all namespaces.
    pub fn all(client: kube::Client, what: &str) -> ApiSource<K> {
        ApiSource { api: Api::all(client), what: what.to_owned() }
    }

    /// The objects of a namespaced kind in `namespace`.
    pub fn namespaced(client: kube::Client, namespace: &str, what: &str) -> ApiSource<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    {
        ApiSource { api: Api::namespaced(client, namespace), what: format!("{what} in {namespace}") }
    }
}

fn api_error(verb: &'static str, what: &str, s: &Status) -> SourceError {
    SourceError::Api { verb, what: what.to_owned(), code: s.code, reason: s.reason.clone(), message: s.message.clone() }
}

fn source_error(verb: &'static str, what: &str, version: &str, e: kube::Error) -> SourceError {
    match e {
        kube::Error::Api(s) if s.code == 410 => SourceError::Gone { version: version.to_owned() },
        kube::Error::Api(s) => api_error(verb, what, &s),
        source => SourceError::Request { verb, what: what.to_owned(), source },
    }
}

impl<K> ObjectSource<K> for ApiSource<K>
where
    K: Object + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    fn what(&self) -> String {
        self.what.clone()
    }

    async fn list(&self) -> Result<Listed<K>, SourceError> {
        let list = self.api.list(&ListParams::default()).await.map_err(|e| source_error("list", &self.what, "", e))?;
        Ok(Listed { version: list.metadata.resource_version.unwrap_or_default(), items: list.items })
    }

    async fn watch(&self, version: &str) -> Result<Watch<K>, SourceError> {
        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        let stream = self.api.watch(&params, version).await.map_err(|e| source_error("watch", &self.what, version, e))?;
        let (what, from) = (self.what.clone(), version.to_owned());
        Ok(stream
            .map(move |ev| match ev {
                Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => Ok(Event::Applied(o)),
                Ok(WatchEvent::Deleted(o)) => Ok(Event::Deleted(o)),
                Ok(WatchEvent::Bookmark(b)) => Ok(Event::Bookmark(b.metadata.resource_version)),
                Ok(WatchEvent::Error(s)) if s.code == 410 => Err(SourceError::Gone { version: from.clone() }),
                Ok(WatchEvent::Error(s)) => Err(api_error("watch", &what, &s)),
                Err(e) => Err(source_error("watch", &what, &from, e)),
            })
            .boxed())
    }
}

/// The peer registry in ConfigMap `name` of `namespace`.
pub struct ConfigMapRegistry {
    api: Api<ConfigMap>,
    name: String,
    what: String,
}

impl ConfigMapRegistry {
    /// The registry in ConfigMap `namespace`/`name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> ConfigMapRegistry {
        ConfigMapRegistry { api: Api::namespaced(client, namespace), name: name.to_owned(), what: format!("{namespace}/{name}") }
    }

    fn error(&self, verb: &'static str, e: kube::Error) -> RegistryError {
        match e {
            kube::Error::Api(s) if s.code == 409 => RegistryError::Conflict,
            kube::Error::Api(s) if s.code == 404 && verb == "replace" => RegistryError::Conflict,
            kube::Error::Api(s) => RegistryError::Api { verb, what: self.what.clone(), code: s.code, reason: s.reason.clone(), message: s.message.clone() },
            source => RegistryError::Request { verb, what: self.what.clone(), source },
        }
    }

    fn configmap(&self, version: Option<&str>, doc: &PeerDoc) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: version.map(str::to_owned),
                labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_owned(), "weft".to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(doc.to_data()),
            ..ConfigMap::default()
        }
    }
}

impl Registry for ConfigMapRegistry {
    async fn read(&self) -> Result<Option<Versioned<PeerDoc>>, RegistryError> {
        let Some(cm) = self.api.get_opt(&self.name).await.map_err(|e| self.error("get", e))? else {
            return Ok(None);
        };
        let value = PeerDoc::from_data(cm.data.as_ref())?;
        Ok(Some(Versioned { version: cm.metadata.resource_version.unwrap_or_default(), value }))
    }

    async fn create(&self, doc: &PeerDoc) -> Result<String, RegistryError> {
        let cm = self.api.create(&PostParams::default(), &self.configmap(None, doc)).await.map_err(|e| self.error("create", e))?;
        Ok(cm.metadata.resource_version.unwrap_or_default())
    }

    async fn replace(&self, version: &str, doc: &PeerDoc) -> Result<String, RegistryError> {
        let cm = self.api.replace(&self.name, &PostParams::default(), &self.configmap(Some(version), doc)).await.map_err(|e| self.error("replace", e))?;
        Ok(cm.metadata.resource_version.unwrap_or_default())
    }
}
