//! The ekmat runtime: one process per replica. It drives any protocol core through the
//! replica contract over real TCP, makes its writes durable in a write-ahead log with
//! group commit, applies committed commands to the key-value state machine, and serves
//! the etcd v3 gRPC API, Prometheus metrics and a health check.

pub mod backup;
pub mod config;
pub mod driver;
mod gateway;
mod http;
mod identity;
pub mod keys;
pub mod members;
pub mod node;
pub mod ports;
pub mod protocol;
pub mod query;
pub mod service;
pub mod tls;
mod token;
pub mod transport;
pub mod watch_hub;
pub mod wire;
mod writer;

pub use config::{Member, NodeConfig};
pub use node::{NodeError, run};

/// `text`, then each cause of `error` in turn, `: `-separated: tonic's transport
/// errors say only "transport error", the reason (a refused handshake, say) is in
/// their causes.
pub fn with_causes(mut text: String, error: &dyn std::error::Error) -> String {
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
