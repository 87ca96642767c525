//! placeholder, filled by the proto work
fn main() {}
