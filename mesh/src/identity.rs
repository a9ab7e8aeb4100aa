//! Peer identity, persisted in the state directory: a stable peer name (48 bits, random, with
//! the locally-administered bit set and the group bit clear, like a MAC), a nickname, and an
//! incarnation that grows on every start.
//!
//! Files are written crash-safely (temporary file, fsync, rename, fsync of the directory), so a
//! crash mid-write leaves the old file or the new one, never a torn one. A corrupt file is an
//! error naming the file, never a silent new identity. A file naming the zero or the broadcast
//! peer name (see [`PeerName::check`]) is refused the same way: no peer may have those names.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::peer::{InvalidPeerName, PeerName};

/// The identity file's name in the state directory.
pub const FILE: &str = "identity";

/// Who this router is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Stable across restarts.
    pub name: PeerName,
    /// Human-readable.
    pub nickname: String,
    /// Higher on every start.
    pub incarnation: u64,
}

/// Why the identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("identity file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file exists but is not an identity.
    #[error("identity file {path} is corrupt ({detail}); move it away to start as a new peer")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file names a peer that cannot exist (the zero or the broadcast name).
    #[error("identity file {path} holds a name no peer may have; move it away to start as a new peer")]
    InvalidName {
        /// The file.
        path: PathBuf,
        /// What is wrong with the name.
        #[source]
        source: InvalidPeerName,
    },
}

impl Identity {
    /// Loads the identity from `dir` (creating a new one on first start), bumps the incarnation
    /// and persists it before returning.
    pub fn load_or_create(dir: &Path, nickname: &str) -> Result<Identity, IdentityError> {
        let path = dir.join(FILE);
        let io_err = |source| IdentityError::Io { path: path.clone(), source };
        fs::create_dir_all(dir).map_err(io_err)?;
        let (name, incarnation) = match fs::read_to_string(&path) {
            Ok(text) => {
                let (name, inc) = parse(&text).map_err(|detail| IdentityError::Corrupt { path: path.clone(), detail })?;
                name.check().map_err(|source| IdentityError::InvalidName { path: path.clone(), source })?;
                (name, inc.saturating_add(1))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (random_name().map_err(io_err)?, 1),
            Err(e) => return Err(io_err(e)),
        };
        let id = Identity { name, nickname: nickname.to_owned(), incarnation };
        write_atomic(&path, format!("name {}\nincarnation {}\n", id.name, id.incarnation).as_bytes()).map_err(io_err)?;
        Ok(id)
    }
}

fn parse(text: &str) -> Result<(PeerName, u64), String> {
    let mut name = None;
    let mut inc = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_once(' ') {
            Some(("name", v)) => name = Some(v.trim().parse::<PeerName>().map_err(|e| e.to_string())?),
            Some(("incarnation", v)) => inc = Some(v.trim().parse::<u64>().map_err(|e| format!("incarnation: {e}"))?),
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    Ok((name.ok_or("no name line")?, inc.ok_or("no incarnation line")?))
}

fn random_name() -> io::Result<PeerName> {
    let mut b = [0u8; 6];
    fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b))?;
    b[0] = (b[0] | 0x02) & !0x01; // locally administered, unicast
    Ok(PeerName(b))
}

/// Writes `bytes` to `path` so a crash leaves either the old or the new contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// As [`write_atomic`], with the file's permission bits set to `mode` (e.g. 0o600 for a private
/// key) before any byte is written.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(m))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-identity-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_name_survives_restarts_and_the_incarnation_grows() {
        let d = dir("restart");
        let a = Identity::load_or_create(&d, "host-a").unwrap();
        let b = Identity::load_or_create(&d, "host-a").unwrap();
        assert_eq!(a.name, b.name);
        assert_eq!((a.incarnation, b.incarnation), (1, 2));
        assert_eq!(a.name.0[0] & 0x03, 0x02, "locally administered unicast");
        // A temporary file left by a crash mid-write changes nothing.
        fs::write(d.join("identity.tmp"), "name zz").unwrap();
        assert_eq!(Identity::load_or_create(&d, "x").unwrap().name, a.name);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let d = dir("corrupt");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(FILE), "name not-a-name\nincarnation 3\n").unwrap();
        let e = Identity::load_or_create(&d, "x").unwrap_err();
        assert!(e.to_string().contains(&d.join(FILE).display().to_string()), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_naming_the_broadcast_or_zero_peer_is_refused() {
        let d = dir("badname");
        fs::create_dir_all(&d).unwrap();
        for name in ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"] {
            fs::write(d.join(FILE), format!("name {name}\nincarnation 3\n")).unwrap();
            let e = Identity::load_or_create(&d, "x").unwrap_err();
            assert!(matches!(e, IdentityError::InvalidName { .. }), "{e}");
            assert!(e.to_string().contains(&d.join(FILE).display().to_string()), "{e}");
            let cause = std::error::Error::source(&e).unwrap().to_string();
            assert!(cause.contains(name), "{cause}");
            // Refused, not replaced: the file is as it was.
            assert!(fs::read_to_string(d.join(FILE)).unwrap().contains(name));
        }
        fs::remove_dir_all(&d).unwrap();
    }
}
