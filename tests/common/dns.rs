//! A tiny authoritative DNS server on loopback UDP for delivery tests: MX and
//! A records from a table, NXDOMAIN for names it does not know.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default, Clone)]
pub struct Zone {
    /// domain → (preference, exchange); exchange "." is a null MX.
    pub mx: HashMap<String, Vec<(u16, String)>>,
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    /// Names that exist but have no records of the asked type.
    pub empty: HashSet<String>,
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
}

pub struct TestDns {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
}

impl TestDns {
    pub async fn start(zone: Zone) -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let table = zone.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let response = answer(&query, &table.lock().unwrap());
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, zone }
    }
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
    let known =
        zone.mx.contains_key(&name) || zone.a.contains_key(&name) || zone.empty.contains(&name);
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
                    60,
                    RData::MX(MX::new(*pref, exchange)),
                ));
            }
        }
        RecordType::A => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                response.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(*ip))));
            }
        }
        _ => {}
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
