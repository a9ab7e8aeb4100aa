//! The CNI protocol: spec versions, the invocation (environment and network configuration),
//! error JSON with the spec's codes, and results in the version the runtime asked for.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

/// The spec versions this plugin speaks.
pub(crate) const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub(crate) const NEWEST: &str = "1.1.0";

/// The spec's error codes.
pub(crate) mod code {
    /// Incompatible CNI version.
    pub(crate) const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub(crate) const BAD_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub(crate) const IO: u32 = 5;
    /// Failure to decode content.
    pub(crate) const DECODE: u32 = 6;
    /// Invalid network config.
    pub(crate) const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub(crate) const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub(crate) const NOT_AVAILABLE: u32 = 50;
}

/// A CNI error: code, message and details, printed as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CniError {
    pub(crate) code: u32,
    pub(crate) msg: String,
    pub(crate) details: String,
}

impl CniError {
    pub(crate) fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// `what` failed with `e`: `msg` says what and `e` itself, `details` the causes behind `e`
    /// (its source chain, `: `-joined), then `hint` if any.
    pub(crate) fn caused(code: u32, what: &str, e: &dyn std::error::Error, hint: &str) -> CniError {
        let mut causes = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        let details = [causes.join(": "), hint.to_owned()].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
        CniError::new(code, format!("{what}: {e}"), details)
    }

    /// The error JSON, in `version`.
    pub(crate) fn to_json(&self, version: &str) -> String {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v.to_string()
    }
}

/// The plugin's network configuration (stdin).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetConf {
    /// Spec version of this configuration.
    #[serde(default = "newest")]
    pub(crate) cni_version: String,
    /// Plugin type (`weft-cni`).
    #[serde(rename = "type", default)]
    pub(crate) kind: String,
    /// The bridge pods attach to.
    #[serde(default = "default_bridge")]
    pub(crate) bridge: String,
    /// The router's API socket.
    #[serde(default = "default_socket")]
    pub(crate) api_socket: String,
    /// Hairpin mode on the host port (a pod can reach itself through a service).
    #[serde(default = "yes")]
    pub(crate) hairpin: bool,
    /// How long (µs) GRO on the host port holds the pod's UDP datagrams to coalesce them; 0 or
    /// absent: not coalesced (`weft_kernel::offload`). The router writes its
    /// `--pod-udp-coalesce-us`.
    #[serde(default)]
    pub(crate) udp_coalesce_micros: u64,
    /// The previous result, for CHECK and DEL (and chaining).
    #[serde(default)]
    pub(crate) prev_result: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub(crate) valid_attachments: Option<Vec<GcAttachment>>,
    /// GC, as some runtimes spell it.
    #[serde(rename = "cni.dev/attachments", default)]
    pub(crate) attachments: Option<Vec<GcAttachment>>,
}

/// One valid attachment in a GC request.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GcAttachment {
    #[serde(rename = "containerID")]
    pub(crate) container_id: String,
    pub(crate) ifname: String,
}

fn newest() -> String {
    NEWEST.into()
}
fn default_bridge() -> String {
    "weft".into()
}
fn default_socket() -> String {
    weft_api::client::DEFAULT_SOCKET.into()
}
fn yes() -> bool {
    true
}

impl NetConf {
    /// The GRO flush timeout for the pod's host port; `None`: the pod's UDP is not coalesced.
    pub(crate) fn udp_coalesce(&self) -> Option<std::time::Duration> {
        weft_kernel::offload::pod_gro_flush_from_micros(self.udp_coalesce_micros)
    }

    /// Parses stdin; an empty stdin is the default configuration (VERSION may send none).
    pub(crate) fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let text: &[u8] = if stdin.iter().all(u8::is_ascii_whitespace) { b"{}" } else { stdin };
        serde_json::from_slice(text)
            .map_err(|e| CniError::new(code::DECODE, "cannot decode the network configuration on stdin", e.to_string()))
            .and_then(|c: NetConf| {
                if !c.kind.is_empty() && c.kind != "weft-cni" {
                    return Err(CniError::new(code::INVALID_CONFIG, format!("network configuration is for plugin type {:?}, not weft-cni", c.kind), ""));
                }
                let max = weft_kernel::offload::MAX_POD_GRO_FLUSH_MICROS;
                if c.udp_coalesce_micros > max {
                    return Err(CniError::new(code::INVALID_CONFIG, format!("udpCoalesceMicros {} is above {max}", c.udp_coalesce_micros), "0 turns coalescing off"));
                }
                Ok(c)
            })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub(crate) command: String,
    pub(crate) container_id: String,
    pub(crate) netns: String,
    pub(crate) ifname: String,
    /// `CNI_ARGS`, parsed leniently (`IgnoreUnknown`, `K8S_POD_*`); none is required today.
    #[allow(dead_code)]
    pub(crate) args: BTreeMap<String, String>,
}

impl Env {
    /// Reads the environment through `get` (the process environment, or a table in tests).
    pub(crate) fn read(get: impl Fn(&str) -> Option<String>) -> Env {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        }
    }

    /// Fails with code 4 naming the variable if it is empty.
    pub(crate) fn require(&self, name: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(code::BAD_ENVIRONMENT, format!("{name} is not set"), format!("the runtime must set {name} for {}", self.command)));
        }
        Ok(())
    }

    /// Checks `CNI_CONTAINERID` as the spec defines it: an ASCII letter or digit, then letters,
    /// digits, `_`, `.` and `-`.
    pub(crate) fn check_container_id(&self) -> Result<(), CniError> {
        self.require("CNI_CONTAINERID", &self.container_id)?;
        let mut chars = self.container_id.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(CniError::new(
                code::BAD_ENVIRONMENT,
                format!("CNI_CONTAINERID {:?} is not a valid container ID", self.container_id),
                "a container ID starts with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            ));
        }
        Ok(())
    }

    /// Checks `CNI_IFNAME` is a usable interface name.
    pub(crate) fn check_ifname(&self) -> Result<(), CniError> {
        self.require("CNI_IFNAME", &self.ifname)?;
        let ok = self.ifname.len() <= 15
            && self.ifname != "."
            && self.ifname != ".."
            && !self.ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !ok {
            return Err(CniError::new(
                code::BAD_ENVIRONMENT,
                format!("CNI_IFNAME {:?} is not a valid interface name", self.ifname),
                "an interface name has 1 to 15 bytes, is not '.' or '..', and has none of '/', ':' or white space",
            ));
        }
        Ok(())
    }
}

/// Why `CNI_NETNS` names a namespace a pod may not be put in: the plugin's own (where the
/// bridge and the router live) or the host's (PID 1's). Compared by namespace identity (device
/// and inode), so any path to the same namespace is caught. `None` when it is neither, or when
/// the path cannot be read (opening it reports that).
pub(crate) fn forbidden_netns(path: &str) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let given = id(path)?;
    if id("/proc/self/ns/net") == Some(given) {
        return Some("this plugin's own network namespace (the host side, where the bridge is)");
    }
    if id("/proc/1/ns/net") == Some(given) {
        return Some("the host's network namespace (that of PID 1)");
    }
    None
}

/// What ADD created, to report in the result.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub(crate) bridge: String,
    pub(crate) bridge_mac: Option<String>,
    pub(crate) host_if: String,
    pub(crate) host_mac: Option<String>,
    pub(crate) pod_if: String,
    pub(crate) pod_mac: Option<String>,
    pub(crate) sandbox: String,
    pub(crate) address: String,
    pub(crate) gateway: Option<String>,
    pub(crate) mtu: u32,
}

/// The ADD result in `version`: bridge, host veth (no sandbox), pod interface (with sandbox),
/// and its address pointing at the pod interface (index 2), as chained plugins expect.
pub(crate) fn result(version: &str, a: &Attached) -> Value {
    let iface = |name: &str, mac: &Option<String>, sandbox: Option<&str>, mtu: Option<u32>| {
        let mut v = json!({ "name": name });
        if let Some(m) = mac {
            v["mac"] = json!(m);
        }
        if let Some(s) = sandbox {
            v["sandbox"] = json!(s);
        }
        if let (Some(m), true) = (mtu, version == "1.1.0") {
            v["mtu"] = json!(m);
        }
        v
    };
    let mut ip = json!({ "address": a.address, "interface": 2 });
    if let Some(gw) = &a.gateway {
        ip["gateway"] = json!(gw);
    }
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    let mut routes = Vec::new();
    if let Some(gw) = &a.gateway {
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": gw }));
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            iface(&a.bridge, &a.bridge_mac, None, None),
            iface(&a.host_if, &a.host_mac, None, Some(a.mtu)),
            iface(&a.pod_if, &a.pod_mac, Some(&a.sandbox), Some(a.mtu)),
        ],
        "ips": [ip],
        "routes": routes,
        "dns": {},
    })
}

/// The VERSION answer.
pub(crate) fn version_result(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED })
}
