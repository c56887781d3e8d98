//! Compiles the `.proto` files with `protox` (a protobuf compiler written in Rust), so a
//! fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 4] = [
        "protos/common.proto",
        "protos/tablet.proto",
        "protos/nameserver.proto",
        "protos/taskmanager.proto",
    ];
    let descriptors = protox::compile(PROTOS, ["protos"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=protos");
    Ok(())
}
