//! The config file (node/src/config.rs): any text as `pbx.toml`, through the TOML parser, the
//! typed sections and every check of `Config::from_text`. A bad file must give a ConfigError
//! naming the key, never a panic (an `expect` on a default, an overflow in a range check).
//!
//! node/src/config.rs is compiled into this target as a module rather than through pbx-node:
//! the node crate pulls 344 crates (actix-web, the simulator) where this needs pbx-actors,
//! toml and serde. The file uses nothing of its crate but pbx-actors, so it compiles alone.
#![no_main]

#[path = "../../node/src/config.rs"]
#[allow(dead_code)]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let flags = config::Flags::default();
    if let Err(e) = config::Config::from_text(&flags, Some(("pbx.toml", text))) {
        let _ = e.to_string();
    }
});
