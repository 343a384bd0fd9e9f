//! Compile the protocol definitions with protox (pure Rust), so building ekmat needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/ekmatpb/signed.proto",
        "proto/ekmatpb/exclusion.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let encoded = prost::Message::encode_to_vec(&descriptors);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Keys and values as slices of the request's buffer, not a copy each: a Txn of
        // 100 puts was 200 allocations and copies before it reached the service.
        .bytes(".etcdserverpb")
        .bytes(".mvccpb")
        .compile_fds(descriptors)?;
    // The JSON etcd's gateway speaks: proto3's mapping with the fields' names as the
    // .proto spells them (`cluster_id`, `dbSize`), and unknown fields ignored, as etcd does.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3electionpb",
            ".v3lockpb",
        ])?;
    Ok(())
}
