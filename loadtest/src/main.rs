//! `ringcast-load`: the bundled load generator (scenarios arrive with their own issue).
fn main() {
    eprintln!("ringcast-load: no scenario implemented yet");
    std::process::exit(2);
}
