//! Compile the protocol definitions with protox (pure Rust), so building ekmat needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
