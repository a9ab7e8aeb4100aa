//! A stand-in for the Kubernetes API server's HTTP protocol, for tests: HTTP/1.1 on 127.0.0.1
//! (or on a listener the test binds elsewhere), one thread per connection, keep-alive.
//!
//! It serves what weft uses and behaves as the API server does there:
//! - the same list and watch for Pods (`/api/v1/pods`), Namespaces (`/api/v1/namespaces`) and
//!   NetworkPolicies (`/apis/networking.k8s.io/v1/networkpolicies`), all namespaces, set with
//!   [`StandIn::put`] and [`StandIn::remove`];
//! - `GET /api/v1/nodes`: a NodeList with the current resourceVersion (one counter for every
//!   object, as etcd's revision);
//! - `GET /api/v1/nodes?watch=true&resourceVersion=V`: a chunked stream of JSON lines
//!   (`ADDED`, `MODIFIED`, `DELETED`, with the object), every change after V, then the changes as
//!   they happen; from a V older than the last [`StandIn::compact`], `410 Gone` as the answer
//!   (the request's status) or, for a watch running when the log is compacted, an `ERROR` event
//!   with a `Status` of code 410 ("too old resource version"), which ends the stream;
//! - ConfigMaps in any namespace: `GET` (404 when missing), `POST` (409 AlreadyExists), `PUT`
//!   (404 when missing, 409 Conflict when `metadata.resourceVersion` is not the current one).
//!
//! [`StandIn::hold_configmap_gets`] makes the next N ConfigMap reads wait for each other, so N
//! clients read the same version and race their writes.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Default)]
struct Api {
    version: u64,
    /// Objects by collection path, then by namespace/name.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// (version, collection path, type, object), oldest first.
    events: Vec<(u64, &'static str, &'static str, Value)>,
    /// Watches from versions below this get 410.
    compacted: u64,
    configmaps: BTreeMap<(String, String), Value>,
    /// ConfigMap reads still to be held, and how many are waiting.
    hold: usize,
    held: usize,
    released: u64,
    /// Bumped to end every running watch stream (as the server's watch timeout does).
    watch_epoch: u64,
    /// 410s answered to watch requests, and ERROR 410 events sent in watch streams.
    gone_answers: usize,
    gone_events: usize,
    /// Every request line (method, path and query), in order.
    log: Vec<String>,
    /// Status codes answered to ConfigMap writes.
    writes: Vec<(String, u16)>,
}

struct Shared {
    api: Mutex<Api>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The running stand-in; stops its threads when dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl StandIn {
    /// Serves on a fresh port of 127.0.0.1.
    pub fn start() -> StandIn {
        StandIn::serve(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"))
    }

    /// Writes a kubeconfig at `path` whose cluster is this stand-in (plain HTTP, no
    /// credentials, namespace kube-system).
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\nusers:\n- name: weft\n  user: {{}}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: weft\n    namespace: kube-system\ncurrent-context: standin\n",
            self.addr
        );
        std::fs::write(path, yaml).expect("write the kubeconfig");
    }

    /// Serves on `listener`.
    pub fn serve(listener: TcpListener) -> StandIn {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { api: Mutex::new(Api::default()), changed: Condvar::new(), stop: AtomicBool::new(false) });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    std::thread::spawn(move || serve_connection(&s, conn));
                }
            }
        });
        StandIn { addr, shared }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn change<T>(&self, f: impl FnOnce(&mut Api) -> T) -> T {
        let out = f(&mut self.shared.api.lock().unwrap());
        self.shared.changed.notify_all();
        out
    }

    /// Adds (or replaces) Node `name` with an InternalIP; returns the new version.
    pub fn add_node(&self, name: &str, internal_ip: &str) -> u64 {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]}});
        self.put(node)
    }

    /// Deletes Node `name`; returns the new version.
    pub fn delete_node(&self, name: &str) -> u64 {
        self.remove("Node", "", name).expect("no such node")
    }

    /// Adds or replaces an object (Node, Pod, Namespace or NetworkPolicy: its `kind` says which,
    /// its `metadata` its namespace and name); returns the new version.
    pub fn put(&self, obj: Value) -> u64 {
        let path = collection(obj["kind"].as_str().unwrap_or_default());
        let key = format!("{}/{}", obj["metadata"]["namespace"].as_str().unwrap_or_default(), obj["metadata"]["name"].as_str().unwrap_or_default());
        self.change(|a| {
            a.version += 1;
            let mut o = obj;
            o["metadata"]["resourceVersion"] = json!(a.version.to_string());
            let objects = a.objects.entry(path).or_default();
            let kind = if objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
            objects.insert(key, o.clone());
            let v = a.version;
            a.events.push((v, path, kind, o));
            v
        })
    }

    /// Deletes the object of `kind` named `name` in `namespace` (empty: cluster-scoped); the new
    /// version, or None if there was none.
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) -> Option<u64> {
        let path = collection(kind);
        self.change(|a| {
            let mut o = a.objects.get_mut(path)?.remove(&format!("{namespace}/{name}"))?;
            a.version += 1;
            o["metadata"]["resourceVersion"] = json!(a.version.to_string());
            let v = a.version;
            a.events.push((v, path, "DELETED", o));
            Some(v)
        })
    }

    /// Forgets the event log: running watches get an ERROR 410 event, new watches from older
    /// versions a 410 answer.
    pub fn compact(&self) {
        self.change(|a| {
            a.events.clear();
            a.compacted = a.version + 1;
        });
    }

    /// Ends every running watch stream cleanly (as the server's watch timeout does) and forgets
    /// the event log at once: the next watch from an older version is answered 410.
    pub fn end_watches_and_compact(&self) {
        self.change(|a| {
            a.watch_epoch += 1;
            a.events.clear();
            a.compacted = a.version + 1;
        });
    }

    /// (410 answers to watch requests, ERROR 410 events in watch streams) so far.
    pub fn gones(&self) -> (usize, usize) {
        let a = self.shared.api.lock().unwrap();
        (a.gone_answers, a.gone_events)
    }

    /// The next `n` ConfigMap reads wait until all `n` have arrived.
    pub fn hold_configmap_gets(&self, n: usize) {
        self.change(|a| {
            a.hold = n;
            a.held = 0;
        });
    }

    /// Every request so far (method, path, query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.api.lock().unwrap().log.clone()
    }

    /// How many requests so far start with `prefix` ("GET /api/v1/nodes?").
    pub fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.starts_with(prefix)).count()
    }

    /// The status of every ConfigMap write so far ("PUT name", code).
    pub fn writes(&self) -> Vec<(String, u16)> {
        self.shared.api.lock().unwrap().writes.clone()
    }

    /// A ConfigMap's data key, parsed as JSON.
    pub fn configmap_json(&self, namespace: &str, name: &str, key: &str) -> Option<Value> {
        let a = self.shared.api.lock().unwrap();
        let cm = a.configmaps.get(&(namespace.to_owned(), name.to_owned()))?;
        cm["data"][key].as_str().map(|s| serde_json::from_str(s).unwrap())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)); // wakes the accept loop
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.replace("%2F", "/"))).collect();
    Some(Request { method, path: path.to_owned(), query, body })
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Other",
    };
    write!(w, "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len())?;
    w.flush()
}

/// The collection path of `kind`, and its list kind.
fn collection(kind: &str) -> &'static str {
    COLLECTIONS.iter().find(|(_, k, _)| *k == kind).map(|(p, _, _)| *p).unwrap_or_else(|| panic!("the stand-in does not serve {kind}"))
}

/// (collection path, kind, list kind) of what the stand-in lists and watches.
const COLLECTIONS: [(&str, &str, &str); 4] = [
    ("/api/v1/nodes", "Node", "NodeList"),
    ("/api/v1/pods", "Pod", "PodList"),
    ("/api/v1/namespaces", "Namespace", "NamespaceList"),
    ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy", "NetworkPolicyList"),
];

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn serve_connection(s: &Shared, conn: TcpStream) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let q = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        s.api.lock().unwrap().log.push(format!("{} {}?{q}", req.method, req.path));
        let served = COLLECTIONS.iter().find(|(p, _, _)| *p == req.path && req.method == "GET");
        let ok = if let Some((path, _, list_kind)) = served {
            if req.query.get("watch").is_some_and(|v| v == "true" || v == "1") {
                let from = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
                let timeout = req.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290);
                watch(s, &mut w, path, from, Duration::from_secs(timeout))
            } else {
                let a = s.api.lock().unwrap();
                let items: Vec<Value> = a.objects.get(path).map(|o| o.values().cloned().collect()).unwrap_or_default();
                let list = json!({"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": a.version.to_string()}, "items": items});
                drop(a);
                respond(&mut w, 200, &list)
            }
        } else if let Some(rest) = req.path.strip_prefix("/api/v1/namespaces/") {
            configmap(s, &mut w, &req, rest)
        } else {
            respond(&mut w, 404, &status(404, "NotFound", &format!("the stand-in does not serve {}", req.path)))
        };
        if ok.is_err() {
            return;
        }
    }
}

fn chunk(w: &mut TcpStream, line: &Value) -> std::io::Result<()> {
    let text = format!("{line}\n");
    write!(w, "{:x}\r\n{text}\r\n", text.len())?;
    w.flush()
}

fn watch(s: &Shared, w: &mut TcpStream, path: &str, from: u64, timeout: Duration) -> std::io::Result<()> {
    let (compacted, epoch) = {
        let mut a = s.api.lock().unwrap();
        if from < a.compacted {
            a.gone_answers += 1;
        }
        (a.compacted, a.watch_epoch)
    };
    if from < compacted {
        return respond(w, 410, &status(410, "Expired", &format!("too old resource version: {from} ({compacted})")));
    }
    write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    w.flush()?;
    let end = Instant::now() + timeout;
    let mut cursor = from;
    let mut a = s.api.lock().unwrap();
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if a.watch_epoch != epoch || Instant::now() >= end {
            drop(a);
            break;
        }
        if cursor < a.compacted {
            a.gone_events += 1;
            let e = json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {cursor} ({})", a.compacted))});
            drop(a);
            chunk(w, &e)?;
            break;
        }
        let next: Vec<(u64, Value)> =
            a.events.iter().filter(|(v, p, _, _)| *v > cursor && *p == path).map(|(v, _, t, o)| (*v, json!({"type": t, "object": o}))).collect();
        if next.is_empty() {
            // Changes of other kinds move the cursor too (as they move the version).
            cursor = cursor.max(a.events.iter().map(|(v, _, _, _)| *v).max().unwrap_or(cursor));
            a = s.changed.wait_timeout(a, Duration::from_millis(100)).unwrap().0;
            continue;
        }
        drop(a);
        for (v, e) in next {
            chunk(w, &e)?;
            cursor = v;
        }
        a = s.api.lock().unwrap();
    }
    write!(w, "0\r\n\r\n")?;
    w.flush()
}

fn configmap(s: &Shared, w: &mut TcpStream, req: &Request, rest: &str) -> std::io::Result<()> {
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, name) = match parts[..] {
        [ns, "configmaps"] => (ns.to_owned(), None),
        [ns, "configmaps", name] => (ns.to_owned(), Some(name.to_owned())),
        _ => return respond(w, 404, &status(404, "NotFound", "not served")),
    };
    let mut a = s.api.lock().unwrap();
    match (req.method.as_str(), name) {
        ("GET", Some(name)) => {
            if a.hold > 0 {
                // Hold this read until `hold` reads have arrived, then answer them all alike.
                a.held += 1;
                let round = a.released;
                if a.held == a.hold {
                    a.hold = 0;
                    a.held = 0;
                    a.released += 1;
                    s.changed.notify_all();
                } else {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while a.released == round && Instant::now() < deadline {
                        a = s.changed.wait_timeout(a, Duration::from_millis(50)).unwrap().0;
                    }
                }
            }
            match a.configmaps.get(&(ns, name.clone())).cloned() {
                Some(cm) => {
                    drop(a);
                    respond(w, 200, &cm)
                }
                None => {
                    drop(a);
                    respond(w, 404, &status(404, "NotFound", &format!("configmaps \"{name}\" not found")))
                }
            }
        }
        ("POST", None) => {
            let mut cm: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let name = cm["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let key = (ns.clone(), name.clone());
            if a.configmaps.contains_key(&key) {
                a.writes.push((format!("POST {name}"), 409));
                drop(a);
                return respond(w, 409, &status(409, "AlreadyExists", &format!("configmaps \"{name}\" already exists")));
            }
            a.version += 1;
            cm["metadata"]["resourceVersion"] = json!(a.version.to_string());
            cm["metadata"]["namespace"] = json!(ns);
            a.configmaps.insert(key, cm.clone());
            a.writes.push((format!("POST {name}"), 201));
            drop(a);
            respond(w, 201, &cm)
        }
        ("PUT", Some(name)) => {
            let mut cm: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let key = (ns.clone(), name.clone());
            let Some(current) = a.configmaps.get(&key) else {
                a.writes.push((format!("PUT {name}"), 404));
                drop(a);
                return respond(w, 404, &status(404, "NotFound", &format!("configmaps \"{name}\" not found")));
            };
            if cm["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                a.writes.push((format!("PUT {name}"), 409));
                drop(a);
                let m = format!("Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again");
                return respond(w, 409, &status(409, "Conflict", &m));
            }
            a.version += 1;
            cm["metadata"]["resourceVersion"] = json!(a.version.to_string());
            cm["metadata"]["namespace"] = json!(ns);
            a.configmaps.insert(key, cm.clone());
            a.writes.push((format!("PUT {name}"), 200));
            drop(a);
            respond(w, 200, &cm)
        }
        _ => {
            drop(a);
            respond(w, 405, &status(405, "MethodNotAllowed", "not served"))
        }
    }
}

/// A running Pod `namespace/name` on `node` with `labels`, address `ip` and container ports
/// (name, number, protocol), as the API shows it.
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], node: &str, ip: &str, ports: &[(&str, u16, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let ports: Vec<Value> = ports.iter().map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto})).collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// A Namespace with `labels` (and `kubernetes.io/metadata.name`, as the API server adds it).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": l}})
}

/// A NetworkPolicy `namespace/name` with `spec`.
pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": namespace, "name": name}, "spec": spec})
}
