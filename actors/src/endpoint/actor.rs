//! The endpoint's ractor shell: feeds the machine the clock and the transports' input,
//! performs its outputs (bytes onto the wire, REGISTERs to the registrar, metrics, logs), and
//! keeps one timer armed for the machine's next wake-up. Never sleeps in `handle`.

use super::machine::{Endpoint, EndpointEvent, EndpointInput, EndpointOutput};
use crate::registrar::{RegistrarMsg, ResponseSink};
use crate::shell::WakeTimer;
use crate::sip::message::{Response, Transport};
use crate::sip::transaction::TimerConfig;
use crate::time::Clock;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The port through which bytes leave: the node's UDP socket and TCP connections.
pub trait Wire: Send + Sync + 'static {
    /// Queue `bytes` for `destination`; never blocks. A full queue or a closed connection drops
    /// the message (SIP over UDP tolerates loss; the transaction layer retransmits).
    fn send(&self, destination: SocketAddr, transport: Transport, bytes: Bytes);
}

pub enum EndpointMsg {
    Inbound {
        bytes: Bytes,
        source: SocketAddr,
        transport: Transport,
    },
    RegistrarResponse {
        tx: u64,
        response: Response,
    },
    /// Live transactions, for the API and metrics.
    Transactions(ractor::RpcReplyPort<usize>),
    Wake,
}

pub struct EndpointArgs {
    pub clock: Arc<dyn Clock>,
    pub wire: Arc<dyn Wire>,
    pub registrar: ActorRef<RegistrarMsg>,
    pub timers: TimerConfig,
    /// Inbound messages counted by the transports and not yet handled; the shell decrements it
    /// as it takes each one, so the transports can bound what piles up in the mailbox.
    pub inbound_backlog: Arc<AtomicUsize>,
}

pub struct EndpointState {
    machine: Endpoint,
    clock: Arc<dyn Clock>,
    wire: Arc<dyn Wire>,
    registrar: ActorRef<RegistrarMsg>,
    inbound_backlog: Arc<AtomicUsize>,
    timer: WakeTimer,
}

pub struct EndpointActor;

/// Lets the registrar answer the endpoint without knowing its type; set once both exist.
#[derive(Default, Clone)]
pub struct EndpointSink(Arc<OnceLock<ActorRef<EndpointMsg>>>);

impl EndpointSink {
    pub fn connect(&self, endpoint: ActorRef<EndpointMsg>) {
        let _ = self.0.set(endpoint);
    }
}

impl ResponseSink for EndpointSink {
    fn deliver(&self, tx: u64, response: Response) {
        if let Some(endpoint) = self.0.get() {
            let _ = endpoint.cast(EndpointMsg::RegistrarResponse { tx, response });
        }
    }
}

impl Actor for EndpointActor {
    type Msg = EndpointMsg;
    type State = EndpointState;
    type Arguments = EndpointArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<EndpointMsg>,
        args: EndpointArgs,
    ) -> Result<EndpointState, ActorProcessingErr> {
        Ok(EndpointState {
            machine: Endpoint::new(args.timers),
            clock: args.clock,
            wire: args.wire,
            registrar: args.registrar,
            inbound_backlog: args.inbound_backlog,
            timer: WakeTimer::default(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<EndpointMsg>,
        msg: EndpointMsg,
        s: &mut EndpointState,
    ) -> Result<(), ActorProcessingErr> {
        let now = s.clock.now();
        match msg {
            EndpointMsg::Inbound { bytes, source, transport } => {
                s.inbound_backlog.fetch_sub(1, Ordering::Relaxed);
                s.machine.handle(now, EndpointInput::Inbound { bytes, source, transport })
            }
            EndpointMsg::RegistrarResponse { tx, response } => {
                s.machine.handle(now, EndpointInput::RegistrarResponse { tx, response })
            }
            EndpointMsg::Transactions(reply) => {
                let _ = reply.send(s.machine.transactions());
            }
            EndpointMsg::Wake => {
                s.timer.fired();
                s.machine.handle(now, EndpointInput::Timeout);
            }
        }
        while let Some(out) = s.machine.poll_output() {
            match out {
                EndpointOutput::Transmit { destination, transport, bytes } => {
                    s.wire.send(destination, transport, bytes)
                }
                EndpointOutput::Register { tx, request, source, transport } => {
                    if s.registrar.cast(RegistrarMsg::Register { tx, request: *request, source, transport }).is_err() {
                        tracing::error!("registrar is gone; the REGISTER will be answered 500 on timeout");
                    }
                }
                EndpointOutput::Event(event) => record(event),
            }
        }
        s.timer.arm(&me, now, s.machine.poll_timeout(), || EndpointMsg::Wake);
        Ok(())
    }

    async fn post_stop(&self, _me: ActorRef<EndpointMsg>, s: &mut EndpointState) -> Result<(), ActorProcessingErr> {
        s.timer.cancel();
        Ok(())
    }
}

fn record(event: EndpointEvent) {
    match event {
        EndpointEvent::Request { method } => {
            metrics::counter!("pbx_sip_requests_total", "method" => method).increment(1);
        }
        EndpointEvent::Response { code } => {
            metrics::counter!("pbx_sip_responses_total", "code" => code.to_string()).increment(1);
        }
        EndpointEvent::Malformed { source, reason, answered } => {
            metrics::counter!("pbx_sip_malformed_total").increment(1);
            tracing::info!(%source, %reason, answered, "malformed SIP message");
        }
        EndpointEvent::TimedOut { what } => {
            tracing::debug!(what, "timed out");
        }
    }
}
