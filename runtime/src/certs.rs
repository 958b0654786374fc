//! Certificates for [`ProdNetwork`](crate::tls::ProdNetwork): a local
//! certificate authority kept in the user's data directory (created on first
//! use, so every `peerlink` process of one user on one machine trusts the
//! others with no setup), server certificates it issues at start-up, and
//! the rustls configurations built from them or from files an operator
//! gives.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The start of the local authority's name, in every certificate it
/// issues; the rest comes from its key, so that a certificate from another
/// user's (or machine's) authority is reported as unknown, not as a bad
/// signature from a namesake.
const CA_NAME: &str = "PeerLink local CA";

/// A certificate authority whose key this process holds.
pub struct LocalCa {
    params: CertificateParams,
    key: KeyPair,
    /// The certificate clients trust, as written to `ca.pem`.
    pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalCa")
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Twelve hex digits from the authority's public key, for its name.
fn fingerprint(key: &KeyPair) -> String {
    let raw = key.public_key_raw();
    raw[raw.len().saturating_sub(6)..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The authority's certificate parameters, named after its `key`.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {}", fingerprint(key)));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl LocalCa {
    /// The authority kept in `dir` (`ca.pem`, and `ca.key` readable only by
    /// its owner), created there if `dir` does not exist. The folder
    /// appears whole or not at all, so processes starting together agree.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        if !dir.exists() {
            Self::create(dir)?;
        }
        let key_pem = fs::read_to_string(dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(invalid)?;
        let pem = fs::read_to_string(dir.join("ca.pem"))?;
        let params = ca_params(&key);
        // Certificates are issued in the name of the authority rebuilt from
        // its key: they chain to `ca.pem` only if it is that authority.
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(invalid)?;
        let name = format!("{CA_NAME} {}", fingerprint(&key));
        if !contains(&der, key.public_key_raw()) || !contains(&der, name.as_bytes()) {
            return Err(invalid(format!(
                "{} is not the certificate of {}: delete {} to make a new authority",
                dir.join("ca.pem").display(),
                dir.join("ca.key").display(),
                dir.display()
            )));
        }
        Ok(Self { params, key, pem })
    }

    fn create(dir: &Path) -> io::Result<()> {
        let parent = dir
            .parent()
            .ok_or_else(|| invalid("the CA needs a parent folder"))?;
        fs::create_dir_all(parent)?;
        let aside: PathBuf = parent.join(format!(".tls.{}", std::process::id()));
        let _ = fs::remove_dir_all(&aside);
        fs::create_dir(&aside)?;
        let key = KeyPair::generate().map_err(invalid)?;
        let cert = ca_params(&key).self_signed(&key).map_err(invalid)?;
        write_private(&aside.join("ca.key"), &key.serialize_pem())?;
        fs::write(aside.join("ca.pem"), cert.pem())?;
        match fs::rename(&aside, dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "created the local certificate authority");
                Ok(())
            }
            // Another process made it first: use theirs.
            Err(_) if dir.exists() => fs::remove_dir_all(&aside),
            Err(e) => Err(e),
        }
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A fresh server certificate for `hosts` (DNS names or IP addresses),
    /// with its key.
    pub fn issue(
        &self,
        hosts: &[String],
    ) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let (cert, key) = self.sign(hosts)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], der))
    }

    /// A fresh server certificate for `hosts` and its key, both PEM, for
    /// another machine: `(certificate, key)`.
    pub fn issue_pem(&self, hosts: &[String]) -> io::Result<(String, String)> {
        let (cert, key) = self.sign(hosts)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn sign(&self, hosts: &[String]) -> io::Result<(rcgen::Certificate, KeyPair)> {
        if hosts.is_empty() {
            return Err(invalid("a certificate needs at least one host"));
        }
        let issuer = self.params.clone().self_signed(&self.key).map_err(invalid)?;
        let key = KeyPair::generate().map_err(invalid)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(invalid)?;
        params
            .distinguished_name
            .push(DnType::CommonName, hosts[0].as_str());
        let cert = params.signed_by(&key, &issuer, &self.key).map_err(invalid)?;
        Ok((cert, key))
    }
}

/// Writes `text` to a new file at `path` readable only by its owner (it
/// fails if the file exists).
pub fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The crypto every configuration uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts exactly the certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(invalid)?).map_err(invalid)?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in the CA file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server configuration presenting `chain` with `key`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(invalid)?;
    Ok(Arc::new(config))
}

/// A certificate chain and key from PEM files an operator gives.
pub fn load_pem_pair(
    cert: &Path,
    key: &Path,
) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(invalid)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    if chain.is_empty() {
        return Err(invalid(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(invalid)?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_whose_certificate_is_not_its_keys_is_refused() {
        let base = std::env::temp_dir().join(format!("peerlink-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let mine = LocalCa::load_or_create(&base.join("a")).unwrap();
        let theirs = LocalCa::load_or_create(&base.join("b")).unwrap();
        assert_ne!(mine.pem(), theirs.pem());
        fs::write(base.join("a/ca.pem"), theirs.pem()).unwrap();
        let refused = LocalCa::load_or_create(&base.join("a")).unwrap_err();
        assert!(
            refused.to_string().contains("is not the certificate of"),
            "{refused}"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
