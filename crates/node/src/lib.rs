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
