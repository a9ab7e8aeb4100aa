//! The local API server: HTTP/1.1 on a unix socket (mode 0600), one request per connection,
//! JSON bodies. Routing of paths to handlers is the daemon's; this module owns the socket,
//! the framing and the limits: at most its connection budget at once (more are answered 503,
//! which CNI retries, and closed; see [`guard`]), the whole request within 10 s, the answer
//! written within 10 s, and accept errors never end the server.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use weft_api::http;
use weft_api::types::ErrorBody;

use crate::daemon::guard::{self, Budget};

/// A request as handlers see it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// The body (JSON, possibly empty).
    pub body: Vec<u8>,
}

/// A handler's answer.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
}

impl Response {
    /// 200 with `value` as JSON.
    pub fn ok<T: serde::Serialize>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response { status: 200, body },
            Err(e) => Response::error(500, format!("encode reply: {e}")),
        }
    }

    /// An error status with a message saying what went wrong and what to do.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let body = serde_json::to_vec(&ErrorBody { error: message.into() }).unwrap_or_default();
        Response { status, body }
    }

    /// Decodes a request body, or answers 400 saying why not.
    pub fn decode<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
        serde_json::from_slice(&req.body).map_err(|e| Response::error(400, format!("bad request body for {}: {e}", req.path)))
    }
}

/// Handles requests; called on a tokio worker, so it must not block for long.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// How long a client may take to send its request (all of it).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may last in all (reading, handling, writing).
const CONN_DEADLINE: Duration = Duration::from_secs(60);

/// Binds the socket at `path` (its directory is created; a stale socket is replaced; mode 0600).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves connections until the task is dropped, at most `budget` of them at once.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>, budget: Arc<Budget>) {
    let refusal = http::response(
        503,
        &serde_json::to_vec(&ErrorBody { error: format!("the router is serving {} API connections already; try again", budget.limit()) }).unwrap_or_default(),
    );
    guard::accept_loop(listener, budget, CONN_DEADLINE, Arc::from(refusal), move |conn| one(conn, handler.clone())).await;
}

async fn one<H: Handler>(mut conn: tokio::net::UnixStream, handler: Arc<H>) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut conn)).await {
        Ok(Ok(req)) => handler.handle(req).await,
        Ok(Err(e)) => Response::error(400, e),
        Err(_) => Response::error(400, "request not received within 10 s"),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = conn.write_all(&http::response(reply.status, &reply.body)).await;
        let _ = conn.shutdown().await;
    })
    .await;
}

async fn read_request(conn: &mut tokio::net::UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
        buf.extend_from_slice(&chunk[..n]);
        match http::parse(&buf) {
            Ok(Some(h)) => {
                let body = buf[h.head_len..h.head_len + h.body_len].to_vec();
                let path = h.second.split('?').next().unwrap_or("").to_owned();
                return Ok(Request { method: h.first, path, body });
            }
            Ok(None) if n == 0 => return Err("connection closed before the request was complete".into()),
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Removes the socket file (on shutdown).
pub fn unbind(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::{Client, ClientError};

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, req: Request) -> Response {
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/status") => Response::ok(&serde_json::json!({"ok": true})),
                ("POST", "/echo") => match Response::decode::<serde_json::Value>(&req) {
                    Ok(v) => Response::ok(&v),
                    Err(r) => r,
                },
                _ => Response::error(404, format!("no such endpoint {} {}", req.method, req.path)),
            }
        }
    }

    #[test]
    fn serves_json_over_a_private_unix_socket() {
        let dir = std::env::temp_dir().join(format!("weft-apisrv-{}", std::process::id()));
        let path = dir.join("sub/weft.sock");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = rt.block_on(async { bind(&path) }).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        rt.spawn(serve(listener, Arc::new(Echo), Budget::new("api", 4)));
        let client_path = path.clone();
        let results = std::thread::spawn(move || {
            let c = Client::new(&client_path);
            let s: serde_json::Value = c.get("/status").unwrap();
            let e: serde_json::Value = c.post("/echo", &serde_json::json!({"x": [1, 2]})).unwrap();
            let missing = c.get::<serde_json::Value>("/nope").unwrap_err();
            (s, e, missing)
        });
        let (s, e, missing) = rt.block_on(async {
            loop {
                if results.is_finished() {
                    break results.join().unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!(s["ok"], true);
        assert_eq!(e["x"][1], 2);
        assert!(matches!(missing, ClientError::Refused { status: 404, ref message } if message.contains("/nope")));
        unbind(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_connection_over_the_budget_is_answered_503_at_once() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("weft-apisrv-busy-{}", std::process::id()));
        let path = dir.join("weft.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(async { bind(&path) }).unwrap();
        let budget = Budget::new("api", 1);
        rt.spawn(serve(listener, Arc::new(Echo), budget.clone()));
        // A client that sends nothing holds the only slot ...
        let _slow = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let t = std::time::Instant::now();
        while budget.open() == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // ... so the next is told so at once (503, which CNI retries), not left waiting.
        let mut busy = std::os::unix::net::UnixStream::connect(&path).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        busy.read_to_end(&mut got).unwrap();
        let h = http::parse(&got).unwrap().unwrap();
        assert_eq!(h.second, "503");
        let body: ErrorBody = serde_json::from_slice(&got[h.head_len..]).unwrap();
        assert!(body.error.contains("try again"), "{}", body.error);
        assert_eq!(budget.refused(), 1);
        // A client that sends its request slowly is cut at the read deadline, not held for ever:
        // covered by `guard`'s tests; here the slot frees when the slow client goes.
        drop(_slow);
        let t = std::time::Instant::now();
        while budget.open() == 1 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut ok = std::os::unix::net::UnixStream::connect(&path).unwrap();
        ok.write_all(&http::request("GET", "/status", &[])).unwrap();
        let mut got = Vec::new();
        ok.read_to_end(&mut got).unwrap();
        assert_eq!(http::parse(&got).unwrap().unwrap().second, "200");
        unbind(&path);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
