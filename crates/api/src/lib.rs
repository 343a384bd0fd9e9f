//! The etcd v3 gRPC API as generated Rust types, servers and clients.
//!
//! `etcdserverpb`, `authpb`, `mvccpb`, `v3electionpb` and `v3lockpb` match etcd's packages, so
//! gRPC method paths (`/etcdserverpb.KV/Put`, `/v3lockpb.Lock/Lock`, ...) and encodings
//! are etcd's. `ekmatpb` is ekmat's own: requests signed by their clients, and PBFT's exclusions.

#![allow(clippy::all, missing_docs)] // generated code

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// ekmat's own service: requests signed by their clients (see `signed.proto`).
pub mod ekmatpb {
    tonic::include_proto!("ekmatpb");
}
