//! Guards of the local servers (the API and metrics) against local clients that exhaust the
//! router's resources, and the process's file limit.
//!
//! Promises:
//! - a server holds at most its [`Budget`] of connections at once; a connection over it is
//!   closed as soon as it is accepted (after a refusal written only if the socket takes it at
//!   once) and counted;
//! - every connection is closed at its deadline, whatever it sent (slow clients included);
//! - an accept error (EMFILE when the process is out of file handles, ENFILE, ENOBUFS, ...) is
//!   retried after a pause that grows to [`MAX_PAUSE`] and is logged at most every
//!   [`LOG_EVERY`]; it never ends the server;
//! - [`raise_file_limit`] raises the soft `RLIMIT_NOFILE` to the hard limit, and
//!   [`Budgets::for_limit`] sizes the two budgets so that together they leave at least
//!   [`RESERVED_FILES`] handles for everything else (IPAM state writes, netlink, the mesh and
//!   sleeve sockets) whenever the limit allows it: a flood of the metrics port neither takes the
//!   API's budget (which CNI uses) nor the handles a state write needs.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File handles kept out of the servers' budgets for everything else the router opens.
pub const RESERVED_FILES: u64 = 256;
/// The API's budget when the file limit allows it.
pub const API_CONNECTIONS: usize = 512;
/// The metrics server's budget when the file limit allows it (a scraper needs one).
pub const METRICS_CONNECTIONS: usize = 64;
/// First pause after an accept error.
pub const MIN_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while they fail.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How often a run of accept errors is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many connections one server may hold, and what it refused.
#[derive(Debug)]
pub struct Budget {
    server: &'static str,
    limit: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
    accept_errors: AtomicU64,
}

impl Budget {
    /// A budget of `limit` connections (at least one) for the server named `server`.
    pub fn new(server: &'static str, limit: usize) -> Arc<Budget> {
        let limit = limit.max(1);
        Arc::new(Budget { server, limit, slots: Arc::new(Semaphore::new(limit)), refused: AtomicU64::new(0), accept_errors: AtomicU64::new(0) })
    }

    /// A slot for one connection, held until the permit is dropped; `None` (counted as refused)
    /// when all are taken.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let p = self.slots.clone().try_acquire_owned().ok();
        if p.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// The server's name (`api`, `metrics`).
    pub fn server(&self) -> &'static str {
        self.server
    }

    /// The most connections held at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Connections closed at once because the budget was used up.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Accept calls that failed.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }
}

/// The budgets of the two local servers.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// The local API (CNI, the CLI).
    pub api: Arc<Budget>,
    /// Prometheus metrics.
    pub metrics: Arc<Budget>,
}

impl Budgets {
    /// Budgets for a process allowed `files` open files: the API gets up to half of what is left
    /// after [`RESERVED_FILES`] (at most [`API_CONNECTIONS`], at least 4), metrics an eighth (at
    /// most [`METRICS_CONNECTIONS`], at least 1).
    pub fn for_limit(files: u64) -> Budgets {
        let spare = files.saturating_sub(RESERVED_FILES);
        let share = |div: u64, lo: usize, hi: usize| usize::try_from(spare / div).unwrap_or(usize::MAX).clamp(lo, hi);
        Budgets { api: Budget::new("api", share(2, 4, API_CONNECTIONS)), metrics: Budget::new("metrics", share(8, 1, METRICS_CONNECTIONS)) }
    }
}

/// The file limit before and after [`raise_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit found at start.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a privileged process could raise the hard
/// limit too; the operator's hard limit is kept as the ceiling).
pub fn raise_file_limit() -> nix::Result<FileLimit> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if was < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FileLimit { was, soft, hard })
}

/// What a server accepts connections from.
pub trait Listener: Send + Sync + 'static {
    /// One accepted connection.
    type Conn: Send + 'static;
    /// Accepts the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
    /// Writes what fits of `bytes` without waiting (the refusal of a connection over budget).
    fn try_write(conn: &Self::Conn, bytes: &[u8]);
}

impl Listener for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Conn> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
    fn try_write(conn: &Self::Conn, bytes: &[u8]) {
        let _ = conn.try_write(bytes);
    }
}

impl Listener for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Conn> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
    fn try_write(conn: &Self::Conn, bytes: &[u8]) {
        let _ = conn.try_write(bytes);
    }
}

/// The pause after each accept error of a run, and when to log it.
#[derive(Debug, Default)]
pub struct Backoff {
    pause: Duration,
    errors: u64,
    logged: Option<Instant>,
}

impl Backoff {
    /// An accept failed at `now`: how long to pause, and whether to log (the first error of a
    /// run, then every [`LOG_EVERY`]).
    pub fn failed(&mut self, now: Instant) -> (Duration, bool) {
        self.errors += 1;
        self.pause = if self.pause.is_zero() { MIN_PAUSE } else { (self.pause * 2).min(MAX_PAUSE) };
        let log = self.logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if log {
            self.logged = Some(now);
        }
        (self.pause, log)
    }

    /// An accept succeeded: the errors of the run that ended, if there was one.
    pub fn succeeded(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.errors);
        self.pause = Duration::ZERO;
        self.logged = None;
        (n > 0).then_some(n)
    }
}

/// Accepts connections for ever. Each one within `budget` is served by `serve` on a task of its
/// own and closed at `deadline` if still open; one over the budget is sent `refusal` (what
/// fits without waiting) and closed at once. Accept errors are paused on and logged, never
/// returned.
pub async fn accept_loop<L, F, Fut>(listener: L, budget: Arc<Budget>, deadline: Duration, refusal: Arc<[u8]>, serve: F)
where
    L: Listener,
    F: Fn(L::Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let mut backoff = Backoff::default();
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                budget.accept_errors.fetch_add(1, Ordering::Relaxed);
                let (pause, log) = backoff.failed(Instant::now());
                if log {
                    tracing::warn!(server = budget.server, errors = budget.accept_errors(), open = budget.open(), "accepting a connection failed, retrying in {pause:?}: {e}");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if let Some(n) = backoff.succeeded() {
            tracing::info!(server = budget.server, "accepting connections again after {n} failed attempts");
        }
        let Some(permit) = budget.admit() else {
            L::try_write(&conn, &refusal);
            drop(conn);
            continue;
        };
        let serve = serve.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, serve(conn)).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::Read;
    use std::sync::Mutex;

    #[test]
    fn budgets_leave_the_reserve_and_favour_the_api() {
        let b = Budgets::for_limit(1024);
        assert_eq!((b.api.limit(), b.metrics.limit()), (384, 96.min(METRICS_CONNECTIONS)));
        assert!(b.api.limit() as u64 + b.metrics.limit() as u64 + RESERVED_FILES <= 1024);
        let b = Budgets::for_limit(1 << 20);
        assert_eq!((b.api.limit(), b.metrics.limit()), (API_CONNECTIONS, METRICS_CONNECTIONS));
        let b = Budgets::for_limit(20_000);
        assert_eq!((b.api.limit(), b.metrics.limit()), (API_CONNECTIONS, METRICS_CONNECTIONS));
        // A tiny limit still lets one scraper and a few CNI calls in.
        let b = Budgets::for_limit(100);
        assert_eq!((b.api.limit(), b.metrics.limit()), (4, 1));
    }

    #[test]
    fn a_budget_counts_what_it_refuses() {
        let b = Budget::new("t", 2);
        let p1 = b.admit().unwrap();
        let _p2 = b.admit().unwrap();
        assert!(b.admit().is_none());
        assert!(b.admit().is_none());
        assert_eq!((b.open(), b.refused()), (2, 2));
        drop(p1);
        assert_eq!(b.open(), 1);
        assert!(b.admit().is_some());
    }

    #[test]
    fn accept_errors_back_off_and_are_logged_sparingly() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut pauses = Vec::new();
        let mut logs = 0;
        for i in 0..40u32 {
            let (p, log) = b.failed(t0 + Duration::from_millis(500) * i);
            pauses.push(p);
            logs += usize::from(log);
        }
        assert_eq!(pauses[0], MIN_PAUSE);
        assert_eq!(pauses[1], MIN_PAUSE * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), MAX_PAUSE);
        // 40 errors over 19.5 s: logged at 0 s and 10 s.
        assert_eq!(logs, 2);
        assert_eq!(b.succeeded(), Some(40));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(t0).0, MIN_PAUSE, "a new run starts again from the shortest pause");
    }

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower it (to no less than what the other tests of this process might hold), then raise.
        let lower = (hard / 2).max(soft.min(hard).min(1024));
        setrlimit(Resource::RLIMIT_NOFILE, lower, hard).unwrap();
        let l = raise_file_limit().unwrap();
        assert_eq!(l, FileLimit { was: lower, soft: hard, hard });
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }

    /// A listener whose accept results are scripted.
    struct Scripted {
        results: Mutex<VecDeque<io::Result<u32>>>,
    }

    impl Listener for Scripted {
        type Conn = u32;
        async fn accept(&self) -> io::Result<u32> {
            let next = self.results.lock().unwrap().pop_front();
            match next {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }
        fn try_write(_: &u32, _: &[u8]) {}
    }

    #[test]
    fn accept_errors_never_end_the_server() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let emfile = || Err(io::Error::from_raw_os_error(24));
        let results = (0..6).map(|_| emfile()).chain([Ok(1), emfile(), Ok(2)]).collect();
        let budget = Budget::new("t", 8);
        let served = Arc::new(Mutex::new(Vec::new()));
        let s = served.clone();
        rt.block_on(async {
            let task = tokio::spawn(accept_loop(Scripted { results: Mutex::new(results) }, budget.clone(), Duration::from_secs(1), Arc::from(&b""[..]), move |c| {
                let s = s.clone();
                async move { s.lock().unwrap().push(c) }
            }));
            for _ in 0..200 {
                if served.lock().unwrap().len() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!task.is_finished(), "the server is still accepting");
            task.abort();
        });
        assert_eq!(*served.lock().unwrap(), vec![1, 2]);
        assert_eq!(budget.accept_errors(), 7);
    }

    #[test]
    fn connections_over_budget_are_refused_at_once_and_slow_ones_cut_at_their_deadline() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let budget = Budget::new("t", 2);
        // The server reads until EOF: a client that sends nothing holds its slot until the deadline.
        rt.spawn(accept_loop(listener, budget.clone(), Duration::from_millis(600), Arc::from(&b"busy\n"[..]), |mut s: tokio::net::TcpStream| async move {
            use tokio::io::AsyncReadExt;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        }));
        let held: Vec<std::net::TcpStream> = (0..2).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        extra.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"busy\n");
        assert!(t.elapsed() < Duration::from_millis(400), "refused at once, not at a deadline: {:?}", t.elapsed());
        assert_eq!((budget.open(), budget.refused()), (2, 1));
        // The silent ones are closed at their deadline, and their slots come back.
        for mut h in held {
            h.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            assert_eq!(h.read_to_end(&mut buf).unwrap(), 0);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(budget.open(), 0);
        let again = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!((budget.open(), budget.refused()), (1, 1));
        drop(again);
    }
}
