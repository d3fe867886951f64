//! Licences and vouchers: what this PBX may do, as the licence service signs it.
//!
//! - [`document`]: the signed documents (licence, voucher unlocks) and their verification.
//! - [`desk`]: the licence service's logic (`pbx licence-server`), a sans-IO machine.

pub mod desk;
pub mod document;

pub use document::{Envelope, Feature, Kind, Licence, Limits, PublicKey, Refused, SigningKey, Unlocks};
