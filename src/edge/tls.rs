//! TLS settings for the edge: rustls with TLS 1.2 and 1.3 only, ALPN `h2` then
//! `http/1.1`, certificates chosen by SNI and swapped on SIGHUP, optional client
//! certificates (mTLS).
//!
//! The [`CertStore`] is the rustls certificate resolver, so a reload takes effect at
//! the next handshake while established connections keep their session.

use crate::config::{CertPair, ClientAuth, TlsConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in force, by the DNS names in their SANs.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    /// Lowercase names; `*.example.com` entries match one label.
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertSet {
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let wildcard_of = |pattern: &str| {
            pattern
                .strip_prefix("*.")
                .is_some_and(|suffix| name.split_once('.').is_some_and(|(_, rest)| rest == suffix))
        };
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .or_else(|| self.by_name.iter().find(|(n, _)| wildcard_of(n)))
            .map_or_else(|| self.default.clone(), |(_, key)| key.clone())
    }
}

/// Certificate resolver that can re-read its files.
#[derive(Debug)]
pub struct CertStore {
    pairs: Vec<CertPair>,
    current: RwLock<Arc<CertSet>>,
}

/// Reads one certificate chain and key, checks they belong together, lists the DNS SANs.
fn load_pair(pair: &CertPair) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let cert_path = pair.cert.display();
    let key_path = pair.key.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{cert_path}: cannot read certificates ({e})"))?;
    if chain.is_empty() {
        return Err(format!("{cert_path}: no PEM certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| format!("{key_path}: cannot read a PEM private key ({e})"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_path}: unusable private key ({e})"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("{key_path} does not match {cert_path} ({e})"))?;
    let names = dns_names(&certified.cert[0]).map_err(|e| format!("{cert_path}: {e}"))?;
    Ok((Arc::new(certified), names))
}

fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName ({e})"))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn load_set(pairs: &[CertPair]) -> Result<CertSet, String> {
    let mut loaded = pairs
        .iter()
        .map(load_pair)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let (default, default_names) = loaded.next().ok_or("no certificate configured")?;
    let mut by_name: Vec<(String, Arc<CertifiedKey>)> = default_names
        .into_iter()
        .map(|n| (n, default.clone()))
        .collect();
    for (key, names) in loaded {
        by_name.extend(names.into_iter().map(|n| (n, key.clone())));
    }
    Ok(CertSet { default, by_name })
}

impl CertStore {
    pub fn load(pairs: &[CertPair]) -> Result<CertStore, String> {
        Ok(CertStore {
            pairs: pairs.to_vec(),
            current: RwLock::new(Arc::new(load_set(pairs)?)),
        })
    }

    /// Re-reads every file; on any error the certificates in force stay.
    pub fn reload(&self) -> Result<(), String> {
        let set = load_set(&self.pairs)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(set.pick(hello.server_name()))
    }
}

/// Builds the rustls server configuration for every TLS listener.
pub fn server_config(tls: &TlsConfig, certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match (&tls.client_auth, &tls.client_ca) {
        (ClientAuth::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: cannot read client CA ({e})", ca.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if *mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| format!("mTLS setup: {e}"))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(label: &str) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![label.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = provider().key_provider.load_private_key(der).unwrap();
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let (default, exact, wild) = (key_for("d"), key_for("e"), key_for("w"));
        let set = CertSet {
            default: default.clone(),
            by_name: vec![
                ("registry.lan".into(), exact.clone()),
                ("*.example.com".into(), wild.clone()),
            ],
        };
        assert!(Arc::ptr_eq(&set.pick(Some("Registry.LAN")), &exact));
        assert!(Arc::ptr_eq(&set.pick(Some("a.example.com")), &wild));
        assert!(Arc::ptr_eq(&set.pick(Some("a.b.example.com")), &default));
        assert!(Arc::ptr_eq(&set.pick(Some("other")), &default));
        assert!(Arc::ptr_eq(&set.pick(None), &default));
    }

    #[test]
    fn reads_sans_from_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["Reg.Lan".to_string(), "10.0.0.1".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
        assert_eq!(dns_names(cert.der()).unwrap(), ["reg.lan"]);
    }
}
