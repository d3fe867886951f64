//! The endpoint machine (actors/src/endpoint/machine.rs) fed a script of datagrams and stream
//! frames from a few sources, with the real registrar machine answering what it hands out and
//! a stand-in for the call legs (it answers in-dialog requests 200 and can ring, answer, send
//! an INVITE to the callee or go down when the script says). This reaches the transaction
//! layer, dispatch by To tag and branch, CANCEL and the registrar round trip, not only the
//! parser. Beyond "no panic": no datagram pbx sends is larger than a SIP message may be.
//!
//! Script: chunks split at lines `%%` (common.rs: prefix lines `+N`, `@N`, `tcp`; `$NONCE`,
//! `$RESPONSE` … filled in). A chunk `!ring`, `!answer`, `!invite`, `!bye` or `!down` is an act
//! of the newest call's legs instead of a message. `$TAG` is the caller leg's tag, `$BTAG`,
//! `$BRANCH` and `$BCALLID` those of the callee leg's INVITE.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pbx_actors::Timestamp;
use pbx_actors::call::{CallStart, LegId, SipIn, SipOut};
use pbx_actors::endpoint::{Endpoint, EndpointInput, EndpointOutput};
use pbx_actors::registrar::{Registrar, RegistrarInput, RegistrarOutput};
use pbx_actors::sip::message::{self, Message};
use pbx_actors::sip::transaction::TimerConfig;
use pbx_actors::sip::{Request, Transport};
use std::collections::VecDeque;
use std::net::SocketAddr;

struct World {
    endpoint: Endpoint,
    registrar: Registrar,
    client: common::Client,
    call: Option<CallStart>,
    now: Timestamp,
}

fn callee_request(call: &CallStart, fork: LegId, method: &str, n: u64) -> Option<(Request, SocketAddr)> {
    let contact = call.route.contacts.first()?;
    let text = format!(
        "{method} sip:{}@{} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={}\r\nMax-Forwards: 70\r\n\
         From: <sip:{}@pbx>;tag={}\r\nTo: <sip:{}@pbx>\r\nCall-ID: b-{}\r\nCSeq: {n} {method}\r\nContent-Length: 0\r\n\r\n",
        call.route.callee,
        contact.source,
        fork.branch(n),
        call.route.caller,
        fork.tag(),
        call.route.callee,
        fork.tag(),
    );
    match message::parse_datagram(text.as_bytes()) {
        Ok(Message::Request(request)) => Some((request, contact.source)),
        other => panic!("harness request does not parse: {other:?}"),
    }
}

impl World {
    /// Feeds one input, then everything it causes, until nothing is left to do.
    fn run(&mut self, input: EndpointInput) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            self.endpoint.handle(self.now, input);
            while let Some(output) = self.endpoint.poll_output() {
                if common::trace() {
                    match &output {
                        EndpointOutput::Transmit { destination, bytes, .. } => {
                            let text = String::from_utf8_lossy(bytes);
                            eprintln!("  to {destination}: {}", text.lines().next().unwrap_or(""));
                        }
                        other => eprintln!("  {}", format!("{other:?}").chars().take(160).collect::<String>()),
                    }
                }
                match output {
                    EndpointOutput::Transmit { bytes, .. } => {
                        assert!(bytes.len() <= message::MESSAGE_BYTES_MAX, "a {}-byte datagram", bytes.len());
                    }
                    EndpointOutput::Register { tx, request, source, transport } => {
                        let input = RegistrarInput::Register { tx, request: *request, source, transport };
                        self.registrar.handle(self.now, input);
                    }
                    EndpointOutput::Route { tx, request, source } => {
                        self.registrar.handle(self.now, RegistrarInput::Route { tx, request: *request, source });
                    }
                    EndpointOutput::StartCall(call) => self.call = Some(*call),
                    EndpointOutput::ToLeg { leg, input: SipIn::Request { key, request } } => {
                        let out = SipOut::Response { key, response: request.response(200, Some(&leg.tag())) };
                        inputs.push_back(EndpointInput::FromLeg { leg, out });
                    }
                    EndpointOutput::ToLeg { .. } | EndpointOutput::Event(_) => {}
                }
                while let Some(output) = self.registrar.poll_output() {
                    match output {
                        RegistrarOutput::Respond { tx, response, authenticated } => {
                            self.client.saw(&response);
                            inputs.push_back(EndpointInput::RegistrarResponse { tx, response, authenticated });
                        }
                        RegistrarOutput::Routed { tx, route } => inputs.push_back(EndpointInput::Routed { tx, route }),
                        RegistrarOutput::Persist(_) | RegistrarOutput::Event(_) => {}
                    }
                }
            }
        }
    }

    /// What the newest call's legs do when the script says so.
    fn act(&mut self, what: &str) {
        let Some(call) = &self.call else { return };
        let a = call.a;
        let fork = call.forks.first().copied();
        let input = match (what, fork) {
            ("!ring" | "!answer", _) => {
                let code = if what == "!ring" { 180 } else { 200 };
                let response = call.invite.response(code, Some(&a.tag()));
                EndpointInput::FromLeg { leg: a, out: SipOut::Response { key: call.key.clone(), response } }
            }
            ("!invite" | "!bye", Some(fork)) => {
                let (method, n) = if what == "!invite" { ("INVITE", 1) } else { ("BYE", 2) };
                let Some((request, destination)) = callee_request(call, fork, method, n) else { return };
                let out = SipOut::Request { request, destination, transport: Transport::Udp };
                EndpointInput::FromLeg { leg: fork, out }
            }
            ("!down", _) => {
                for leg in call.forks.clone() {
                    self.run(EndpointInput::LegDown { leg });
                }
                EndpointInput::LegDown { leg: a }
            }
            _ => return,
        };
        self.run(input);
    }

    fn fill(&mut self, text: &str) -> String {
        let mut text = self.client.fill(text);
        if let Some(call) = &self.call {
            text = text.replace("$TAG", &call.a.tag());
            if let Some(fork) = call.forks.first() {
                text = text.replace("$BTAG", &fork.tag()).replace("$BRANCH", &fork.branch(1));
                text = text.replace("$BCALLID", &fork.call_id());
            }
        }
        text
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(script) = std::str::from_utf8(data) else { return };
    let mut world = World {
        endpoint: Endpoint::new(TimerConfig::default(), [0x69; 32]),
        registrar: common::registrar(),
        client: common::Client::default(),
        call: None,
        now: common::START,
    };
    for chunk in common::chunks(script) {
        if let Some(advance) = chunk.advance {
            world.now = world.now + advance;
            world.registrar.handle(world.now, RegistrarInput::Timeout);
            while world.registrar.poll_output().is_some() {}
            world.run(EndpointInput::Timeout);
        }
        if common::trace() {
            eprintln!("chunk {:?}", chunk.text.lines().next().unwrap_or(""));
        }
        if chunk.text.starts_with('!') {
            world.act(chunk.text.trim());
            continue;
        }
        let bytes = Bytes::from(world.fill(chunk.text));
        let transport = if chunk.tcp { Transport::Tcp } else { Transport::Udp };
        let received = world.now;
        world.run(EndpointInput::Inbound { bytes, source: chunk.source, transport, received });
    }
    // Let every transaction run out: retransmissions and timeouts must not panic either.
    for _ in 0..64 {
        let Some(at) = world.endpoint.poll_timeout() else { break };
        world.now = world.now.max(at);
        world.run(EndpointInput::Timeout);
    }
});
