//! The errors of the licence ports: why a call to the licence service gave no usable answer
//! ([`LicenceServiceError`]), and why an admin's voucher was not redeemed ([`RedeemError`]). Typed,
//! so the API answers by kind (409 already redeemed, 404 unknown voucher, 429 rate limited, 502 the
//! service failed) instead of matching words in a message.

/// Why a call to the licence service brought no 200 with a body. Texts are short (the node
/// bounds what it copies from the service and names the URL); none carries a voucher code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LicenceServiceError {
    /// No answer: the connection failed, the name did not resolve, the request or the body read
    /// broke off or took too long.
    #[error("{0}")]
    Transport(String),
    /// The TLS handshake failed (an untrusted or wrong certificate, plain HTTP on a TLS port).
    #[error("{0}")]
    Tls(String),
    /// The call did not end within the shell's bound (`SERVICE_CALL_TIMEOUT_S`), or its task failed.
    #[error("{0}")]
    NoAnswer(String),
    /// The service does not know this PBX's serial (404 on a licence or unlocks request, or a
    /// redeem for an unknown serial).
    #[error("unknown serial")]
    UnknownSerial,
    /// 409 on a redeem: the voucher was redeemed before.
    #[error("already redeemed")]
    AlreadyRedeemed,
    /// 404 on a redeem: no such voucher.
    #[error("unknown voucher")]
    UnknownVoucher,
    /// 429: the service refuses more tries for now.
    #[error("rate limited by the licence service: {0}")]
    RateLimited(String),
    /// Any other status; `reason` is the service's `{"error": ...}`, bounded, maybe empty.
    #[error("licence service: HTTP {code} {reason}")]
    Status { code: u16, reason: String },
    /// A 200 whose body is not what was asked for (not JSON, unreadable).
    #[error("{0}")]
    BadDocument(String),
}

/// Why an admin's voucher was not redeemed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// The code itself is not a voucher code (empty, too long, other characters); not sent.
    #[error("voucher code: {0}")]
    InvalidCode(String),
    /// Too many redeems in flight; try again shortly. Not sent.
    #[error("busy: too many vouchers being redeemed, try again shortly")]
    Busy,
    /// The service refused it or could not be asked.
    #[error("{0}")]
    Service(#[from] LicenceServiceError),
    /// The service said 200 but the answer is unreadable: the voucher may well be redeemed, so the
    /// unlocks are fetched at once and the admin is told to look there.
    #[error("the licence service's answer was unreadable ({0}); the voucher may be redeemed: check the unlocks")]
    Unreadable(String),
}
