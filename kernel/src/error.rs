//! Errors of the kernel layer: each says what was being done, to which object, in which namespace.

use std::io;

/// Result alias for the kernel layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the kernel layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused or failed a request.
    #[error("{op} {target} in namespace {ns}")]
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
    #[error("{op} network namespace {ns}")]
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
    errors.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; ")
}

/// An error and its causes on one line, `what failed: why: why`, for where an error is kept
/// as text (logs, CNI error details, messages of a test bed): an error's own text names what
/// failed, its [`source`](std::error::Error::source) chain says why.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let e = Error::Kernel { op: "create veth pair", target: "vp1".into(), ns: "wt-1-a".into(), source: io::Error::from_raw_os_error(libc::EEXIST) };
        assert_eq!(e.to_string(), "create veth pair vp1 in namespace wt-1-a");
        let text = chain(&e);
        assert!(text.starts_with("create veth pair vp1 in namespace wt-1-a: File exists"), "{text}");
        let many = Error::Many(vec![e, Error::Invalid("no".into())]);
        assert!(many.to_string().starts_with("2 failures: create veth pair vp1 in namespace wt-1-a: File exists"), "{many}");
    }
}
