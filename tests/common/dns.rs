//! A tiny authoritative DNS server on loopback UDP for delivery and
//! self-check tests: MX, A, TXT, CNAME and PTR records from a table,
//! NXDOMAIN for names it does not know.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default, Clone)]
pub struct Zone {
    /// domain → (preference, exchange); exchange "." is a null MX.
    pub mx: HashMap<String, Vec<(u16, String)>>,
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    pub aaaa: HashMap<String, Vec<Ipv6Addr>>,
    /// Names that exist but have no records of the asked type.
    pub empty: HashSet<String>,
    pub txt: HashMap<String, Vec<String>>,
    /// name → canonical name (answered to A queries, followed by the target's A).
    pub cname: HashMap<String, String>,
    /// "1.0.0.127.in-addr.arpa" → host name.
    pub ptr: HashMap<String, String>,
    /// TTL of a domain's MX records (default 60).
    pub mx_ttl: HashMap<String, u32>,
    /// Names (and their subdomains) the server never answers: a DNS timeout.
    pub silent: HashSet<String>,
    /// Answer nothing at all: the resolver has died.
    pub mute: bool,
}

impl Zone {
    pub fn with_mx(&mut self, domain: &str, hosts: &[(u16, &str)]) -> &mut Self {
        self.mx.insert(
            domain.into(),
            hosts.iter().map(|(p, h)| (*p, h.to_string())).collect(),
        );
        self
    }

    pub fn with_host(&mut self, host: &str, ip: &str) -> &mut Self {
        self.a
            .insert(host.into(), vec![ip.parse().expect("IPv4 literal")]);
        self
    }

    #[allow(dead_code)] // not every test binary that shares this module asks AAAA
    pub fn with_ipv6_host(&mut self, host: &str, ip: &str) -> &mut Self {
        self.aaaa
            .insert(host.into(), vec![ip.parse().expect("IPv6 literal")]);
        self
    }
}

impl Zone {
    pub fn with_txt(&mut self, name: &str, text: &str) -> &mut Self {
        self.txt.entry(name.into()).or_default().push(text.into());
        self
    }

    pub fn with_cname(&mut self, name: &str, target: &str) -> &mut Self {
        self.cname.insert(name.into(), target.into());
        self
    }

    pub fn with_ptr(&mut self, ipv4: &str, host: &str) -> &mut Self {
        let octets: Vec<&str> = ipv4.split('.').rev().collect();
        self.ptr
            .insert(format!("{}.in-addr.arpa", octets.join(".")), host.into());
        self
    }
}

pub struct TestDns {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
    /// Every question received, as "name TYPE" (lower case, no final dot),
    /// so a test can tell a cached answer from a fresh lookup.
    pub queries: Arc<Mutex<Vec<String>>>,
}

impl TestDns {
    pub async fn start(zone: Zone) -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let table = zone.clone();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let asked = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(q) = query.queries.first() {
                    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                    asked
                        .lock()
                        .unwrap()
                        .push(format!("{name} {}", q.query_type));
                }
                if is_silent(&query, &table.lock().unwrap()) {
                    continue;
                }
                let response = answer(&query, &table.lock().unwrap());
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns {
            addr,
            zone,
            queries,
        }
    }

    /// How many times `question` ("name TYPE") has been asked.
    pub fn asked(&self, question: &str) -> usize {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .filter(|q| *q == question)
            .count()
    }
}

fn is_silent(query: &Message, zone: &Zone) -> bool {
    let Some(q) = query.queries.first() else {
        return zone.mute;
    };
    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    zone.mute
        || zone
            .silent
            .iter()
            .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    let Some(q) = query.queries.first() else {
        return response;
    };
    response.add_query(q.clone());
    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let known = zone.mx.contains_key(&name)
        || zone.a.contains_key(&name)
        || zone.empty.contains(&name)
        || zone.txt.contains_key(&name)
        || zone.cname.contains_key(&name)
        || zone.ptr.contains_key(&name)
        || name.is_empty();
    match q.query_type {
        RecordType::MX => {
            for (pref, host) in zone.mx.get(&name).into_iter().flatten() {
                let exchange = if host == "." {
                    Name::root()
                } else {
                    Name::from_ascii(format!("{host}.")).unwrap()
                };
                response.add_answer(Record::from_rdata(
                    q.name.clone(),
                    zone.mx_ttl.get(&name).copied().unwrap_or(60),
                    RData::MX(MX::new(*pref, exchange)),
                ));
            }
        }
        RecordType::A => {
            let mut owner = q.name.clone();
            let mut lookup = name.clone();
            if let Some(target) = zone.cname.get(&name) {
                let canonical = Name::from_ascii(format!("{target}.")).unwrap();
                response.add_answer(Record::from_rdata(
                    owner.clone(),
                    60,
                    RData::CNAME(CNAME(canonical.clone())),
                ));
                owner = canonical;
                lookup = target.clone();
            }
            for ip in zone.a.get(&lookup).into_iter().flatten() {
                response.add_answer(Record::from_rdata(owner.clone(), 60, RData::A(A(*ip))));
            }
        }
        RecordType::AAAA => {
            for ip in zone.aaaa.get(&name).into_iter().flatten() {
                response.add_answer(Record::from_rdata(
                    q.name.clone(),
                    60,
                    RData::AAAA(AAAA(*ip)),
                ));
            }
        }
        RecordType::TXT => {
            for text in zone.txt.get(&name).into_iter().flatten() {
                response.add_answer(Record::from_rdata(
                    q.name.clone(),
                    60,
                    // As DNS carries it: strings of at most 255 bytes.
                    RData::TXT(TXT::new(
                        text.as_bytes()
                            .chunks(255)
                            .map(|c| String::from_utf8_lossy(c).into_owned())
                            .collect(),
                    )),
                ));
            }
        }
        RecordType::PTR => {
            if let Some(host) = zone.ptr.get(&name) {
                response.add_answer(Record::from_rdata(
                    q.name.clone(),
                    60,
                    RData::PTR(PTR(Name::from_ascii(format!("{host}.")).unwrap())),
                ));
            }
        }
        // The root's name servers, as a recursive resolver has them cached
        // (with the root zone's real six-day TTL).
        RecordType::NS if name.is_empty() => {
            response.add_answer(Record::from_rdata(
                Name::root(),
                518_400,
                RData::NS(NS(Name::from_ascii("a.root-servers.net.").unwrap())),
            ));
        }
        _ => {}
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
