//! The CNI configuration the router writes (`--write-cni-conf`): the shipped
//! `deploy/10-weft.conflist`, pointed at this router's API socket, with its
//! `--pod-udp-coalesce-us` (`udpCoalesceMicros`).
//!
//! It is written once the router can serve ADDs (see [`super::health::become_ready`]), atomically
//! (a hidden temporary file in the same directory, fsync, rename, fsync of the directory), so the
//! kubelet never reads half a file and never sees the network configured before a pod could
//! reach its gateway. It is left in place on shutdown: while the DaemonSet replaces the router's
//! pod, the node keeps a configured network (the kubelet would otherwise mark it NotReady and
//! stop scheduling), and ADDs in that window wait and retry on the API socket ("try again later")
//! until the new router answers. A file with the same content is not rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped configuration.
const SHIPPED: &str = include_str!("../../../deploy/10-weft.conflist");

/// Why the configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CniConfError {
    /// The shipped configuration is not the JSON expected (a build problem).
    #[error("the shipped deploy/10-weft.conflist has no plugin of type weft-cni")]
    Shipped,
    /// A file operation failed.
    #[error("write the CNI configuration: {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The configuration for a router whose API socket is `api_socket`, with its
/// `--pod-udp-coalesce-us` (`None`: 0, off).
pub fn render(api_socket: &Path, coalesce: Option<Duration>) -> Result<String, CniConfError> {
    let mut v: serde_json::Value = serde_json::from_str(SHIPPED).map_err(|_| CniConfError::Shipped)?;
    let plugins = v.get_mut("plugins").and_then(|p| p.as_array_mut()).ok_or(CniConfError::Shipped)?;
    let weft = plugins.iter_mut().find(|p| p["type"] == "weft-cni").ok_or(CniConfError::Shipped)?;
    weft["apiSocket"] = serde_json::json!(api_socket);
    weft["udpCoalesceMicros"] = serde_json::json!(weft_kernel::offload::pod_gro_flush_micros(coalesce));
    let mut text = serde_json::to_string_pretty(&v).map_err(|_| CniConfError::Shipped)?;
    text.push('\n');
    Ok(text)
}

/// Writes the configuration to `path` atomically; false if it was already there as is.
pub fn write(path: &Path, api_socket: &Path, coalesce: Option<Duration>) -> Result<bool, CniConfError> {
    let text = render(api_socket, coalesce)?;
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CniConfError + use<> {
        let path = path.to_owned();
        move |source| CniConfError::Io { what, path, source }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Hidden and not ending in .conf/.conflist/.json: libcni never loads it.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_conflist_is_written_atomically_pointed_at_our_socket() {
        let dir = std::env::temp_dir().join(format!("weft-cniconf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("net.d/10-weft.conflist");
        let coalesce = Some(Duration::from_micros(20));
        assert!(write(&path, Path::new("/run/x/weft.sock"), coalesce).unwrap());
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let shipped: serde_json::Value = serde_json::from_str(SHIPPED).unwrap();
        assert_eq!(v["plugins"][0]["apiSocket"], "/run/x/weft.sock");
        assert_eq!(v["plugins"][0]["udpCoalesceMicros"], 20);
        assert_eq!(v["plugins"][1], shipped["plugins"][1], "the chained plugins as shipped");
        assert_eq!((&v["name"], &v["cniVersion"]), (&shipped["name"], &shipped["cniVersion"]));
        assert!(!write(&path, Path::new("/run/x/weft.sock"), coalesce).unwrap(), "the same content is not rewritten");
        assert!(write(&path, Path::new("/run/x/weft.sock"), None).unwrap(), "another setting is written");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["udpCoalesceMicros"], 0);
        assert!(write(&path, Path::new("/run/y.sock"), None).unwrap());
        let names: Vec<_> = std::fs::read_dir(dir.join("net.d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["10-weft.conflist"], "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
