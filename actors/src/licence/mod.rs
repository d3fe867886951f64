//! Licences and vouchers: what this PBX may do, as the licence service signs it.
//!
//! - [`document`]: the signed documents (licence, voucher unlocks) and their verification.
//! - [`watchdog`]: the daily licence check, the grace period, and what is licensed now.
//! - [`vouchers`]: the daily fetch of voucher unlocks, and redeeming a voucher code.
//! - [`actor`]: the ractor shells of both, their ports, and the [`LicenceView`] pbx reads.
//! - [`desk`]: the licence service's logic (`pbx licence-server`), a sans-IO machine.

pub mod actor;
pub mod desk;
pub mod document;
pub mod error;
pub mod vouchers;
pub mod watchdog;

/// The licence client's intervals, for the privacy notice to state.
pub const SCHEDULE: crate::privacy::notice::LicenceSchedule = crate::privacy::notice::LicenceSchedule {
    check_interval_s: watchdog::CHECK_INTERVAL_S,
    check_retry_s: watchdog::RETRY_INTERVAL_S,
    fetch_interval_s: vouchers::FETCH_INTERVAL_S,
    fetch_retry_s: vouchers::FETCH_RETRY_S,
};

pub use actor::{
    LicenceService, LicenceSnapshot, LicenceStore, LicenceView, VoucherActor, VoucherArgs, VoucherMsg, WatchdogActor,
    WatchdogArgs, WatchdogMsg,
};
pub use document::{Envelope, Feature, Kind, Licence, Limits, PublicKey, Refused, SigningKey, Unlocks};
pub use error::{LicenceServiceError, RedeemError};
pub use vouchers::{StoredUnlocks, VoucherConfig, VoucherEvent, VoucherInput, VoucherOutput, VoucherSync};
pub use watchdog::{
    Effective, LicenceStatus, Stored, Watchdog, WatchdogConfig, WatchdogEvent, WatchdogInput, WatchdogOutput,
};
