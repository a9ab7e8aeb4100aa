//! A blocking client of the local API over its unix socket, for the CLI and `weft-cni`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http;
use crate::types::ErrorBody;

/// Default path of the router's API socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weft.sock";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("the weft router is not running (no API at {path}): start it, or point --api-socket at it")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The socket exists but this user may not connect to it.
    #[error("permission denied on the weft router's API socket {path}: it is for root only (mode 0600); run this as root")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("talking to the weft router at {path}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The router answered with something that is not the expected HTTP/JSON.
    #[error("the weft router at {path} answered with a malformed reply: {detail}")]
    Malformed {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The router refused the request.
    #[error("the weft router refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The router's explanation.
        message: String,
    },
}

/// A client bound to one socket path.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the API at `path`, with a 30 s timeout per call.
    pub fn new(path: impl AsRef<Path>) -> Client {
        Client { path: path.as_ref().to_owned(), timeout: Duration::from_secs(30) }
    }

    /// Changes the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `GET path`, answer decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, &[])
    }

    /// `POST path` with `body` as JSON, answer decoded as `T`.
    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| self.malformed(format!("encode request: {e}")))?;
        self.call("POST", path, &bytes)
    }

    /// What a failed connect means: no permission, or no router listening.
    fn connect_error(&self, source: std::io::Error) -> ClientError {
        let path = self.path.clone();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path, source },
            _ => ClientError::NotRunning { path, source },
        }
    }

    fn malformed(&self, detail: String) -> ClientError {
        ClientError::Malformed { path: self.path.clone(), detail }
    }

    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: &[u8]) -> Result<T, ClientError> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let mut s = UnixStream::connect(&self.path).map_err(|e| self.connect_error(e))?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        s.write_all(&http::request(method, path, body)).map_err(io)?;
        let mut buf = Vec::new();
        let head = loop {
            let mut chunk = [0u8; 8192];
            let n = s.read(&mut chunk).map_err(io)?;
            buf.extend_from_slice(&chunk[..n]);
            match http::parse(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if n == 0 => return Err(self.malformed("connection closed mid-reply".into())),
                Ok(None) => continue,
                Err(e) => return Err(self.malformed(e.to_string())),
            }
        };
        let status: u16 = head.second.parse().map_err(|_| self.malformed(format!("status {:?}", head.second)))?;
        let body = &buf[head.head_len..head.head_len + head.body_len];
        if status != 200 {
            let message = serde_json::from_slice::<ErrorBody>(body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(body).map_err(|e| self.malformed(format!("decode {path} reply: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(status: u16, body: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = std::env::temp_dir().join(format!("weft-api-{}-{}", std::process::id(), status));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 1024];
                let n = c.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Ok(Some(h)) = http::parse(&buf) {
                    c.write_all(&http::response(status, body)).unwrap();
                    return buf[h.head_len..].to_vec();
                }
            }
        });
        (path, t)
    }

    #[test]
    fn posts_json_and_decodes_the_answer() {
        let (path, t) = serve_once(200, br#"{"n":3}"#);
        let v: serde_json::Value = Client::new(&path).post("/x", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(v["n"], 3);
        assert_eq!(t.join().unwrap(), br#"{"a":1}"#);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_refusal_carries_the_routers_message() {
        let (path, t) = serve_once(409, br#"{"error":"address 10.32.0.5 is taken"}"#);
        let e = Client::new(&path).get::<serde_json::Value>("/x").unwrap_err();
        assert!(matches!(e, ClientError::Refused { status: 409, ref message } if message.contains("taken")), "{e}");
        t.join().unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn permission_denied_is_not_called_not_running() {
        let c = Client::new("/run/weft/weft.sock");
        let e = c.connect_error(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(e, ClientError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains("permission denied") && !e.to_string().contains("not running"), "{e}");
        for kind in [std::io::ErrorKind::NotFound, std::io::ErrorKind::ConnectionRefused] {
            assert!(matches!(c.connect_error(kind.into()), ClientError::NotRunning { .. }), "{kind:?}");
        }
    }

    #[test]
    fn no_router_is_said_plainly() {
        let e = Client::new("/nonexistent/weft.sock").get::<serde_json::Value>("/status").unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }));
        assert!(e.to_string().contains("not running"), "{e}");
    }
}
