//! edge-harness: conformance suite and load tester for edge-agent WebSocket
//! backends. The subcommands land with their issues; for now it only
//! describes itself.

fn main() {
    println!(
        "edge-harness {}: conformance and load commands are not built yet; see README.md",
        env!("CARGO_PKG_VERSION")
    );
}
