//! The node's side of the licence service: the HTTPS client the watchdog and voucher sync
//! call through (`LicenceService`), and this PBX's serial number.
//!
//! What leaves the PBX: the serial number (every check and unlocks fetch), and a voucher code
//! with it when an admin redeems one. Nothing about extensions, calls or people. The client
//! trusts the certificate in `licence.server_ca` (a PEM file — `pbx licence-server` writes
//! its self-signed one to `DATA_DIR/tls-cert.pem`), else the usual web roots; a request takes
//! at most [`REQUEST_TIMEOUT_S`]; a body is read up to [`BODY_BYTES_MAX`].

use crate::config::{LicenceService as ServiceConfig, valid_serial};
use bytes::Bytes;
use pbx_actors::licence::{LicenceService, LicenceServiceError};
use std::path::Path;
use std::time::Duration;

/// Longest one request to the service may take, connect to last byte (the shells bound the
/// whole call at 60 s).
pub const REQUEST_TIMEOUT_S: u64 = 20;
/// Largest answer read from the service; a licence is well under 4 KiB.
pub const BODY_BYTES_MAX: u64 = 64 * 1024;
/// The file in the data directory that keeps a serial number made at first start.
pub const SERIAL_FILE: &str = "serial";

/// The licence service over HTTPS (blocking; the shells call it off their actor's thread).
pub struct HttpLicenceService {
    agent: ureq::Agent,
    url: String,
}

impl HttpLicenceService {
    pub fn new(config: &ServiceConfig) -> Result<HttpLicenceService, String> {
        let roots = match &config.server_ca {
            Some(path) => ureq::tls::RootCerts::new_with_certs(&read_certificates(path)?),
            None => ureq::tls::RootCerts::WebPki,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(REQUEST_TIMEOUT_S)))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(HttpLicenceService { agent, url: config.url.clone() })
    }

    /// POSTs a JSON body; the answer's body when it is a 200 with JSON, else why not.
    fn post(&self, call: Call, body: serde_json::Value) -> Result<Bytes, LicenceServiceError> {
        let url = format!("{}{}", self.url, call.path());
        let mut response = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| unreachable(&url, e))?;
        let status = response.status().as_u16();
        let json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let body = response
            .body_mut()
            .with_config()
            .limit(BODY_BYTES_MAX)
            .read_to_vec()
            .map_err(|e| LicenceServiceError::Transport(format!("{url}: reading the answer: {e}")))?;
        match (status, json) {
            (200, true) => Ok(Bytes::from(body)),
            (200, false) => {
                Err(LicenceServiceError::BadDocument(format!("{url}: 200 but not JSON (wrong content type)")))
            }
            (code, _) => {
                // The service says what is wrong in {"error": "..."}; keep it short.
                let reason = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                Err(refusal(call, code, reason.chars().take(REASON_CHARS_MAX).collect()))
            }
        }
    }
}

/// Longest part of the service's `{"error": ...}` kept in an error.
const REASON_CHARS_MAX: usize = 200;

/// The three calls to the service; a status means different things on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Check,
    Unlocks,
    Redeem,
}

impl Call {
    fn path(self) -> &'static str {
        match self {
            Call::Check => "/v1/licence",
            Call::Unlocks => "/v1/unlocks",
            Call::Redeem => "/v1/vouchers/redeem",
        }
    }
}

/// Why a request got no answer at all: a TLS failure told apart from the rest.
fn unreachable(url: &str, error: ureq::Error) -> LicenceServiceError {
    let text = format!("{url}: {error}");
    match error {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) | ureq::Error::TlsRequired => {
            LicenceServiceError::Tls(text)
        }
        _ => LicenceServiceError::Transport(text),
    }
}

/// What a status other than 200 means for `call`: on a redeem, 409 is a voucher redeemed before
/// and 404 an unknown voucher (unless the service says the serial is unknown); 404 on a check or
/// unlocks fetch is an unknown serial; 429 a rate limit.
fn refusal(call: Call, code: u16, reason: String) -> LicenceServiceError {
    match (call, code) {
        (Call::Redeem, 409) => LicenceServiceError::AlreadyRedeemed,
        (Call::Redeem, 404) if !reason.contains("serial") => LicenceServiceError::UnknownVoucher,
        (_, 404) => LicenceServiceError::UnknownSerial,
        (_, 429) => LicenceServiceError::RateLimited(reason),
        (_, code) => LicenceServiceError::Status { code, reason },
    }
}

impl LicenceService for HttpLicenceService {
    fn check(&self, serial: &str) -> Result<Bytes, LicenceServiceError> {
        self.post(Call::Check, serde_json::json!({ "serial": serial }))
    }

    fn unlocks(&self, serial: &str) -> Result<Bytes, LicenceServiceError> {
        self.post(Call::Unlocks, serde_json::json!({ "serial": serial }))
    }

    fn redeem(&self, serial: &str, code: &str) -> Result<Bytes, LicenceServiceError> {
        self.post(Call::Redeem, serde_json::json!({ "serial": serial, "code": code }))
    }
}

fn read_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("licence.server_ca {}: {e}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.to_owned()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("licence.server_ca {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// This PBX's serial number: the configured one, else the one kept in the data directory,
/// else a new one (`PBX-` and 12 random hex digits), kept there from now on.
pub fn serial(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(serial) = configured {
        return Ok(serial.to_owned());
    }
    let path = data_dir.join(SERIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_serial(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => anyhow::bail!("{}: not a serial number (1–64 of A-Z a-z 0-9 . _ -)", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
    let serial = format!("PBX-{:012X}", rand::random::<u64>() & 0xffff_ffff_ffff);
    std::fs::write(&path, format!("{serial}\n")).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = serial(None, dir.path()).unwrap();
        assert!(first.starts_with("PBX-") && valid_serial(&first), "{first}");
        assert_eq!(serial(None, dir.path()).unwrap(), first);
        assert_eq!(serial(Some("MY-PBX"), dir.path()).unwrap(), "MY-PBX");
        std::fs::write(dir.path().join(SERIAL_FILE), "not one\n").unwrap();
        assert!(serial(None, dir.path()).unwrap_err().to_string().contains("not a serial number"));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let config = |p: &Path| ServiceConfig {
            url: "https://127.0.0.1:1".into(),
            public_key: pbx_actors::licence::PublicKey([0; 32]),
            server_ca: Some(p.to_path_buf()),
        };
        assert!(HttpLicenceService::new(&config(&path)).err().unwrap().contains("licence.server_ca"));
        std::fs::write(&path, "nothing").unwrap();
        assert!(HttpLicenceService::new(&config(&path)).err().unwrap().contains("no PEM certificate"));
    }

    /// A refused connection is an error text, not a panic (the watchdog retries on schedule).
    #[test]
    fn an_unreachable_service_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = ServiceConfig {
            url: format!("http://127.0.0.1:{port}"),
            public_key: pbx_actors::licence::PublicKey([0; 32]),
            server_ca: None,
        };
        let service = HttpLicenceService::new(&config).unwrap();
        let error = service.check("PBX-1").unwrap_err();
        assert!(
            matches!(&error, LicenceServiceError::Transport(t) if t.contains(&format!("127.0.0.1:{port}"))),
            "{error}"
        );
    }

    /// The service's statuses become the errors the admin API answers by: 409 and 404 on a
    /// redeem are the voucher's, 404 elsewhere (or naming the serial) the serial's, 429 a limit.
    #[test]
    fn statuses_map_to_their_kinds() {
        use LicenceServiceError as E;
        let no_reason = String::new;
        assert_eq!(refusal(Call::Redeem, 409, "voucher already redeemed".into()), E::AlreadyRedeemed);
        assert_eq!(refusal(Call::Redeem, 404, "unknown voucher".into()), E::UnknownVoucher);
        assert_eq!(refusal(Call::Redeem, 404, no_reason()), E::UnknownVoucher);
        assert_eq!(refusal(Call::Redeem, 404, "unknown serial".into()), E::UnknownSerial);
        assert_eq!(refusal(Call::Check, 404, no_reason()), E::UnknownSerial);
        assert_eq!(refusal(Call::Unlocks, 404, "unknown serial".into()), E::UnknownSerial);
        assert_eq!(refusal(Call::Check, 409, "odd".into()), E::Status { code: 409, reason: "odd".into() });
        assert_eq!(
            refusal(Call::Redeem, 429, "too many failed redeems".into()),
            E::RateLimited("too many failed redeems".into())
        );
        assert_eq!(refusal(Call::Check, 500, no_reason()), E::Status { code: 500, reason: String::new() });
    }
}
