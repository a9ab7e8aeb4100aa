//! Errors of the kernel layer: each says what was being done, to which object, in which namespace.

use std::io;

/// Result alias for the kernel layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the kernel layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused or failed a request.
    #[error("{op} {target} in namespace {ns}: {source}")]
    Kernel {
        /// What was being done, e.g. "create veth pair".
        op: &'static str,
        /// The object it was done to (link name, address, route).
        target: String,
        /// The namespace the request went to.
        ns: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A link that the operation needs does not exist.
    #[error("no link named {name:?} in namespace {ns}")]
    NoSuchLink {
        /// The link's name.
        name: String,
        /// The namespace searched.
        ns: String,
    },
    /// The kernel answered with bytes the netlink parser did not accept.
    #[error("malformed netlink answer to {op} in namespace {ns}: {detail}")]
    Decode {
        /// The request that was answered.
        op: &'static str,
        /// The namespace of the socket.
        ns: String,
        /// What the parser said.
        detail: String,
    },
    /// A namespace operation (create, open, enter, delete) failed.
    #[error("{op} network namespace {ns}: {source}")]
    Namespace {
        /// What was being done.
        op: &'static str,
        /// The namespace's name.
        ns: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The caller asked for something that cannot be done as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The test bed could not be built or torn down.
    #[error("test bed: {0}")]
    TestBed(String),
    /// Several independent steps (a teardown) failed; all are listed.
    #[error("{} failures: {}", .0.len(), list(.0))]
    Many(Vec<Error>),
}

fn list(errors: &[Error]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// The OS error number behind this error, if the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } | Error::Namespace { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the kernel said the object already exists (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.raw_os_error() == Some(libc::EEXIST)
    }

    /// Whether the kernel said the object does not exist (`ENOENT`, `ENODEV`, `ESRCH`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NoSuchLink { .. })
            || matches!(self.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::ESRCH))
    }
}
