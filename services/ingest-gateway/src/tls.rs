//! TLS for the gateway: the server certificate, the CA that signs sites' client certificates
//! (every client must present one), optional revocation lists, and the client's identity.
//!
//! The identity of a client is its certificate's subject common name (the site), or, for a
//! certificate without one, `sha256:<fingerprint>` of the certificate.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use seqmon_processor::ConfigError;
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};

use crate::config::GatewayConfig;

fn bad(setting: &str, message: String) -> ConfigError {
    ConfigError::of::<GatewayConfig>(setting, message)
}

fn certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            bad(
                setting,
                format!("{}: not PEM certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(bad(
            setting,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The server's TLS configuration, from the files the settings name. Any problem is a
/// configuration error naming the setting (never the key's contents).
pub fn server_config(cfg: &GatewayConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let chain = certs("tls_cert", &cfg.tls_cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.tls_key).map_err(|e| {
        bad(
            "tls_key",
            format!("{}: no PEM private key: {e}", cfg.tls_key.display()),
        )
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client_ca", &cfg.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| bad("client_ca", format!("{}: {e}", cfg.client_ca.display())))?;
    }
    let mut crls = Vec::new();
    for path in &cfg.client_crl {
        let found: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| bad("client_crl", format!("cannot read {}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad("client_crl", format!("{}: {e}", path.display())))?;
        if found.is_empty() {
            return Err(bad(
                "client_crl",
                format!(
                    "{} holds no PEM CRL (-----BEGIN X509 CRL-----); convert a DER one with `openssl crl -inform DER -outform PEM`",
                    path.display()
                ),
            ));
        }
        crls.extend(found);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .build()
        .map_err(|e| match e {
            VerifierBuilderError::InvalidCrl(_) => bad(
                "client_crl",
                format!(
                    "{e} (a version 2 CRL is required: `openssl ca -gencrl` with crlnumber set)"
                ),
            ),
            _ => bad("client_ca", e.to_string()),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("tls_key", format!("does not match --tls-cert: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client's identity from its (verified) end-entity certificate: the subject common name,
/// or `#sha256:<fingerprint>` for a certificate without a usable one (1..=64 printable
/// characters, not starting with `#`), so no common name can pose as a fingerprint identity.
pub fn client_identity(cert: &CertificateDer<'_>) -> String {
    let cn = x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        })
        .filter(|cn| {
            (1..=64).contains(&cn.len())
                && !cn.starts_with('#')
                && !cn.chars().any(char::is_control)
        });
    cn.unwrap_or_else(|| {
        format!(
            "#sha256:{}",
            crate::ledger::hex(&crate::ledger::body_digest(cert.as_ref()))
        )
    })
}
