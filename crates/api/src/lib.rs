//! The etcd v3 gRPC API as generated Rust types, servers and clients.
//!
//! `etcdserverpb` and `mvccpb` match etcd's packages, so gRPC method paths
//! (`/etcdserverpb.KV/Put`, ...) and encodings are etcd's.

#![allow(clippy::all, missing_docs)] // generated code

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
