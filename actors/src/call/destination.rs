//! Where a B-leg's requests go: the registered Contact's address, unless NAT was detected.
//!
//! A phone registers a Contact (RFC 3261 §10.2.1) and pbx records where the REGISTER came from
//! (`Binding::source`) and whether it was behind NAT (`Binding::nat`, decided by the registrar
//! from the REGISTER's Via, Contact and transport: `registrar::nat`, Kamailio's `nat_uac_test`
//! with flags 1 + 2 + 16). When Contact and source differ there are two readings:
//! - the phone is behind NAT: its Contact names an address pbx cannot reach (a private one, a
//!   STUN-learned public one that a symmetric NAT does not forward, a host name that resolves
//!   inside its network), and only the source reaches it, through the NAT's binding (RFC 5626
//!   §3.3's "flow" idea, without its Outbound machinery);
//! - the REGISTER was sent on behalf of another device (a gateway, a provisioning service, a
//!   load generator such as SIPp): its Via names the source, the Contact names the device, and a
//!   request sent to the source gets no answer (every call 480).
//!
//! The rule:
//! - NAT detected (the flag): the source. TCP bindings always have it (the phone's connection).
//! - A Contact host that is not an IP literal (a name), a `maddr`, a `sips:` URI or a
//!   `transport=` other than the binding's: the source (pbx resolves no names on the call path).
//! - A Contact IP of another family or address class than the source, or one pbx never sends to
//!   (unspecified, multicast, broadcast, port 0): the source. The flag says so already for every
//!   binding the registrar made; checked again here so that no stored or replicated flag can aim
//!   pbx at its own loopback or at the LAN behind it.
//! - Otherwise the Contact's IP and port (5060 when it names none).
//!
//! Pure logic: no clock, socket or name lookup.

use crate::registrar::nat::{SIP_PORT_DEFAULT, address_class, contact_across_nat, host_ip};
use crate::sip::message::SipUri;
use crate::sip::message::Transport;
use std::net::SocketAddr;

/// Where requests to a contact go: its own address when NAT was not detected and it is a plain
/// UDP IP literal that sees pbx as the REGISTER's source does (see the module doc), else `source`.
pub fn destination(contact: &SipUri, source: SocketAddr, transport: Transport, nat: bool) -> SocketAddr {
    if nat {
        return source;
    }
    contact_address(contact, source, transport).unwrap_or(source)
}

fn contact_address(contact: &SipUri, source: SocketAddr, transport: Transport) -> Option<SocketAddr> {
    if transport != Transport::Udp || contact.sips || contact.uri_params.get("maddr").is_some() {
        return None;
    }
    if let Some(named) = contact.uri_params.get_val("transport")
        && !named.eq_ignore_ascii_case(transport.via_name())
    {
        return None;
    }
    let ip = host_ip(&contact.host_port.host)?;
    let port = contact.host_port.port.unwrap_or(SIP_PORT_DEFAULT);
    (port != 0 && address_class(ip).is_some() && !contact_across_nat(contact, source))
        .then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse_sip_uri;

    fn to(contact: &str, source: &str, transport: Transport) -> SocketAddr {
        let uri = parse_sip_uri(contact).unwrap_or_else(|| panic!("{contact} parses"));
        destination(&uri, source.parse().unwrap(), transport, false)
    }

    fn udp(contact: &str, source: &str) -> SocketAddr {
        to(contact, source, Transport::Udp)
    }

    /// A REGISTER sent on behalf of a device on another port or host of the same class reaches
    /// the device: the Contact wins.
    #[test]
    fn contact_of_the_same_class_is_believed() {
        assert_eq!(udp("sip:101@127.0.0.1:5070", "127.0.0.1:40000"), "127.0.0.1:5070".parse().unwrap());
        assert_eq!(udp("sip:101@192.168.1.20:5062", "192.168.1.9:5060"), "192.168.1.20:5062".parse().unwrap());
        assert_eq!(udp("sip:101@198.51.100.7;transport=udp", "203.0.113.9:5060"), "198.51.100.7:5060".parse().unwrap());
        assert_eq!(udp("sip:101@[2001:db8::7]:5080", "[2001:db8::1]:5060"), "[2001:db8::7]:5080".parse().unwrap());
        // The usual phone: Contact and source agree.
        assert_eq!(udp("sip:101@127.0.0.1:5064", "127.0.0.1:5064"), "127.0.0.1:5064".parse().unwrap());
    }

    /// Without the flag, the Contact half of the rule still holds: a Contact of another class or
    /// family than the source goes unbelieved, and so does one pbx never sends to.
    #[test]
    fn nat_and_unreachable_contacts_go_to_the_source() {
        let source = "203.0.113.9:34567";
        for contact in [
            "sip:101@192.168.1.20:5060",
            "sip:101@10.1.2.3",
            "sip:101@172.16.0.1:5060",
            "sip:101@100.64.0.1:5060",
            "sip:101@169.254.1.1:5060",
            "sip:101@127.0.0.1:5060",
            "sip:101@[fd00::1]:5060",
            "sip:101@[2001:db8::7]:5060",
            "sip:101@0.0.0.0:5060",
            "sip:101@224.0.0.1:5060",
            "sip:101@255.255.255.255:5060",
            "sip:101@198.51.100.7:0",
        ] {
            assert_eq!(udp(contact, source), source.parse().unwrap(), "{contact}");
        }
        // A public Contact from a private source (a phone that learned its public address by
        // STUN, seen by pbx on the LAN): the source too.
        assert_eq!(udp("sip:101@198.51.100.7:5060", "192.168.1.9:5060"), "192.168.1.9:5060".parse().unwrap());
        // A public phone cannot aim pbx at the loopback of pbx's host.
        assert_eq!(udp("sip:101@[::1]:5060", "[2001:db8::1]:5060"), "[2001:db8::1]:5060".parse().unwrap());
        // An IPv4-mapped source is its IPv4 address.
        assert_eq!(udp("sip:101@127.0.0.1:5070", "[::ffff:127.0.0.1]:40000"), "127.0.0.1:5070".parse().unwrap());
    }

    /// Names, maddr, sips, another transport and every TCP binding keep to the source.
    #[test]
    fn what_is_not_a_plain_udp_ip_contact_goes_to_the_source() {
        let source = "127.0.0.1:40000";
        for contact in [
            "sip:101@phone.example.com:5070",
            "sip:101@127.0.0.1:5070;maddr=127.0.0.2",
            "sips:101@127.0.0.1:5071",
            "sip:101@127.0.0.1:5070;transport=tcp",
        ] {
            assert_eq!(udp(contact, source), source.parse().unwrap(), "{contact}");
        }
        assert_eq!(to("sip:101@127.0.0.1:5070", source, Transport::Tcp), source.parse().unwrap());
    }

    /// A binding flagged NAT (its Via did not name its source: symmetric NAT behind a
    /// STUN-learned address) is called at the source even when the Contact would be believed.
    #[test]
    fn the_nat_flag_sends_to_the_source() {
        let uri = parse_sip_uri("sip:101@198.51.100.7:5062").unwrap();
        let source: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        assert_eq!(destination(&uri, source, Transport::Udp, true), source);
        assert_eq!(destination(&uri, source, Transport::Udp, false), "198.51.100.7:5062".parse().unwrap());
    }
}
