//! SIP on real sockets: the transports (UDP and TCP, bounded queues) and the process's
//! open-file limit, which bounds how many TCP connections the transport accepts.

pub mod limits;
pub mod transport;
