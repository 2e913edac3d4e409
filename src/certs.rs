//! `portcullis certs`: a local CA and a server certificate with DNS and IP SANs, so a
//! LAN registry has working TLS in one step, and instructions for each client.
//!
//! An existing CA in the output directory is reused, so a new server certificate stays
//! trusted by clients that already have the CA.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub struct CertRequest {
    pub out: PathBuf,
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Also issue a client certificate with this common name (for mTLS).
    pub client: Option<String>,
}

/// Roughly the current year, for validity bounds (a year's slack either way is fine).
fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("{}: cannot write ({e})", path.display()))
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Loads `ca.crt`/`ca.key` from `out`, or creates them. Returns the issuer and whether it is new.
fn ca(out: &Path) -> Result<(Issuer<'static, KeyPair>, bool), String> {
    let (cert_path, key_path) = (out.join("ca.crt"), out.join("ca.key"));
    if cert_path.exists() && key_path.exists() {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(rcgen_err("ca.key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&read(&cert_path)?, key).map_err(rcgen_err("ca.crt"))?;
        return Ok((issuer, false));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // A unique name, so a client trusting another Portcullis CA reports an unknown
    // issuer rather than a bad signature.
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Portcullis local CA {id}"));
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let key = KeyPair::generate().map_err(rcgen_err("CA key"))?;
    let cert = params.self_signed(&key).map_err(rcgen_err("CA"))?;
    write_file(&cert_path, &cert.pem(), false)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    Ok((Issuer::new(params, key), true))
}

/// Issues a leaf certificate for `sans` and writes `<stem>.crt`/`<stem>.key`.
fn leaf(
    out: &Path,
    stem: &str,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(), String> {
    let mut params = CertificateParams::new(sans).map_err(rcgen_err(stem))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    // Two years: long enough for a LAN, short enough that clients with lifetime caps accept it.
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let key = KeyPair::generate().map_err(rcgen_err(stem))?;
    let cert = params.signed_by(&key, issuer).map_err(rcgen_err(stem))?;
    write_file(&out.join(format!("{stem}.crt")), &cert.pem(), false)?;
    write_file(&out.join(format!("{stem}.key")), &key.serialize_pem(), true)
}

/// Writes the CA (if new), the server certificate and optionally a client certificate;
/// returns the instructions to print.
pub fn generate(req: &CertRequest) -> Result<String, String> {
    if req.names.is_empty() && req.ips.is_empty() {
        return Err("name the server with --name HOST and/or --ip ADDRESS (both repeatable), e.g. --name registry.lan --ip 192.168.1.10".into());
    }
    std::fs::create_dir_all(&req.out)
        .map_err(|e| format!("{}: cannot create ({e})", req.out.display()))?;
    let (issuer, new_ca) = ca(&req.out)?;
    let mut sans = req.names.clone();
    sans.extend(req.ips.iter().map(IpAddr::to_string));
    let common_name = sans[0].clone();
    leaf(
        &req.out,
        "server",
        &common_name,
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        &issuer,
    )?;
    if let Some(client) = &req.client {
        leaf(
            &req.out,
            "client",
            client,
            vec![client.clone()],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
    }
    Ok(instructions(req, new_ca, &common_name))
}

fn instructions(req: &CertRequest, new_ca: bool, host: &str) -> String {
    let dir = req.out.display();
    let ca_state = if new_ca { "created" } else { "reused" };
    let client = match &req.client {
        Some(name) => {
            format!("  {dir}/client.crt, client.key  client certificate for {name:?} (mTLS)\n")
        }
        None => String::new(),
    };
    format!(
        "Wrote:
  {dir}/ca.crt, ca.key          local CA ({ca_state}); keep ca.key private
  {dir}/server.crt, server.key  server certificate for {sans}
{client}
Serve with (portcullis.toml):
  [server]
  tls_listen = \"0.0.0.0:443\"
  [tls]
  cert = \"{dir}/server.crt\"
  key = \"{dir}/server.key\"

Trust the CA on each client (HOST:PORT as clients write it, e.g. {host}:5443; for port 443 use just {host}):
  Docker:      sudo mkdir -p /etc/docker/certs.d/HOST:PORT && sudo cp {dir}/ca.crt /etc/docker/certs.d/HOST:PORT/ca.crt
  containerd:  sudo mkdir -p /etc/containerd/certs.d/HOST:PORT && sudo cp {dir}/ca.crt /etc/containerd/certs.d/HOST:PORT/ca.crt
               and in /etc/containerd/certs.d/HOST:PORT/hosts.toml:
                 server = \"https://HOST:PORT\"
                 [host.\"https://HOST:PORT\"]
                   ca = \"/etc/containerd/certs.d/HOST:PORT/ca.crt\"
  podman, skopeo, buildah: sudo mkdir -p /etc/containers/certs.d/HOST:PORT && sudo cp {dir}/ca.crt /etc/containers/certs.d/HOST:PORT/ca.crt
               (or pass --cert-dir DIR holding ca.crt)
  whole system (curl and others): sudo cp {dir}/ca.crt /usr/local/share/ca-certificates/portcullis-ca.crt && sudo update-ca-certificates
",
        sans = req.names.iter().cloned().chain(req.ips.iter().map(IpAddr::to_string)).collect::<Vec<_>>().join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let req = CertRequest {
            out: dir.path().to_path_buf(),
            names: vec!["registry.lan".into()],
            ips: vec!["192.168.1.10".parse().unwrap(), "::1".parse().unwrap()],
            client: Some("ci-bot".into()),
        };
        let text = generate(&req).unwrap();
        assert!(
            text.contains("local CA (created)") && text.contains("/etc/docker/certs.d/"),
            "{text}"
        );
        let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let text = generate(&req).unwrap();
        assert!(text.contains("local CA (reused)"), "{text}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);

        // The server certificate carries the DNS and IP SANs and loads as a TLS pair.
        let pem = std::fs::read(dir.path().join("server.crt")).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = block.parse_x509().unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("registry.lan") && sans.contains("[192, 168, 1, 10]"),
            "{sans}"
        );
        let pair = crate::config::CertPair {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
        };
        assert!(crate::edge::tls::CertStore::load(&[pair]).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("server.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn needs_a_name() {
        let req = CertRequest {
            out: PathBuf::from("/nonexistent"),
            names: vec![],
            ips: vec![],
            client: None,
        };
        assert!(generate(&req).unwrap_err().contains("--name"));
    }
}
