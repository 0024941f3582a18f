// Compiles the region-internal node-to-node protos with protox (pure Rust; no protoc needed).
// Their messages borrow the client API's (`basalt.v1`), which basalt-client generates.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    println!("cargo:rerun-if-changed=../client/proto/basalt.proto");
    let descriptors = protox::compile(["proto/node.proto"], ["proto", "../client/proto"])?;
    tonic_prost_build::configure()
        .extern_path(".basalt.v1", "::basalt_client::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
