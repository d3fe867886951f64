//! The registrar's routing toward storage, shared by both drivers: the ractor shell
//! ([`super::actor`], whose writer thread stores the jobs) and the simulator's node (whose
//! simulated disk does). Sans-IO: it takes the machine's outputs and how many jobs with
//! commands are still being stored, and says what leaves at once and what waits for a write.
//!
//! The rule (the writer bypass of the shell's module doc, now in one place):
//! - the machine's outputs of one handled message form one [`WriteJob`], in their order;
//! - a response to a request that proved nobody (a challenge, a 403 to a blocked source, a
//!   400) depends on no stored state and leaves at once, even while writes wait (a node whose
//!   store cannot commit still challenges);
//! - a job with no commands leaves whole at once when no job with commands is in flight;
//!   otherwise it queues behind them, so nothing that follows a write overtakes it;
//! - a job with commands is stored first, and its responses, routes and reply leave after:
//!   a 200 never leaves before the binding it reports is stored ([`settle`]); when the store
//!   refused the commands, a REGISTER's response becomes 503 with Retry-After (no quorum) or
//!   500 (any other fault), and the admin request's reply the store's error.
//!
//! The events (failed authentications, blocks, registrations) are handed to the driver's
//! callback as they come: the shell logs and counts them, the simulator writes its security log
//! through its disk and counts them for its report.

use super::machine::{Registrar, RegistrarCommand, RegistrarEvent, RegistrarOutput, Route};
use crate::bugs::Bugs;
use crate::sip::Response;
use crate::sip::message::{Headers, Name};
use crate::store::StoreError;
use bytes::Bytes;

/// What one handled message produced, in the order the machine produced it; `R` is the
/// driver's reply to an admin request (the shell's reply port and outcome; `()` in the
/// simulator, which makes no admin requests).
#[derive(Debug)]
pub struct WriteJob<R> {
    pub commands: Vec<RegistrarCommand>,
    pub responses: Vec<(u64, Response, bool)>,
    pub routes: Vec<(u64, Route)>,
    pub reply: Option<R>,
}

impl<R> Default for WriteJob<R> {
    fn default() -> Self {
        WriteJob { commands: Vec::new(), responses: Vec::new(), routes: Vec::new(), reply: None }
    }
}

impl<R> WriteJob<R> {
    fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.responses.is_empty() && self.routes.is_empty() && self.reply.is_none()
    }
}

/// What the driver does with one handled message's outputs.
#[derive(Debug)]
pub struct Dispatch<R> {
    /// Responses to deliver now (`(tx, response, authenticated)`), in order.
    pub now: Vec<(u64, Response, bool)>,
    /// Delivered now, whole ([`settle`] with nothing stored), ahead of nothing.
    pub now_job: Option<WriteJob<R>>,
    /// To store (when it has commands) and deliver after every job queued before it.
    pub queued: Option<WriteJob<R>>,
}

/// Takes every output the machine has, applies the rule of the module doc and hands each event
/// to `event`. `writes_in_flight`: jobs with commands handed to storage and not yet settled;
/// the driver counts one more for a queued job with commands and one less when it settles.
/// `bugs`: the simulator's injected bugs (`unstored-ok` lets a job's responses out before its
/// commands are stored).
pub fn dispatch<R>(
    machine: &mut Registrar,
    writes_in_flight: usize,
    reply: Option<R>,
    bugs: Bugs,
    mut event: impl FnMut(RegistrarEvent),
) -> Dispatch<R> {
    let mut job = WriteJob { reply, ..WriteJob::default() };
    let mut now = Vec::new();
    while let Some(output) = machine.poll_output() {
        match output {
            RegistrarOutput::Persist(command) => job.commands.push(command),
            // A response to a request that proved nobody depends on no stored state.
            RegistrarOutput::Respond { tx, response, authenticated: false } => now.push((tx, response, false)),
            RegistrarOutput::Respond { tx, response, authenticated: true } => job.responses.push((tx, response, true)),
            RegistrarOutput::Routed { tx, route } => job.routes.push((tx, route)),
            RegistrarOutput::Event(e) => event(e),
        }
    }
    if bugs.unstored_ok() && !job.commands.is_empty() {
        now.append(&mut job.responses);
    }
    if job.commands.is_empty() && writes_in_flight == 0 {
        let now_job = (!job.is_empty()).then_some(job);
        return Dispatch { now, now_job, queued: None };
    }
    Dispatch { now, now_job: None, queued: (!job.is_empty()).then_some(job) }
}

/// A job's deliveries once its commands are stored or refused (`stored`: the store's answer,
/// `None` when the job had no commands): its responses (a refused write turns each into
/// [`not_stored`]), its routes, and its reply with the store's error if there was one.
pub fn settle<R>(job: WriteJob<R>, stored: Option<&Result<(), StoreError>>) -> Settled<R> {
    let failed = stored.and_then(|result| result.as_ref().err());
    let responses = job
        .responses
        .into_iter()
        .map(|(tx, response, authenticated)| match failed {
            Some(error) => (tx, not_stored(&response, error), authenticated),
            None => (tx, response, authenticated),
        })
        .collect();
    Settled { responses, routes: job.routes, reply: job.reply.map(|reply| (reply, failed.cloned())) }
}

/// A settled job's deliveries, in the order they go.
#[derive(Debug)]
pub struct Settled<R> {
    /// `(tx, response, authenticated)`.
    pub responses: Vec<(u64, Response, bool)>,
    pub routes: Vec<(u64, Route)>,
    /// The admin request's reply, with the store's error if the write was refused.
    pub reply: Option<(R, Option<StoreError>)>,
}

/// What a REGISTER gets in place of `response` when its change could not be stored, keeping
/// the headers RFC 3261 §8.2.6.1 copies from the request: 503 with Retry-After when the cluster
/// has no quorum (RFC 3261 §21.5.4: the phone may retry, here or at another node), 500 for any
/// other fault.
pub fn not_stored(response: &Response, error: &StoreError) -> Response {
    let mut headers = Headers::new();
    for name in [Name::VIA, Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
        for value in response.headers.get_raw(&name) {
            headers.insert(name.clone(), value.as_str());
        }
    }
    let (code, reason) = match error.retry_after_s() {
        Some(retry_after_s) => {
            headers.insert(Name::RETRY_AFTER, retry_after_s);
            (503, "Service Unavailable")
        }
        None => (500, "Server Internal Error"),
    };
    Response { code, reason: reason.into(), headers, body: Bytes::new() }
}

#[cfg(test)]
mod tests;
