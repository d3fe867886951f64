//! The client half against the stand-in, end to end on 127.0.0.1: what pbx's push dispatch
//! will see from FCM and APNs for a wake-up, an unregistered token, stale credentials, and a
//! server it must not trust or that never answers.

mod support;

use pbx_push_service::client::Outcome;
use pbx_push_service::client::apns::ApnsPush;
use pbx_push_service::client::fcm::FcmPush;
use pbx_push_service::client::sender::{ApnsSender, FcmSender, HttpsClient, Protocols, SendError, Trust};
use pbx_push_service::gateway::Service;
use pbx_push_service::rfc8599::{self, PushTarget};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn wake_up(token: &str) -> FcmPush {
    FcmPush { token: token.into(), data: [("call-id".into(), "c1".into())].into(), ttl: Duration::from_secs(30) }
}

fn fcm_sender(h: &Harness) -> FcmSender {
    FcmSender::new(h.account(), &h.gateway.fcm_url(), h.http.clone())
}

fn apns_sender(h: &Harness) -> ApnsSender {
    ApnsSender::new(h.apns_key(), &h.gateway.apns_url(), h.http.clone())
}

fn target(h: &Harness, prid: &str) -> rfc8599::ApnsTarget {
    match rfc8599::parse("apns", &h.credentials.apns_pn_param, prid).unwrap() {
        PushTarget::Apns(t) => t,
        other => panic!("{other:?}"),
    }
}

fn token_exchanges(h: &Harness) -> usize {
    h.gateway.received().iter().filter(|r| r.service == Service::FcmToken).count()
}

// Proves the FCM flow: one token exchange, then sends reuse the cached token; the gateway saw
// a data-only, high-priority message with the ttl.
#[tokio::test]
async fn fcm_exchange_then_send() {
    bounded(async {
        let h = harness().await;
        let sender = fcm_sender(&h);
        for n in 1..=2 {
            let outcome = sender.send(&wake_up(FCM_TOKEN), now_s()).await.unwrap();
            assert_eq!(
                outcome,
                Outcome::Delivered { id: format!("projects/{}/messages/{n}", h.credentials.project_id) }
            );
        }
        assert_eq!(token_exchanges(&h), 1, "the access token is cached");
        let sent = h.gateway.received().into_iter().rfind(|r| r.service == Service::Fcm).unwrap();
        let body: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
        assert_eq!(body["message"]["android"], serde_json::json!({"priority": "high", "ttl": "30s"}));
        assert_eq!(body["message"]["data"]["call-id"], "c1");
        assert!(body["message"].get("notification").is_none(), "data-only");
    })
    .await;
}

// Proves a token refused by FCM (401) is exchanged again once, transparently.
#[tokio::test]
async fn fcm_reauthenticates_once() {
    bounded(async {
        let h = harness().await;
        let sender = fcm_sender(&h);
        assert!(matches!(sender.send(&wake_up(FCM_TOKEN), now_s()).await.unwrap(), Outcome::Delivered { .. }));
        h.gateway.revoke_access_tokens();
        assert!(matches!(sender.send(&wake_up(FCM_TOKEN), now_s()).await.unwrap(), Outcome::Delivered { .. }));
        assert_eq!(token_exchanges(&h), 2);
    })
    .await;
}

// Proves an unregistered FCM token comes back as Unregistered (drop it).
#[tokio::test]
async fn fcm_unregistered_token_is_dropped() {
    bounded(async {
        let h = harness().await;
        h.gateway.unregister(FCM_TOKEN, now_s() * 1_000);
        let outcome = fcm_sender(&h).send(&wake_up(FCM_TOKEN), now_s()).await.unwrap();
        assert!(matches!(&outcome, Outcome::Unregistered { reason } if reason.contains("UNREGISTERED")), "{outcome:?}");
    })
    .await;
}

// Proves an assertion from a clock two hours behind is refused: Fatal, with Google's words.
#[tokio::test]
async fn fcm_expired_assertion_is_fatal() {
    bounded(async {
        let h = harness().await;
        let outcome = fcm_sender(&h).send(&wake_up(FCM_TOKEN), now_s() - 7_200).await.unwrap();
        assert!(matches!(&outcome, Outcome::Fatal { reason } if reason.contains("invalid_grant")), "{outcome:?}");
    })
    .await;
}

// Proves the APNs flow from a Linphone registration: the VoIP token, `<bundle>.voip`, push
// type voip, priority 10, over HTTP/2, one provider token reused.
#[tokio::test]
async fn apns_voip_wake_up() {
    bounded(async {
        let h = harness().await;
        let remote = DEVICE_TOKEN.replace('a', "c");
        let target = target(&h, &format!("{DEVICE_TOKEN}:voip&{remote}:remote"));
        let data: BTreeMap<String, String> = [("call-id".into(), "c1".into())].into();
        let push = ApnsPush::voip_wake_up(&target, &data, Duration::from_secs(30), now_s()).unwrap();
        let sender = apns_sender(&h);
        for _ in 0..2 {
            let outcome = sender.send(&push, now_s()).await.unwrap();
            assert!(matches!(&outcome, Outcome::Delivered { id } if id.len() == 36), "{outcome:?}");
        }
        let records = h.gateway.received();
        assert_eq!(records.len(), 2);
        let r = &records[0];
        assert_eq!((r.token.as_deref(), r.version.as_str()), (Some(DEVICE_TOKEN), "HTTP/2.0"));
        assert_eq!(r.headers["apns-topic"], format!("{BUNDLE}.voip"));
        assert_eq!((r.headers["apns-push-type"].as_str(), r.headers["apns-priority"].as_str()), ("voip", "10"));
        assert_eq!(r.headers["apns-expiration"], push.expiration_unix_s.to_string());
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
            serde_json::json!({"aps": {}, "call-id": "c1"})
        );
    })
    .await;
}

// Proves an unregistered APNs token (410) comes back as Unregistered (drop it).
#[tokio::test]
async fn apns_unregistered_token_is_dropped() {
    bounded(async {
        let h = harness().await;
        h.gateway.unregister(DEVICE_TOKEN, now_s() * 1_000);
        let push =
            ApnsPush::voip_wake_up(&target(&h, DEVICE_TOKEN), &BTreeMap::new(), Duration::ZERO, now_s()).unwrap();
        let outcome = apns_sender(&h).send(&push, now_s()).await.unwrap();
        assert!(matches!(&outcome, Outcome::Unregistered { reason } if reason == "410 Unregistered"), "{outcome:?}");
        let bad = ApnsPush { device_token: "abcd".into(), ..push };
        let outcome = apns_sender(&h).send(&bad, now_s()).await.unwrap();
        assert!(matches!(&outcome, Outcome::Unregistered { reason } if reason == "400 BadDeviceToken"), "{outcome:?}");
    })
    .await;
}

// Proves a provider token from a clock two hours behind is refused, retried once with a new
// token (still old), then Fatal.
#[tokio::test]
async fn apns_expired_provider_token_is_fatal() {
    bounded(async {
        let h = harness().await;
        let push =
            ApnsPush::voip_wake_up(&target(&h, DEVICE_TOKEN), &BTreeMap::new(), Duration::ZERO, now_s()).unwrap();
        let outcome = apns_sender(&h).send(&push, now_s() - 7_200).await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Fatal { reason } if reason.contains("ExpiredProviderToken")),
            "{outcome:?}"
        );
        assert_eq!(h.gateway.received().len(), 2, "one retry with a new token");
    })
    .await;
}

// Proves the client trusts only what it is told: the public CA set refuses the stand-in's
// self-signed certificate.
#[tokio::test]
async fn public_roots_do_not_trust_the_stand_in() {
    bounded(async {
        let h = harness().await;
        let public = Arc::new(HttpsClient::new(&Trust::WebPkiRoots, Duration::from_secs(CLIENT_TIMEOUT_S)).unwrap());
        let sender = ApnsSender::new(h.apns_key(), &h.gateway.apns_url(), public);
        let push =
            ApnsPush::voip_wake_up(&target(&h, DEVICE_TOKEN), &BTreeMap::new(), Duration::ZERO, now_s()).unwrap();
        let error = sender.send(&push, now_s()).await.unwrap_err();
        assert!(matches!(&error, SendError::Connect(_, reason) if reason.contains("certificate")), "{error}");
        assert!(h.gateway.received().is_empty());
    })
    .await;
}

// Proves a server that accepts and never answers costs the client its timeout, no more.
#[tokio::test]
async fn a_silent_server_times_out() {
    bounded(async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let client = HttpsClient::new(&Trust::WebPkiRoots, Duration::from_secs(1)).unwrap();
        let started = std::time::Instant::now();
        let request = http::Request::post(format!("https://{addr}/3/device/{DEVICE_TOKEN}")).body(Vec::new()).unwrap();
        let error = client.send(request, Protocols::Http2Only).await.unwrap_err();
        assert!(matches!(error, SendError::Timeout(..)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    })
    .await;
}
