//! TLS for mesh connections: the peer's persistent key pair, a self-signed certificate made
//! from it at each start, and rustls/quinn configurations.
//!
//! Certificates are not checked against any authority (peers have no PKI); the TLS handshake
//! still proves that each server holds the key of the certificate it shows, and membership is
//! proved by the PAKE ([`super::auth`]) bound to the session. Only TLS 1.3 is offered.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "identity.key";
/// ALPN protocol of mesh connections.
pub const ALPN: &[u8] = b"weft-mesh/1";
/// The server name dialers put in the handshake.
pub const SERVER_NAME: &str = "weft";

/// Why credentials or configurations could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The key file could not be read or written.
    #[error("key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file holds no usable key.
    #[error("key file {path} is corrupt ({detail}); move it away to make a new key")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Certificate generation or TLS configuration failed.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The peer's key pair and its certificate.
pub struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// Loads the key pair from `dir` (creating it, mode 0600, on first start) and makes a
    /// certificate for it.
    pub fn load_or_create(dir: &Path) -> Result<Credentials, TlsError> {
        let path = dir.join(KEY_FILE);
        let io_err = |source| TlsError::Io { path: path.clone(), source };
        fs::create_dir_all(dir).map_err(io_err)?;
        let key = match fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| TlsError::Corrupt { path: path.clone(), detail: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
                crate::identity::write_atomic_mode(&path, key.serialize_pem().as_bytes(), Some(0o600)).map_err(io_err)?;
                key
            }
            Err(e) => return Err(io_err(e)),
        };
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(|e| TlsError::Setup(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| TlsError::Setup(e.to_string()))?;
        Ok(Credentials { cert: cert.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()) })
    }
}

/// The round-trip time assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_millis(30);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Keep-alive and idle timeout (a peer that vanishes is noticed within `idle`); one
/// bidirectional stream, no QUIC datagrams, and a connection-level receive window of
/// `receive_window` bytes, which the caller widens once the peer is authenticated. The initial
/// round-trip estimate is 30 ms (QUIC's default is 333 ms): an unanswered first packet is
/// sent again after about 0.1, 0.35 and 0.8 s rather than 1 s, so a peer that comes back while
/// a 1 s dial is in flight is reached by that dial (with 100 ms the resends fell at 0.3 and
/// 1 s, and a peer back at 0.4 s waited for the next dial: a relay restart took 1.5 s).
pub fn transport(keep_alive: Duration, idle: Duration, receive_window: u32) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.initial_rtt(INITIAL_RTT);
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle).map_err(|e| TlsError::Setup(e.to_string()))?));
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    t.receive_window(receive_window.into());
    t.datagram_receive_buffer_size(None);
    Ok(Arc::new(t))
}

/// The configuration that accepts mesh connections.
pub fn server_config(creds: &Credentials, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![creds.cert.clone()], PrivateKeyDer::Pkcs8(creds.key.clone_key()))
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// The configuration that dials mesh connections.
pub fn client_config(transport: Arc<quinn::TransportConfig>) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Accepts any certificate but still checks the handshake signature made with its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_private_persistent_and_a_corrupt_one_is_named() {
        let dir = std::env::temp_dir().join(format!("weft-tls-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = Credentials::load_or_create(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let pem = fs::read_to_string(&path).unwrap();
        let b = Credentials::load_or_create(&dir).unwrap();
        assert_eq!(a.key.secret_pkcs8_der(), b.key.secret_pkcs8_der(), "the same key pair across restarts");
        assert_eq!(fs::read_to_string(&path).unwrap(), pem);
        assert!(!format!("{a:?}").contains("PRIVATE"));
        fs::write(&path, "not a key").unwrap();
        let e = Credentials::load_or_create(&dir).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
