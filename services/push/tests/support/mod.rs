//! What the gateway and end-to-end tests share: a gateway on 127.0.0.1 with made credentials,
//! an HTTP/2 TLS client that trusts its certificate, and request helpers. Every wait is
//! bounded ([`bounded`]).

#![allow(dead_code)]

use pbx_push_service::client::apns::ApnsKey;
use pbx_push_service::client::fcm::ServiceAccount;
use pbx_push_service::client::sender::{HttpsClient, Protocols, Trust};
use pbx_push_service::gateway::{self, Credentials, CredentialsRequest, Gateway, GatewayConfig};
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A device token as Apple makes them: 64 hex digits.
pub const DEVICE_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
/// An FCM registration token's shape: letters, digits, `:`, `-`, `_`.
pub const FCM_TOKEN: &str = "dGVzdC10b2tlbg:APA91bH-stand_in-registration-token";
/// The bundle the credentials are made for.
pub const BUNDLE: &str = "org.example.app";
/// Longest a test waits for anything.
pub const TEST_TIMEOUT_S: u64 = 60;
/// The client's timeout per exchange.
pub const CLIENT_TIMEOUT_S: u64 = 10;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub gateway: Gateway,
    pub credentials: Credentials,
    pub http: Arc<HttpsClient>,
}

/// Runs `test` and fails it if it takes longer than [`TEST_TIMEOUT_S`].
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(TEST_TIMEOUT_S), test).await.expect("the test finished in time")
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// A gateway with `config`'s settings on 127.0.0.1, and credentials registered with it.
pub async fn harness_with(adjust: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = GatewayConfig::for_tests(dir.path().join("data"));
    adjust(&mut config);
    let gateway = gateway::start(config).await.expect("gateway starts");
    let mut request = CredentialsRequest::new(dir.path().join("out"), gateway.token_uri());
    request.bundle_id = BUNDLE.into();
    request.key_id = Some("KEY0000001".into());
    let credentials = gateway::make_credentials(&dir.path().join("data"), &request).expect("credentials");
    let trust = Trust::from_pem_file(gateway.cert_path()).expect("the gateway's certificate");
    let http = Arc::new(HttpsClient::new(&trust, Duration::from_secs(CLIENT_TIMEOUT_S)).expect("client"));
    Harness { dir, gateway, credentials, http }
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

impl Harness {
    pub fn account(&self) -> ServiceAccount {
        ServiceAccount::read(&self.credentials.service_account_path).expect("service account")
    }

    pub fn apns_key(&self) -> ApnsKey {
        ApnsKey::read(&self.credentials.apns_key_path, &self.credentials.team_id, &self.credentials.key_id)
            .expect("key")
    }

    /// Sends over HTTP/2 (APNs) or whatever the FCM listener agrees (h2).
    pub async fn send(&self, request: http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
        self.http.send(request, Protocols::Http2Only).await.expect("an answer")
    }

    /// A fresh access token from the gateway's OAuth endpoint.
    pub async fn access_token(&self) -> String {
        let response = self.send(self.account().token_request(now_s()).expect("token request")).await;
        assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
        json(&response)["access_token"].as_str().expect("access_token").to_string()
    }

    /// `POST /3/device/<token>` with a valid provider token unless `headers` sets
    /// `authorization`; every header given is added (`None` values skip the default).
    pub fn apns_request(&self, token: &str, headers: &[(&str, Option<&str>)], body: &[u8]) -> http::Request<Vec<u8>> {
        let auth = format!("bearer {}", self.apns_key().provider_token(now_s()).expect("provider token"));
        let topic = format!("{BUNDLE}.voip");
        let defaults = [
            ("authorization", auth.as_str()),
            ("apns-topic", topic.as_str()),
            ("apns-push-type", "voip"),
            ("apns-priority", "10"),
        ];
        let mut request = http::Request::post(format!("{}/3/device/{token}", self.gateway.apns_url()));
        for (name, value) in defaults {
            if !headers.iter().any(|(n, _)| *n == name) {
                request = request.header(name, value);
            }
        }
        for (name, value) in headers {
            if let Some(value) = value {
                request = request.header(*name, *value);
            }
        }
        request.body(body.to_vec()).expect("a request")
    }

    /// `POST /v1/projects/<project>/messages:send` with `authorization` and `body`.
    pub fn fcm_request(&self, project: &str, authorization: Option<&str>, body: &[u8]) -> http::Request<Vec<u8>> {
        let mut request =
            http::Request::post(format!("{}/v1/projects/{project}/messages:send", self.gateway.fcm_url()))
                .header("content-type", "application/json");
        if let Some(auth) = authorization {
            request = request.header("authorization", auth);
        }
        request.body(body.to_vec()).expect("a request")
    }

    /// `POST /token` with a form body.
    pub fn token_form(&self, form: &str) -> http::Request<Vec<u8>> {
        http::Request::post(self.gateway.token_uri())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.as_bytes().to_vec())
            .expect("a request")
    }
}

pub fn json(response: &http::Response<Vec<u8>>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or(Value::Null)
}

/// APNs' `reason`.
pub fn reason(response: &http::Response<Vec<u8>>) -> String {
    json(response)["reason"].as_str().unwrap_or_default().to_string()
}
