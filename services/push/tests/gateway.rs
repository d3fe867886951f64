//! The stand-in against strangers and well-behaved clients, over its real listeners on
//! 127.0.0.1 with a real HTTP/2 TLS client: every refusal in the service's own format, never a
//! panic, and what it received recorded.

mod support;

use pbx_push_service::client::fcm::ServiceAccount;
use pbx_push_service::gateway::{ReceivedPush, Service};
use serde_json::{Value, json};
use std::sync::Arc;
use support::*;

/// A request and what the gateway must answer: (what, request, status, then two expectations).
type Case<A, B> = (&'static str, http::Request<Vec<u8>>, u16, A, B);

// Proves the OAuth endpoint grants a registered account's assertion Google's answer.
#[tokio::test]
async fn token_endpoint_grants() {
    bounded(async {
        let h = harness().await;
        let response = h.send(h.account().token_request(now_s()).unwrap()).await;
        assert_eq!(response.status(), 200);
        let body = json(&response);
        assert!(body["access_token"].as_str().is_some_and(|t| t.starts_with("ya29.")), "{body}");
        assert_eq!((body["expires_in"].as_u64(), body["token_type"].as_str()), (Some(3599), Some("Bearer")));
        let record = &h.gateway.received()[0];
        assert_eq!((record.service, record.status, record.body.as_str()), (Service::FcmToken, 200, ""));
        assert_eq!(record.sender.as_deref(), Some(h.credentials.client_email.as_str()));
    })
    .await;
}

// Proves each bad token request gets Google's OAuth error: grant type, assertion, format,
// account, signature, audience, times, content type, method, size.
#[tokio::test]
async fn token_endpoint_refusals() {
    bounded(async {
        let h = harness().await;
        let account = h.account();
        let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
        let assertion = account.assertion(now_s()).unwrap();
        let with = |assertion: String| h.token_form(&format!("{grant}&assertion={assertion}"));
        let (other_key, _) = pbx_push_service::keys::generate_rsa().unwrap();
        let account_with = |email: &str, key: &str, token_uri: &str| {
            let file = json!({"project_id": "p", "client_email": email, "private_key": key, "token_uri": token_uri});
            ServiceAccount::from_json(file.to_string().as_bytes()).unwrap()
        };
        let token_uri = h.gateway.token_uri();
        // The registered email signing with a key the gateway never saw.
        let impostor = account_with(&account.client_email, &other_key, &token_uri);
        let stranger = account_with("who@example.com", &other_key, &token_uri);
        let own_key = serde_json::from_slice::<Value>(&std::fs::read(&h.credentials.service_account_path).unwrap())
            .unwrap()["private_key"]
            .as_str()
            .unwrap()
            .to_string();
        let google_aud = account_with(&account.client_email, &own_key, "https://oauth2.googleapis.com/token");
        let json_body = http::Request::post(&token_uri).header("content-type", "application/json");
        let cases: Vec<Case<&str, &str>> = vec![
            (
                "grant type",
                h.token_form(&format!("grant_type=password&assertion={assertion}")),
                400,
                "unsupported_grant_type",
                "Invalid grant_type: password",
            ),
            (
                "no grant type",
                h.token_form(&format!("assertion={assertion}")),
                400,
                "invalid_request",
                "Missing required parameter: grant_type",
            ),
            ("no assertion", h.token_form(grant), 400, "invalid_request", "Missing required parameter: assertion"),
            ("not a JWT", with("abc".into()), 400, "invalid_grant", "Invalid JWT"),
            ("unknown account", with(stranger.assertion(now_s()).unwrap()), 400, "invalid_grant", "account not found"),
            ("wrong key", with(impostor.assertion(now_s()).unwrap()), 400, "invalid_grant", "Invalid JWT Signature."),
            ("audience", with(google_aud.assertion(now_s()).unwrap()), 400, "invalid_grant", "Failed audience check"),
            ("expired", with(account.assertion(now_s() - 7_200).unwrap()), 400, "invalid_grant", "short-lived token"),
            ("future", with(account.assertion(now_s() + 7_200).unwrap()), 400, "invalid_grant", "short-lived token"),
            ("content type", json_body.body(b"{}".to_vec()).unwrap(), 400, "invalid_request", "form-urlencoded"),
            ("method", http::Request::get(&token_uri).body(Vec::new()).unwrap(), 405, "invalid_request", "method"),
            ("size", h.token_form(&"a".repeat(70 * 1024)), 400, "invalid_request", "exceeds the limit"),
        ];
        for (what, request, status, error, description) in cases {
            let response = h.send(request).await;
            let body = json(&response);
            assert_eq!(response.status(), status, "{what}: {body}");
            assert_eq!(body["error"], error, "{what}: {body}");
            assert!(body["error_description"].as_str().is_some_and(|d| d.contains(description)), "{what}: {body}");
        }
    })
    .await;
}

// Proves a data-only message is accepted, named, and recorded with its body and sender.
#[tokio::test]
async fn fcm_send_accepted() {
    bounded(async {
        let h = harness().await;
        let token = h.access_token().await;
        let body = json!({"message": {
            "token": FCM_TOKEN, "data": {"call-id": "c1"}, "android": {"priority": "high", "ttl": "30s"}
        }});
        let bearer = format!("Bearer {token}");
        let request = h.fcm_request(&h.credentials.project_id, Some(&bearer), body.to_string().as_bytes());
        let response = h.send(request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(json(&response), json!({"name": format!("projects/{}/messages/1", h.credentials.project_id)}));
        let sent: Vec<ReceivedPush> = h.gateway.received().into_iter().filter(|r| r.service == Service::Fcm).collect();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].token.as_deref(), sent[0].version.as_str()), (Some(FCM_TOKEN), "HTTP/2.0"));
        assert_eq!(serde_json::from_str::<Value>(&sent[0].body).unwrap(), body);
        assert_eq!(sent[0].headers["project"], h.credentials.project_id);
    })
    .await;
}

// Proves each bad send gets FCM's error: status, google.rpc status, and FcmError code.
#[tokio::test]
async fn fcm_send_refusals() {
    bounded(async {
        let h = harness().await;
        let bearer = format!("Bearer {}", h.access_token().await);
        let project = h.credentials.project_id.clone();
        h.gateway.unregister("gone-token", 1_000);
        let message = |m: Value| json!({ "message": m }).to_string().into_bytes();
        let ok = |token: &str| message(json!({"token": token, "data": {"a": "b"}}));
        let cases: Vec<Case<&str, Option<&str>>> = vec![
            ("no auth", h.fcm_request(&project, None, &ok("t")), 401, "UNAUTHENTICATED", None),
            ("bad auth", h.fcm_request(&project, Some("Bearer ya29.nope"), &ok("t")), 401, "UNAUTHENTICATED", None),
            ("other project", h.fcm_request("someone-else", Some(&bearer), &ok("t")), 403, "PERMISSION_DENIED", None),
            (
                "not JSON",
                h.fcm_request(&project, Some(&bearer), b"{\"message\":"),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "no message",
                h.fcm_request(&project, Some(&bearer), b"{}"),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "two targets",
                h.fcm_request(&project, Some(&bearer), &message(json!({"token": "t", "topic": "x"}))),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "number data",
                h.fcm_request(&project, Some(&bearer), &message(json!({"token": "t", "data": {"a": 1}}))),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "bad ttl",
                h.fcm_request(&project, Some(&bearer), &message(json!({"token": "t", "android": {"ttl": "30"}}))),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "bad token",
                h.fcm_request(&project, Some(&bearer), &ok("not a token")),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "too large",
                h.fcm_request(&project, Some(&bearer), &vec![b' '; 70 * 1024]),
                400,
                "INVALID_ARGUMENT",
                Some("INVALID_ARGUMENT"),
            ),
            (
                "unregistered",
                h.fcm_request(&project, Some(&bearer), &ok("gone-token")),
                404,
                "NOT_FOUND",
                Some("UNREGISTERED"),
            ),
            (
                "no such path",
                http::Request::get(format!("{}/v1/nothing", h.gateway.fcm_url())).body(Vec::new()).unwrap(),
                404,
                "NOT_FOUND",
                None,
            ),
        ];
        for (what, request, status, grpc, error_code) in cases {
            let response = h.send(request).await;
            let body = json(&response);
            assert_eq!(response.status(), status, "{what}: {body}");
            assert_eq!(
                (body["error"]["code"].as_u64(), body["error"]["status"].as_str()),
                (Some(u64::from(status)), Some(grpc)),
                "{what}: {body}"
            );
            let codes: Vec<&str> = body["error"]["details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["@type"] == "type.googleapis.com/google.firebase.fcm.v1.FcmError")
                .filter_map(|d| d["errorCode"].as_str())
                .collect();
            assert_eq!(codes.first().copied(), error_code, "{what}: {body}");
        }
        let refused = h.gateway.received().iter().filter(|r| r.service == Service::Fcm && r.status != 200).count();
        assert_eq!(refused, 11, "every refused send is recorded (the unknown path is not a send)");
    })
    .await;
}

// Proves a VoIP push is accepted with an apns-id and recorded with its headers over HTTP/2;
// a given apns-id is echoed.
#[tokio::test]
async fn apns_push_accepted() {
    bounded(async {
        let h = harness().await;
        let id = "123E4567-E89B-12D3-A456-426614174000";
        let request =
            h.apns_request(DEVICE_TOKEN, &[("apns-id", Some(id)), ("apns-expiration", Some("0"))], br#"{"aps":{}}"#);
        let response = h.send(request).await;
        assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
        assert_eq!(response.headers()["apns-id"], id);
        assert!(response.body().is_empty());
        let record = h.gateway.received().pop().unwrap();
        assert_eq!(
            (record.service, record.token.as_deref(), record.version.as_str()),
            (Service::Apns, Some(DEVICE_TOKEN), "HTTP/2.0")
        );
        assert_eq!(record.headers["apns-topic"], format!("{BUNDLE}.voip"));
        assert_eq!(
            (record.headers["apns-push-type"].as_str(), record.headers["apns-priority"].as_str()),
            ("voip", "10")
        );
        assert_eq!(record.sender, Some(format!("{}/{}", h.credentials.team_id, h.credentials.key_id)));
        let fresh = h.send(h.apns_request(DEVICE_TOKEN, &[], b"{}")).await;
        assert!(fresh.headers()["apns-id"].to_str().unwrap().len() == 36, "a made apns-id");
    })
    .await;
}

// Proves each bad APNs request gets Apple's status and reason, with an apns-id.
#[tokio::test]
async fn apns_refusals() {
    bounded(async {
        let h = harness().await;
        let key = h.apns_key();
        let expired = format!("bearer {}", key.provider_token(now_s() - 7_200).unwrap());
        let (other_pem, _) = pbx_push_service::keys::generate_ec().unwrap();
        let unknown_kid =
            pbx_push_service::client::apns::ApnsKey::from_p8(&other_pem, &h.credentials.team_id, "NOSUCHKEY").unwrap();
        let unknown_kid = format!("bearer {}", unknown_kid.provider_token(now_s()).unwrap());
        let forged =
            pbx_push_service::client::apns::ApnsKey::from_p8(&other_pem, &h.credentials.team_id, &h.credentials.key_id)
                .unwrap();
        let forged = format!("bearer {}", forged.provider_token(now_s()).unwrap());
        h.gateway.unregister(&DEVICE_TOKEN.replace('a', "b"), 1_700_000_000_000);
        let body = br#"{"aps":{}}"#;
        let big = |n: usize| format!("{{\"x\":\"{}\"}}", "a".repeat(n - 8)).into_bytes();
        let cases: Vec<(&str, http::Request<Vec<u8>>, u16, &str)> = vec![
            ("no auth", h.apns_request(DEVICE_TOKEN, &[("authorization", None)], body), 403, "MissingProviderToken"),
            (
                "garbage auth",
                h.apns_request(DEVICE_TOKEN, &[("authorization", Some("bearer abc"))], body),
                403,
                "InvalidProviderToken",
            ),
            (
                "basic auth",
                h.apns_request(DEVICE_TOKEN, &[("authorization", Some("Basic abc"))], body),
                403,
                "InvalidProviderToken",
            ),
            (
                "unknown key",
                h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&unknown_kid))], body),
                403,
                "InvalidProviderToken",
            ),
            (
                "forged",
                h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&forged))], body),
                403,
                "InvalidProviderToken",
            ),
            (
                "expired",
                h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&expired))], body),
                403,
                "ExpiredProviderToken",
            ),
            ("short token", h.apns_request("abcd", &[], body), 400, "BadDeviceToken"),
            ("not hex", h.apns_request(&"z".repeat(64), &[], body), 400, "BadDeviceToken"),
            ("no topic", h.apns_request(DEVICE_TOKEN, &[("apns-topic", None)], body), 400, "MissingTopic"),
            (
                "other topic",
                h.apns_request(DEVICE_TOKEN, &[("apns-topic", Some("com.other.app.voip"))], body),
                400,
                "TopicDisallowed",
            ),
            ("voip to bundle", h.apns_request(DEVICE_TOKEN, &[("apns-topic", Some(BUNDLE))], body), 400, "BadTopic"),
            (
                "push type",
                h.apns_request(DEVICE_TOKEN, &[("apns-push-type", Some("fax"))], body),
                400,
                "InvalidPushType",
            ),
            ("priority", h.apns_request(DEVICE_TOKEN, &[("apns-priority", Some("7"))], body), 400, "BadPriority"),
            (
                "background at 10",
                h.apns_request(
                    DEVICE_TOKEN,
                    &[("apns-push-type", Some("background")), ("apns-topic", Some(BUNDLE))],
                    body,
                ),
                400,
                "BadPriority",
            ),
            (
                "expiration",
                h.apns_request(DEVICE_TOKEN, &[("apns-expiration", Some("soon"))], body),
                400,
                "BadExpirationDate",
            ),
            ("apns-id", h.apns_request(DEVICE_TOKEN, &[("apns-id", Some("not-a-uuid"))], body), 400, "BadMessageId"),
            (
                "collapse id",
                h.apns_request(DEVICE_TOKEN, &[("apns-collapse-id", Some(&"c".repeat(65)))], body),
                400,
                "BadCollapseId",
            ),
            ("empty", h.apns_request(DEVICE_TOKEN, &[], b""), 400, "PayloadEmpty"),
            ("not JSON", h.apns_request(DEVICE_TOKEN, &[], b"{\"aps\":"), 400, "PayloadEmpty"),
            (
                "alert 4097",
                h.apns_request(
                    DEVICE_TOKEN,
                    &[("apns-push-type", Some("alert")), ("apns-topic", Some(BUNDLE))],
                    &big(4_097),
                ),
                413,
                "PayloadTooLarge",
            ),
            ("voip 5121", h.apns_request(DEVICE_TOKEN, &[], &big(5_121)), 413, "PayloadTooLarge"),
            (
                "no path",
                http::Request::post(format!("{}/4/device/{DEVICE_TOKEN}", h.gateway.apns_url()))
                    .body(Vec::new())
                    .unwrap(),
                404,
                "BadPath",
            ),
            (
                "method",
                http::Request::get(format!("{}/3/device/{DEVICE_TOKEN}", h.gateway.apns_url()))
                    .body(Vec::new())
                    .unwrap(),
                405,
                "MethodNotAllowed",
            ),
            ("no token", h.apns_request("", &[], body), 400, "MissingDeviceToken"),
        ];
        for (what, request, status, expected) in cases {
            let response = h.send(request).await;
            assert_eq!((response.status().as_u16(), reason(&response).as_str()), (status, expected), "{what}");
            assert!(response.headers().contains_key("apns-id"), "{what}: every answer names an apns-id");
        }
        let voip_5000 = h.send(h.apns_request(DEVICE_TOKEN, &[], &big(5_000))).await;
        assert_eq!(voip_5000.status(), 200, "VoIP takes up to 5 KiB");
        let gone = h.send(h.apns_request(&DEVICE_TOKEN.replace('a', "b"), &[], body)).await;
        assert_eq!(
            (gone.status().as_u16(), json(&gone)),
            (410, json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}))
        );
    })
    .await;
}

// Proves a header sent twice is refused as Apple does.
#[tokio::test]
async fn apns_duplicate_headers() {
    bounded(async {
        let h = harness().await;
        let mut request = h.apns_request(DEVICE_TOKEN, &[], b"{}");
        request.headers_mut().append("apns-topic", format!("{BUNDLE}.voip").parse().unwrap());
        let response = h.send(request).await;
        assert_eq!((response.status().as_u16(), reason(&response).as_str()), (400, "DuplicateHeaders"));
    })
    .await;
}

// Proves Apple's provider-token update rule when switched on: a second token for a key
// within the interval is refused with 429, the first goes on working.
#[tokio::test]
async fn apns_token_updates_limited_when_enabled() {
    bounded(async {
        let h = harness_with(|c| c.apns_token_update_interval_s_min = 1_200).await;
        let key = h.apns_key();
        let first = format!("bearer {}", key.provider_token(now_s()).unwrap());
        let second = format!("bearer {}", key.provider_token(now_s() - 60).unwrap());
        let status = |r: &http::Response<Vec<u8>>| (r.status().as_u16(), reason(r));
        assert_eq!(
            status(&h.send(h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&first))], b"{}")).await).0,
            200
        );
        let refused = h.send(h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&second))], b"{}")).await;
        assert_eq!(status(&refused), (429, "TooManyProviderTokenUpdates".into()));
        assert_eq!(
            status(&h.send(h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&first))], b"{}")).await).0,
            200
        );
    })
    .await;
}

// Proves the APNs listener is HTTP/2 only: ALPN http/1.1 fails the handshake, and an HTTP/1.1
// request without ALPN gets no HTTP/1.1 answer. The FCM listener answers HTTP/1.1.
#[tokio::test]
async fn http1_only_on_the_fcm_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let h = harness().await;
        let cert = std::fs::read(h.gateway.cert_path()).unwrap();
        let connect = |addr: std::net::SocketAddr, alpn: Vec<Vec<u8>>| {
            let cert = cert.clone();
            async move {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&cert) {
                    roots.add(c.unwrap()).unwrap();
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = alpn;
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
            }
        };
        let http1_only = connect(h.gateway.apns_addr(), vec![b"http/1.1".to_vec()]).await;
        assert!(http1_only.is_err(), "no ALPN in common with APNs");
        let request = format!("POST /3/device/{DEVICE_TOKEN} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}");
        let mut apns = connect(h.gateway.apns_addr(), vec![]).await.unwrap();
        apns.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), apns.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/1.1"), "APNs answered HTTP/1.1: {}", String::from_utf8_lossy(&answer));
        let mut fcm = connect(h.gateway.fcm_addr(), vec![b"http/1.1".to_vec()]).await.unwrap();
        let request = "POST /token HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n\
                       content-length: 0\r\nconnection: close\r\n\r\n";
        fcm.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), fcm.read_to_end(&mut answer)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400") && text.contains("Missing required parameter: grant_type"), "{text}");
    })
    .await;
}

// Proves the test endpoints: filters, paging, clearing, and unregistering through HTTP.
#[tokio::test]
async fn gateway_endpoints() {
    bounded(async {
        let h = harness().await;
        for token in [DEVICE_TOKEN, &DEVICE_TOKEN.replace('1', "2")] {
            assert_eq!(h.send(h.apns_request(token, &[], b"{}")).await.status(), 200);
        }
        let get = |query: &str| {
            http::Request::get(format!("{}/_gateway/received{query}", h.gateway.apns_url())).body(Vec::new()).unwrap()
        };
        let all: Vec<ReceivedPush> = serde_json::from_slice(h.send(get("")).await.body()).unwrap();
        assert_eq!(all.len(), 2);
        let one: Vec<ReceivedPush> =
            serde_json::from_slice(h.send(get(&format!("?token={DEVICE_TOKEN}"))).await.body()).unwrap();
        assert_eq!(one.len(), 1);
        let after: Vec<ReceivedPush> =
            serde_json::from_slice(h.send(get(&format!("?after={}", all[0].id))).await.body()).unwrap();
        assert_eq!(after, all[1..]);
        let fcm_only: Vec<ReceivedPush> = serde_json::from_slice(h.send(get("?service=fcm")).await.body()).unwrap();
        assert!(fcm_only.is_empty());
        let unregister = http::Request::post(format!("{}/_gateway/unregister/{DEVICE_TOKEN}", h.gateway.fcm_url()))
            .body(Vec::new())
            .unwrap();
        assert_eq!(h.send(unregister).await.status(), 200);
        assert_eq!(h.send(h.apns_request(DEVICE_TOKEN, &[], b"{}")).await.status(), 410);
        let clear =
            http::Request::delete(format!("{}/_gateway/received", h.gateway.fcm_url())).body(Vec::new()).unwrap();
        assert_eq!(json(&h.send(clear).await), json!({"cleared": 3}));
        assert!(h.gateway.received().is_empty());
        let nothing =
            http::Request::get(format!("{}/_gateway/nothing", h.gateway.apns_url())).body(Vec::new()).unwrap();
        assert_eq!(reason(&h.send(nothing).await), "BadPath");
    })
    .await;
}

// Proves credentials made while the gateway runs are accepted without a restart
// (registrations.json is read again when it changes).
#[tokio::test]
async fn credentials_made_later_are_picked_up() {
    bounded(async {
        let h = harness().await;
        let mut request =
            pbx_push_service::gateway::CredentialsRequest::new(h.dir.path().join("later"), h.gateway.token_uri());
        request.project_id = "later-project".into();
        request.key_id = Some("LATERKEY01".into());
        request.bundle_id = BUNDLE.into();
        let later = pbx_push_service::gateway::make_credentials(&h.dir.path().join("data"), &request).unwrap();
        let account = ServiceAccount::read(&later.service_account_path).unwrap();
        assert_eq!(h.send(account.token_request(now_s()).unwrap()).await.status(), 200);
        let key =
            pbx_push_service::client::apns::ApnsKey::read(&later.apns_key_path, &later.team_id, &later.key_id).unwrap();
        let auth = format!("bearer {}", key.provider_token(now_s()).unwrap());
        assert_eq!(h.send(h.apns_request(DEVICE_TOKEN, &[("authorization", Some(&auth))], b"{}")).await.status(), 200);
    })
    .await;
}
