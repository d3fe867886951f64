//! The registrar machine (actors/src/registrar/machine.rs) fed a script of REGISTERs and
//! INVITEs whose headers, Contacts and Authorization values are the fuzzer's; the harness
//! fills in nonces and correct digests where the script asks (common.rs), so authentication
//! can succeed and bindings change. Beyond "no panic": every request gets exactly one answer,
//! Persist comes before the answer it guards, and no AOR holds more than
//! `BINDINGS_PER_AOR_MAX` bindings.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pbx_actors::registrar::{BINDINGS_PER_AOR_MAX, RegistrarInput, RegistrarOutput};
use pbx_actors::sip::Transport;
use pbx_actors::sip::message::{self, Message, Method};
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else { return };
    let mut registrar = common::registrar();
    let mut client = common::Client::default();
    let mut now = common::START;
    for (tx, chunk) in (1u64..).zip(common::chunks(script)) {
        if let Some(advance) = chunk.advance {
            now = now + advance;
            registrar.handle(now, RegistrarInput::Timeout);
            while registrar.poll_output().is_some() {}
        }
        let text = client.fill(chunk.text);
        let Ok(Message::Request(request)) = message::parse_datagram(text.as_bytes()) else { continue };
        let transport = if chunk.tcp { Transport::Tcp } else { Transport::Udp };
        let source = chunk.source;
        let input = if request.method == Method::REGISTER {
            RegistrarInput::Register { tx, request, source, transport }
        } else if request.method == Method::INVITE {
            RegistrarInput::Route { tx, request, source }
        } else {
            continue;
        };
        registrar.handle(now, input);
        let mut answers = 0;
        while let Some(output) = registrar.poll_output() {
            match output {
                RegistrarOutput::Persist(_) => assert_eq!(answers, 0, "Persist after the answer it guards"),
                RegistrarOutput::Respond { tx: answered, response, .. } => {
                    assert_eq!(answered, tx);
                    answers += 1;
                    if common::trace() {
                        eprintln!("request {tx}: {} {}", response.code, response.reason);
                    }
                    client.saw(&response);
                }
                RegistrarOutput::Routed { tx: answered, route } => {
                    if common::trace() {
                        eprintln!("request {tx}: routed to {:?}", route.contacts);
                    }
                    assert_eq!(answered, tx);
                    answers += 1;
                }
                RegistrarOutput::Event(e) if common::trace() => eprintln!("  event {e:?}"),
                RegistrarOutput::Event(_) => {}
            }
        }
        assert_eq!(answers, 1, "request {tx} got {answers} answers");
        let mut per_aor: HashMap<&str, usize> = HashMap::new();
        for binding in registrar.bindings() {
            *per_aor.entry(binding.aor.as_str()).or_default() += 1;
        }
        assert!(per_aor.values().all(|n| *n <= BINDINGS_PER_AOR_MAX), "{per_aor:?}");
        let _ = registrar.poll_timeout();
    }
});
