//! Flow control against a real server: a pipelining backend is slowed down instead of its
//! subscribers being closed.

use super::*;

/// 50,000 pipelined noreply publishes of 100 bytes in one write, to subscribers that read as
/// fast as they can: every subscriber receives all of them, none is closed.
#[test]
fn a_pipelined_burst_reaches_every_reader_in_full() {
    const N: usize = 50_000;
    let (server, path) = control_server_with(2, "burst", Limits::default());
    let readers: Vec<std::thread::JoinHandle<usize>> = (0..3)
        .map(|_| {
            let mut ws = connect(server.local_addr(), "/ws?channel=burst&format=raw");
            std::thread::spawn(move || {
                let mut got = 0;
                while got < N {
                    match ws.read() {
                        Ok(Message::Text(_)) => got += 1,
                        Ok(_) => {}
                        Err(e) => panic!("reader failed after {got} messages: {e}"),
                    }
                }
                got
            })
        })
        .collect();
    let mut ctl = Ctl::connect(&path);
    await_presence(&mut ctl, "burst", 3);
    let line = format!(
        "{{\"method\":\"publish\",\"channel\":\"burst\",\"text\":\"{}\",\"noreply\":true}}\n",
        "p".repeat(100)
    );
    let burst: Vec<u8> = line
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(line.len() * N)
        .collect();
    ctl.send_raw(&burst);
    for reader in readers {
        assert_eq!(reader.join().expect("a reader thread"), N);
    }
    let c = server.counters();
    assert_eq!(c.slow_consumers, 0, "{c:?}");
    // The backend is still served afterwards.
    assert_eq!(
        ctl.call(serde_json::json!({"id":1,"method":"info"}))["id"],
        1
    );
    stop(server);
}
