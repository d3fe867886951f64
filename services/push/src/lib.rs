//! pbx-push-service: push notifications for mobile softphones (RFC 8599), in two halves.
//!
//! - [`client`]: what pbx's push dispatch calls to wake a phone before it forwards an INVITE:
//!   FCM HTTP v1 (OAuth 2.0 service-account flow) and APNs (token authentication, HTTP/2),
//!   sans-IO request builders and answer classifiers ([`client::fcm`], [`client::apns`]) plus
//!   a thin async sender ([`client::sender`]). [`rfc8599`] reads the `pn-*` parameters a phone
//!   registers with, including Linphone's two-token form.
//! - [`gateway`]: `pbx push-gateway`, a local stand-in for FCM and APNs with the same
//!   endpoints, validation and error formats, recording what it received, so the whole push
//!   flow runs on one machine in tests; `make-credentials` makes a matching service account
//!   and `.p8` without Google or Apple.
//!
//! [`jwt`] and [`keys`] are shared: the client signs, the stand-in verifies (ring for both).
//!
//! Why hyper and h2 rather than actix-web (the licence service's server): actix-web speaks
//! HTTP/2 over TLS only with its `http2` feature, and a feature is on for every crate of a
//! build, so it would switch HTTP/2 on for the licence service and the node's admin API too;
//! and actix always adds `http/1.1` to ALPN, where APNs must offer `h2` alone. The client
//! needs hyper's HTTP/2 anyway (ureq is HTTP/1.1 only), so one HTTP/2 implementation (h2 0.4)
//! serves both halves.
//!
//! This crate depends on no other pbx crate, so pbx-actors (where push dispatch lives) can
//! depend on its client half without a circle.
//!
//! Not here: the dispatch itself (which bindings to wake, when, how often, the push records
//! and their 7-day retention), Web Push, fuzz targets for the stand-in's parsers.

pub mod client;
pub mod gateway;
pub mod jwt;
pub mod keys;
pub use pbx_actors::push::rfc8599;
