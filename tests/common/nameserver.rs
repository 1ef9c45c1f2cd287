//! A small authoritative nameserver on loopback for the tests of DNS discovery.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// An authoritative nameserver on `127.0.0.1:PORT/udp` answering A queries from a table the
/// test rewrites: a known name gets its addresses (TTL 1 s), an unknown one NXDOMAIN.
pub struct Nameserver {
    /// Where it answers.
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    task: Option<JoinHandle<()>>,
}

impl Nameserver {
    /// Start answering, with no record.
    pub async fn start() -> Nameserver {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let table = records.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&query, &table.lock().unwrap());
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Nameserver {
            addr,
            records,
            task: Some(task),
        }
    }

    /// Answer `name` with `addrs` from now on.
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), addrs.to_vec());
    }

    /// Stop answering and close the socket: queries are refused from now on.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Nameserver {
    /// Forget every record: every name is NXDOMAIN from now on.
    pub fn clear(&self) {
        self.records.lock().unwrap().clear();
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn answer(query: &Message, records: &HashMap<String, Vec<Ipv4Addr>>) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired());
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    reply.add_query(q.clone());
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match records.get(&name) {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(addrs) if q.query_type() == RecordType::A => {
            for ip in addrs {
                reply.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(*ip))));
            }
        }
        // The name exists but has no other record type (AAAA).
        Some(_) => {}
    }
    reply
}
