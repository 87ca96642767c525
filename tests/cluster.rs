//! Several nodes on one Redis (`[cluster]`): three `Server`s in this process, two shards each,
//! each with its own control socket, sharing a private redis-server on a free loopback port
//! (no persistence). Real WebSocket clients; waits are bounded polls, never fixed sleeps.
//! redis-server and redis-cli must be installed (`apt-get install -y redis-server`): without
//! them these tests fail, they do not skip.

use ringcast::broker::config::{ClusterConfig, InputTarget, RedisInput};
use ringcast::config::{Config, Limits};
use ringcast::server::Server;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(20);

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

/// One node: a server and its control socket.
struct Node {
    server: Option<Server>,
    path: std::path::PathBuf,
}

impl Node {
    fn start(url: &str, test: &str, n: usize, inputs: Vec<RedisInput>) -> Node {
        Node::start_with(url, test, n, inputs, |_| {})
    }

    fn start_with(
        url: &str,
        test: &str,
        n: usize,
        inputs: Vec<RedisInput>,
        tweak: impl FnOnce(&mut Config),
    ) -> Node {
        let path = std::env::temp_dir().join(format!(
            "ringcast-cluster-{}-{test}-{n}.sock",
            std::process::id()
        ));
        let mut c = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            pin: false,
            limits: Limits {
                client_messages_per_s: 0,
                ..Limits::default()
            },
            ..Config::default()
        };
        c.control.listen = vec![format!("unix:{}", path.display())];
        c.namespaces.insert(
            "chat".into(),
            ringcast::config::Namespace {
                client_publish: true,
                ..Default::default()
            },
        );
        c.namespaces.insert(
            "pres".into(),
            ringcast::config::Namespace {
                join_leave: true,
                ..Default::default()
            },
        );
        c.namespaces.insert(
            "rec".into(),
            ringcast::config::Namespace {
                history_size: 1000,
                ..Default::default()
            },
        );
        c.cluster = ClusterConfig {
            redis: Some(url.to_string()),
            node: Some(format!("{test}-{n}")),
            node_id: Some(n as u8 + 1),
            prefix: format!("rc-{test}"),
            timeout_ms: 1_000,
            reconnect_min_ms: 20,
            reconnect_max_ms: 200,
            ..ClusterConfig::default()
        };
        c.redis_input = inputs;
        tweak(&mut c);
        let server = Server::start(c).expect("a clustered node starts");
        let node = Node {
            server: Some(server),
            path,
        };
        node.wait_up();
        node
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    fn addr(&self) -> SocketAddr {
        self.server().local_addr()
    }

    /// Polls the counters until `check` holds (bounded).
    fn eventually(&self, what: &str, check: impl Fn(&ringcast::stats::Counters) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.server().counters();
            if check(&c) {
                return;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {c:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_up(&self) {
        self.eventually("the bridge up on both shards", |c| c.cluster_up == 2);
    }

    fn ctl(&self) -> Ctl {
        Ctl::connect(&self.path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = server.wait();
        }
    }
}

/// A control-socket client: one JSON request per line, one reply per line.
struct Ctl {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Ctl {
    fn connect(path: &std::path::Path) -> Ctl {
        let s = UnixStream::connect(path).expect("control socket");
        s.set_read_timeout(Some(WAIT)).unwrap();
        Ctl {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn call(&mut self, request: Value) -> Value {
        writeln!(self.writer, "{request}").unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

type Ws = WebSocket<TcpStream>;

fn connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, response) = tungstenite::client(format!("ws://{addr}{path}"), stream).unwrap();
    assert_eq!(response.status(), 101);
    ws
}

fn read_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message before the timeout") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A subscriber: connects with `?channel=`, returns the socket, its conn id and the
/// `subscribed` reply.
fn subscriber(addr: SocketAddr, channel: &str) -> (Ws, u64, Value) {
    let mut ws = connect(addr, &format!("/ws?channel={channel}"));
    let welcome = read_json(&mut ws);
    assert_eq!(welcome["op"], "welcome");
    let subscribed = read_json(&mut ws);
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    (ws, welcome["conn"].as_u64().unwrap(), subscribed)
}

/// Reads `n` messages of the channel: (offset, data).
fn messages(ws: &mut Ws, n: usize) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = read_json(ws);
        assert_eq!(m["op"], "message", "{m}");
        out.push((m["offset"].as_u64().unwrap(), m["data"].clone()));
    }
    out
}

fn publish(ctl: &mut Ctl, channel: &str, data: Value) -> Value {
    ctl.call(json!({"method":"publish","channel":channel,"data":data}))
}

#[test]
fn three_nodes_deliver_every_publish_once_in_one_order() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3)
        .map(|n| Node::start(&redis.url(), "fanout", n, Vec::new()))
        .collect();
    // Four subscribers per node (spread over its two shards by SO_REUSEPORT).
    let mut subs: Vec<(usize, Ws)> = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..4 {
            let (ws, _, subscribed) = subscriber(node.addr(), "news");
            assert_eq!(subscribed["offset"], 0, "a new channel: {subscribed}");
            assert!(subscribed["epoch"].as_u64().unwrap() > 0, "{subscribed}");
            subs.push((n, ws));
        }
    }
    // Publishers on every node at once, 40 each.
    const EACH: usize = 40;
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let mut ctl = node.ctl();
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for i in 0..EACH {
                    let r = publish(&mut ctl, "news", json!({"node": n, "i": i}));
                    offsets.push(r["result"]["offset"].as_u64().expect("an offset"));
                }
                offsets
            })
        })
        .collect();
    // Late subscribers join while the publishes run: each gets a position, then every later
    // offset.
    let mut late: Vec<(Ws, u64)> = Vec::new();
    for node in &nodes {
        let (ws, _, subscribed) = subscriber(node.addr(), "news");
        late.push((ws, subscribed["offset"].as_u64().unwrap()));
    }
    let mut offsets: Vec<u64> = publishers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    offsets.sort_unstable();
    let total = (3 * EACH) as u64;
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "one sequence");
    // Everyone gets everything once, in the same order on every node.
    let mut order: Option<Vec<(u64, Value)>> = None;
    for (n, ws) in &mut subs {
        let got = messages(ws, total as usize);
        let seen: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "node {n}: gapless");
        let distinct: HashSet<String> = got.iter().map(|(_, d)| d.to_string()).collect();
        assert_eq!(distinct.len(), total as usize, "node {n}: no duplicate");
        match &order {
            None => order = Some(got),
            Some(first) => assert_eq!(first, &got, "node {n}: the same order everywhere"),
        }
    }
    let order = order.unwrap();
    for (ws, from) in &mut late {
        let got = messages(ws, (total - *from) as usize);
        assert_eq!(
            &got[..],
            &order[*from as usize..],
            "a late subscriber from {from}"
        );
    }
    for node in &nodes {
        node.eventually("the counters", |c| {
            c.cluster_messages_out == EACH as u64
                && c.cluster_messages_in == total
                && c.cluster_publish_errors == 0
        });
    }
    // The last subscriber of a node leaving unsubscribes the node from Redis.
    let channel = "rc-fanout:msg:news";
    let count = |redis: &Redis| -> u64 {
        let out = redis.cli(&["PUBSUB", "NUMSUB", channel]);
        out.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0)
    };
    assert_eq!(count(&redis), 3, "one subscription per node");
    subs.retain(|(n, _)| *n != 0);
    late.remove(0);
    let deadline = Instant::now() + WAIT;
    while count(&redis) != 2 {
        assert!(Instant::now() < deadline, "node 0 never unsubscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn redis_input_reaches_connections_users_and_channels() {
    let redis = Redis::start();
    let input = |pattern: &str, to, channel: Option<&str>| RedisInput {
        pattern: pattern.to_string(),
        to,
        channel: channel.map(str::to_string),
    };
    let common = vec![
        input("ws:fid:*", InputTarget::Conn, None),
        input("ws:user:*", InputTarget::User, None),
    ];
    let mut first = common.clone();
    // Channel input on one node only: each node that has it publishes once.
    first.push(input("ws:in:*", InputTarget::Channel, Some("feed:{}")));
    let nodes = [
        Node::start(&redis.url(), "input", 0, first),
        Node::start(&redis.url(), "input", 1, common.clone()),
        Node::start(&redis.url(), "input", 2, common),
    ];
    // Each node has subscribed its patterns once PUBLISH reaches that many receivers.
    let wait_receivers = |channel: &str, n: u64| {
        let deadline = Instant::now() + WAIT;
        while redis
            .cli(&["PUBLISH", channel, "probe"])
            .parse::<u64>()
            .unwrap_or(0)
            < n
        {
            assert!(
                Instant::now() < deadline,
                "{channel}: patterns not subscribed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_receivers("ws:fid:0", 3);
    wait_receivers("ws:user:nobody", 3);
    wait_receivers("ws:in:probe", 1);
    let mut clients: Vec<(Ws, u64)> = nodes
        .iter()
        .map(|node| {
            let mut ws = connect(node.addr(), "/ws");
            let welcome = read_json(&mut ws);
            (ws, welcome["conn"].as_u64().unwrap())
        })
        .collect();
    let ids: HashSet<u64> = clients.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 3, "ids differ across nodes");
    // To a connection on node 1, from Redis.
    let target = clients[1].1;
    let n = redis.cli(&["PUBLISH", &format!("ws:fid:{target}"), "{\"hello\":1}"]);
    assert!(n.parse::<u64>().unwrap() >= 1, "{n}");
    let got = read_json(&mut clients[1].0);
    assert_eq!(got["data"], json!({"hello": 1}), "{got}");
    // Nobody else got it: their next message is the marker sent to each.
    for (ws, id) in clients.iter_mut() {
        redis.cli(&["PUBLISH", &format!("ws:fid:{id}"), &format!("marker {id}")]);
        let got = read_json(ws);
        assert_eq!(got["data"], json!(format!("marker {id}")), "{got}");
    }
    // Bad suffixes are counted and ignored on every node.
    for bad in ["ws:fid:nope", "ws:fid:", "ws:fid:99999999999999999999"] {
        redis.cli(&["PUBLISH", bad, "x"]);
    }
    for node in &nodes {
        node.eventually("refused inputs", |c| c.redis_input_refused >= 3);
    }
    // To a user bound on node 2.
    let mut ctl = nodes[2].ctl();
    let r = ctl.call(json!({"method":"bind_user","conn":clients[2].1,"user":"alice"}));
    assert!(r.get("error").is_none(), "{r}");
    redis.cli(&["PUBLISH", "ws:user:alice", "for alice"]);
    let got = read_json(&mut clients[2].0);
    assert_eq!(got["data"], json!("for alice"), "{got}");
    // To a channel: published once (by node 0), delivered to subscribers of every node.
    let mut subs: Vec<Ws> = nodes
        .iter()
        .map(|node| subscriber(node.addr(), "feed:x").0)
        .collect();
    redis.cli(&["PUBLISH", "ws:in:x", "[1,2]"]);
    redis.cli(&["PUBLISH", "ws:in:x", "[3]"]);
    for ws in &mut subs {
        assert_eq!(
            messages(ws, 2),
            vec![(1, json!([1, 2])), (2, json!([3]))],
            "once each, in order"
        );
    }
}

#[test]
fn redis_killed_and_restarted_while_publishing() {
    let mut redis = Redis::start();
    let port = redis.port;
    let url = redis.url();
    let nodes: Vec<Node> = (0..2)
        .map(|n| Node::start(&url, "restart", n, Vec::new()))
        .collect();
    let mut subs: Vec<Ws> = Vec::new();
    let mut epoch = 0;
    for node in &nodes {
        for _ in 0..2 {
            subs.push(subscriber(node.addr(), "news").0);
        }
    }
    let mut ctls: Vec<Ctl> = nodes.iter().map(Node::ctl).collect();
    // Publishes before the crash: all succeed.
    let mut ok: Vec<i64> = Vec::new();
    let mut unknown: Vec<i64> = Vec::new();
    let mut next = 0i64;
    for _ in 0..20 {
        let r = publish(&mut ctls[next as usize % 2], "news", json!(next));
        let e = r["result"]["epoch"].as_u64().expect("published");
        assert!(epoch == 0 || e == epoch);
        epoch = e;
        ok.push(next);
        next += 1;
    }
    for node in &nodes {
        node.eventually("the first messages in", |c| c.cluster_messages_in == 20);
    }
    redis.kill();
    // While Redis is down: each node delivers to its own subscribers, on a node-local epoch,
    // and says so (local_only); the other node's subscribers miss those.
    let mut local: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + WAIT;
    while local[0].len() < 5 || local[1].len() < 5 {
        assert!(Instant::now() < deadline, "no local deliveries: {local:?}");
        let n = next as usize % 2;
        let r = publish(&mut ctls[n], "news", json!(next));
        if r["result"]["local_only"] == true {
            let e = r["result"]["epoch"].as_u64().unwrap();
            assert!(e >= 1 << 52 && e != epoch, "a node-local epoch: {r}");
            local[n].push(next);
        } else {
            // Taken before the bridge noticed (its delivery is not known), or lost in flight.
            assert!(
                r.get("result").is_some() || r["error"]["code"] == "cluster_unavailable",
                "{r}"
            );
            unknown.push(next);
        }
        next += 1;
    }
    for node in &nodes {
        node.eventually("the loss seen", |c| c.cluster_up == 0);
        node.eventually("local deliveries counted", |c| c.cluster_publish_local >= 5);
    }
    redis = Redis::start_on(port);
    // Publishing goes on while the nodes reconnect by themselves: what a node takes while
    // another is still away may miss that one (a gap its subscribers see), so those publishes
    // count as unknown; once every node is back, every publish must reach everyone.
    let deadline = Instant::now() + WAIT;
    while nodes.iter().any(|n| n.server().counters().cluster_up != 2) {
        assert!(Instant::now() < deadline, "the nodes never came back");
        let r = publish(&mut ctls[next as usize % 2], "news", json!(next));
        assert!(
            r.get("result").is_some() || r["error"]["code"] == "cluster_unavailable",
            "{r}"
        );
        unknown.push(next);
        next += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut new_epoch = 0;
    for _ in 0..20 {
        let r = publish(&mut ctls[next as usize % 2], "news", json!(next));
        new_epoch = r["result"]["epoch"]
            .as_u64()
            .expect("published after the restart");
        ok.push(next);
        next += 1;
    }
    assert_ne!(new_epoch, epoch, "Redis lost the channel: a new epoch");
    // Every subscriber stayed connected and got every acknowledged publish exactly once, and
    // its own node's local deliveries (nothing else but publishes whose outcome was unknown;
    // never the other node's local ones).
    let ok_set: HashSet<i64> = ok.iter().copied().collect();
    let unknown_set: HashSet<i64> = unknown.iter().copied().collect();
    for (k, ws) in subs.iter_mut().enumerate() {
        let node = k / 2; // two subscribers per node, in node order
        let mine: HashSet<i64> = local[node].iter().copied().collect();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let mut missing: BTreeMap<i64, ()> =
            ok.iter().chain(&local[node]).map(|i| (*i, ())).collect();
        while !missing.is_empty() {
            let m = read_json(ws);
            assert_eq!(m["op"], "message", "subscriber {k}: {m}");
            let i = m["data"].as_i64().unwrap();
            *seen.entry(i).or_default() += 1;
            missing.remove(&i);
            assert!(
                ok_set.contains(&i) || unknown_set.contains(&i) || mine.contains(&i),
                "subscriber {k} got {i}: another node's local delivery?"
            );
        }
        assert!(
            seen.values().all(|n| *n == 1),
            "subscriber {k}: duplicates {seen:?}"
        );
    }
    for node in &nodes {
        node.eventually("the reconnect counted", |c| {
            c.cluster_reconnects >= 1 && c.cluster_epochs_bumped >= 1
        });
    }
    // A client recovering from the old epoch learns it cannot.
    let mut ws = connect(nodes[1].addr(), "/ws");
    assert_eq!(read_json(&mut ws)["op"], "welcome");
    let since = json!({"op":"subscribe","channel":"news","since":{"offset":5,"epoch":epoch}});
    ws.send(Message::text(since.to_string())).unwrap();
    let r = read_json(&mut ws);
    assert_eq!(r["op"], "subscribed", "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["epoch"].as_u64(), Some(new_epoch), "{r}");
    drop(redis);
}

/// Reads a subscriber's messages until `until` (a payload) arrives: (offset, data).
fn messages_until(ws: &mut Ws, until: &Value) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    loop {
        let m = read_json(ws);
        assert_eq!(m["op"], "message", "{m}");
        let data = m["data"].clone();
        out.push((m["offset"].as_u64().unwrap(), data.clone()));
        if &data == until {
            return out;
        }
    }
}

#[test]
fn a_client_recovers_on_a_node_that_never_had_the_channel() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3)
        .map(|n| Node::start(&redis.url(), "recover", n, Vec::new()))
        .collect();
    let (mut ws, _, subscribed) = subscriber(nodes[0].addr(), "rec:x");
    let epoch = subscribed["epoch"].as_u64().unwrap();
    assert!(
        epoch > 0,
        "the epoch exists before the first publish: {subscribed}"
    );
    let mut ctl = nodes[1].ctl();
    for i in 0..10 {
        publish(&mut ctl, "rec:x", json!(i));
    }
    let got = messages(&mut ws, 10);
    assert_eq!(got.last().unwrap(), &(10, json!(9)));
    drop(ws);
    // Publishing goes on while the client is away and while it comes back, on node 2, which
    // has never had the channel: the missed messages come from Redis, then the live ones,
    // without a gap or a duplicate.
    let publisher = std::thread::spawn(move || {
        for i in 10..200 {
            let r = publish(&mut ctl, "rec:x", json!(i));
            assert!(r.get("result").is_some(), "{r}");
        }
    });
    let mut ws = connect(nodes[2].addr(), "/ws");
    assert_eq!(read_json(&mut ws)["op"], "welcome");
    let since = json!({"op":"subscribe","channel":"rec:x","since":{"offset":10,"epoch":epoch}});
    ws.send(Message::text(since.to_string())).unwrap();
    let r = read_json(&mut ws);
    assert_eq!(r["op"], "subscribed", "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["epoch"].as_u64(), Some(epoch), "{r}");
    publisher.join().unwrap();
    let got = messages_until(&mut ws, &json!(199));
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (11..=200).collect::<Vec<_>>(),
        "gapless, once each"
    );
    for (offset, data) in &got {
        assert_eq!(data, &json!(offset - 1));
    }
    // From an epoch the channel never had: not recoverable.
    let mut ws = connect(nodes[0].addr(), "/ws");
    assert_eq!(read_json(&mut ws)["op"], "welcome");
    let since = json!({"op":"subscribe","channel":"rec:x","since":{"offset":3,"epoch":epoch + 1}});
    ws.send(Message::text(since.to_string())).unwrap();
    let r = read_json(&mut ws);
    assert_eq!(r["recovered"], false, "{r}");
}

/// The close code of the next close frame (after any text).
fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(Message::Close(None)) => return 1005,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn send_user_disconnect_user_and_online_span_the_nodes() {
    let redis = Redis::start();
    let nodes = [
        Node::start(&redis.url(), "users", 0, Vec::new()),
        Node::start(&redis.url(), "users", 1, Vec::new()),
        Node::start(&redis.url(), "users", 2, Vec::new()),
    ];
    // Alice has two tabs on node 0 and one on node 1; bob one on node 1. Node 2 holds no one.
    let tab = |node: &Node| {
        let mut ws = connect(node.addr(), "/ws");
        let welcome = read_json(&mut ws);
        (ws, welcome["conn"].as_u64().unwrap())
    };
    let mut alice = vec![tab(&nodes[0]), tab(&nodes[0]), tab(&nodes[1])];
    let mut bob = tab(&nodes[1]);
    for (i, (_, conn)) in alice.iter().enumerate() {
        let node = if i < 2 { &nodes[0] } else { &nodes[1] };
        let r = node
            .ctl()
            .call(json!({"method":"bind_user","conn":conn,"user":"alice"}));
        assert!(r.get("error").is_none(), "{r}");
    }
    let r = nodes[1]
        .ctl()
        .call(json!({"method":"bind_user","conn":bob.1,"user":"bob"}));
    assert!(r.get("error").is_none(), "{r}");
    // Each node holding alice subscribed her once: PUBLISH reaches two receivers.
    let deadline = Instant::now() + WAIT;
    while redis.cli(&["PUBSUB", "NUMSUB", "rc-users:usr:alice"]) != "rc-users:usr:alice\n2" {
        assert!(
            Instant::now() < deadline,
            "alice not subscribed by both nodes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // From the node that holds nobody: every tab of alice, on both nodes, once; bob nothing.
    let mut ctl = nodes[2].ctl();
    let r = ctl.call(json!({"method":"send_user","user":"alice","data":{"n":1}}));
    assert_eq!(r["result"], json!({"connections":0,"nodes":2}), "{r}");
    let r = nodes[0]
        .ctl()
        .call(json!({"method":"send_user","user":"alice","data":{"n":2}}));
    assert_eq!(r["result"], json!({"connections":2,"nodes":2}), "{r}");
    for (ws, _) in alice.iter_mut() {
        assert_eq!(read_json(ws), json!({"op":"push","data":{"n":1}}));
        assert_eq!(
            read_json(ws),
            json!({"op":"push","data":{"n":2}}),
            "in order"
        );
    }
    let r = nodes[0]
        .ctl()
        .call(json!({"method":"send_user","user":"bob","text":"for bob"}));
    assert_eq!(r["result"], json!({"connections":0,"nodes":1}), "{r}");
    assert_eq!(read_json(&mut bob.0), json!({"op":"push","data":"for bob"}));
    let r = ctl.call(json!({"method":"send_user","user":"nobody","text":"x"}));
    assert_eq!(r["result"], json!({"connections":0,"nodes":0}), "{r}");
    // online from any node: this node's connection counts, and the nodes holding each user.
    let r = ctl.call(json!({"method":"online","users":["alice","bob","nobody"]}));
    assert_eq!(
        r["result"],
        json!({"users":{"alice":0,"bob":0,"nobody":0},"nodes":{"alice":2,"bob":1,"nobody":0}}),
        "{r}"
    );
    let r = nodes[0]
        .ctl()
        .call(json!({"method":"online","users":["alice"]}));
    assert_eq!(
        r["result"],
        json!({"users":{"alice":2},"nodes":{"alice":2}}),
        "{r}"
    );
    // disconnect_user from node 2 closes alice everywhere with the code asked for.
    let r = ctl.call(json!({"method":"disconnect_user","user":"alice","code":4401,"reason":"bye"}));
    assert_eq!(r["result"]["nodes"], 2, "{r}");
    for (ws, _) in alice.iter_mut() {
        assert_eq!(close_code(ws), 4401);
    }
    drop(alice);
    // Once her tabs are gone, no node holds her: the subscriptions went with them.
    let deadline = Instant::now() + WAIT;
    while redis.cli(&["PUBSUB", "NUMSUB", "rc-users:usr:alice"]) != "rc-users:usr:alice\n0" {
        assert!(Instant::now() < deadline, "alice still subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = ctl.call(json!({"method":"send_user","user":"alice","text":"late"}));
    assert_eq!(r["result"], json!({"connections":0,"nodes":0}), "{r}");
    let r = ctl.call(json!({"method":"online","users":["alice","bob"]}));
    assert_eq!(r["result"]["nodes"], json!({"alice":0,"bob":1}), "{r}");
    for node in &nodes[..2] {
        node.eventually("user sends acted on", |c| c.cluster_user_messages_in >= 2);
        // The bridge's own counters are in `stats` too (shard 0 copies them).
        node.eventually("the bridge's counters", |c| c.bridge_messages_in >= 2);
    }
    nodes[2].eventually("the bridge's sends counted", |c| c.bridge_messages_out >= 4);
}

/// A node in a process of its own (so that it can be killed with SIGKILL): `ringcast serve`
/// with a config file, ready once its readiness line names its port.
struct ProcessNode {
    child: Child,
    addr: SocketAddr,
    path: std::path::PathBuf,
}

impl ProcessNode {
    fn start(url: &str, test: &str, n: usize, lease_ms: u64) -> ProcessNode {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-cluster-{}-{test}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let config = dir.join("ringcast.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nshards = 2\n\n[control]\nlisten = [\"unix:{}\"]\n\n\
                 [namespaces.pres]\njoin_leave = true\n\n[cluster]\nredis = \"{url}\"\n\
                 node = \"{test}-{n}\"\nprefix = \"rc-{test}\"\ntimeout_ms = 1000\n\
                 presence_lease_ms = {lease_ms}\nnode_id = {}\n",
                path.display(),
                n + 1
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["serve", "--no-pin", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ringcast ready listen=") {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the node's readiness line");
        let addr: SocketAddr = addr.parse().expect("the node's address");
        let node = ProcessNode { child, addr, path };
        // Up on the broker: its stats say so on both shards.
        let deadline = Instant::now() + WAIT;
        loop {
            let r = Ctl::connect(&node.path).call(json!({"method":"stats"}));
            let up = &r["result"]["total"]["cluster_up"];
            if up == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} not up on the broker: cluster_up {up}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/ws` subscriber of `channel` on `addr` bound to `user` through `ctl`; returns the socket.
fn member(addr: SocketAddr, ctl: &mut Ctl, channel: &str, user: &str) -> Ws {
    let (ws, conn, _) = subscriber(addr, channel);
    let r = ctl.call(json!({"method":"bind_user","conn":conn,"user":user}));
    assert!(r.get("error").is_none(), "{r}");
    ws
}

/// The next presence news on `ws`: (op, user).
fn news(ws: &mut Ws) -> (String, String) {
    let m = read_json(ws);
    assert!(m["op"] == "join" || m["op"] == "leave", "not news: {m}");
    (
        m["op"].as_str().unwrap().to_string(),
        m["user"].as_str().unwrap().to_string(),
    )
}

/// Polls `presence_stats` on `ctl` until it answers `want` (bounded).
fn stats_until(ctl: &mut Ctl, channel: &str, want: Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = ctl.call(json!({"method":"presence_stats","channel":channel}));
        if r["result"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence_stats {r}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn presence_spans_the_nodes_and_a_killed_node_leaves_no_ghosts() {
    let redis = Redis::start();
    let nodes = [
        Node::start(&redis.url(), "pres", 0, Vec::new()),
        Node::start(&redis.url(), "pres", 1, Vec::new()),
    ];
    let mut doomed = Some(ProcessNode::start(&redis.url(), "pres", 2, 1_500));
    let room = "pres:room";
    let (mut ctl0, mut ctl1) = (nodes[0].ctl(), nodes[1].ctl());
    // An anonymous watcher on node 0 sees the cluster's news.
    let (mut watcher, _, _) = subscriber(nodes[0].addr(), room);
    let alice0 = member(nodes[0].addr(), &mut ctl0, room, "alice");
    assert_eq!(news(&mut watcher), ("join".into(), "alice".into()));
    // Alice's second tab, on another node: she is in the room already, no news.
    let alice1 = member(nodes[1].addr(), &mut ctl1, room, "alice");
    let d = doomed.as_ref().unwrap();
    let mut ctl2 = Ctl::connect(&d.path);
    let _bob = member(d.addr, &mut ctl2, room, "bob");
    assert_eq!(
        news(&mut watcher),
        ("join".into(), "bob".into()),
        "bob's join is the next news: alice's second tab made none"
    );
    // Any node answers for all of them.
    let all = json!({"users":2,"conns":4,"anonymous":1});
    stats_until(&mut ctl1, room, all.clone());
    stats_until(&mut ctl2, room, all);
    let r = ctl1.call(json!({"method":"presence","channel":room}));
    assert_eq!(r["result"]["users"]["alice"]["conns"], 2, "{r}");
    assert_eq!(r["result"]["users"]["bob"]["conns"], 1, "{r}");
    assert_eq!(r["result"]["anonymous"], 1, "{r}");
    assert!(r["result"]["users_next"].is_null(), "{r}");
    let r = ctl1.call(json!({"method":"presence","channel":room,"limit":1}));
    assert_eq!(
        r["result"]["users_next"], "alice",
        "pages in byte order: {r}"
    );
    let r = ctl1.call(json!({"method":"presence","channel":room,"limit":1,"user_cursor":"alice"}));
    let users: Vec<&String> = r["result"]["users"].as_object().unwrap().keys().collect();
    assert_eq!(users, ["bob"], "{r}");
    // Alice closes her tab on node 1: still in the room on node 0, no news.
    drop(alice1);
    stats_until(&mut ctl0, room, json!({"users":2,"conns":3,"anonymous":1}));
    // Bob's node dies without a word: once its lease has passed, bob has left.
    let mut d = doomed.take().unwrap();
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // Node 1, which holds no one in the room now, reads it first: the read removes the dead
    // node's entries, and their leave news go out with it.
    stats_until(&mut ctl1, room, json!({"users":1,"conns":2,"anonymous":1}));
    assert_eq!(
        news(&mut watcher),
        ("leave".into(), "bob".into()),
        "the dead node's user leaves after its lease"
    );
    assert_eq!(
        redis.cli(&["HLEN", "rc-pres:pn:pres:room"]),
        "1",
        "the dead node's entry is gone; node 0's remains (node 1 holds no one in the room now)"
    );
    let keys = redis.cli(&["KEYS", "rc-pres:pu:9:pres:room:*"]);
    assert!(
        keys.lines().count() == 1 && keys.starts_with("rc-pres:pu:9:pres:room:pres-0@"),
        "only node 0's users are kept: {keys}"
    );
    // Redis restarted with nothing kept: node 0 writes its presence again by itself.
    let port = redis.port;
    let mut redis = redis;
    redis.kill();
    redis = Redis::start_on(port);
    stats_until(&mut ctl1, room, json!({"users":1,"conns":2,"anonymous":1}));
    drop(alice0);
    assert_eq!(news(&mut watcher), ("leave".into(), "alice".into()));
    stats_until(&mut ctl1, room, json!({"users":0,"conns":1,"anonymous":1}));
    drop(redis);
}

#[test]
fn connection_ids_name_their_node_and_any_node_reaches_them() {
    let redis = Redis::start();
    let nodes = [
        Node::start(&redis.url(), "ids", 0, Vec::new()),
        Node::start(&redis.url(), "ids", 1, Vec::new()),
    ];
    let mut ws = connect(nodes[0].addr(), "/ws");
    let conn = read_json(&mut ws)["conn"].as_u64().unwrap();
    assert_eq!(conn >> 45, 1, "node 0 of the test has node_id 1: {conn}");
    let mut other = connect(nodes[1].addr(), "/ws");
    let conn1 = read_json(&mut other)["conn"].as_u64().unwrap();
    assert_eq!(conn1 >> 45, 2);
    // From node 1's control socket: a push, a server-side subscribe, then a publish on node 1
    // reaches the connection on node 0.
    let mut ctl = nodes[1].ctl();
    let r = ctl.call(json!({"method":"send","conn":conn,"data":{"n":1}}));
    assert_eq!(r["result"], json!({"node":1,"forwarded":true}), "{r}");
    assert_eq!(read_json(&mut ws), json!({"op":"push","data":{"n":1}}));
    let r = ctl.call(json!({"method":"subscribe","conn":conn,"channel":"chat:ids"}));
    assert_eq!(r["result"]["forwarded"], true, "{r}");
    let subscribed = read_json(&mut ws);
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = redis.cli(&["PUBSUB", "NUMSUB", "rc-ids:msg:chat:ids"]);
        if r == "rc-ids:msg:chat:ids\n1" {
            break;
        }
        assert!(Instant::now() < deadline, "node 0 not subscribed: {r}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = publish(&mut ctl, "chat:ids", json!("across"));
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(messages(&mut ws, 1)[0].1, json!("across"));
    // A node number nobody holds: no_such_conn at once; a bad id as on one node.
    let nobody = (9u64 << 45) | (conn & ((1 << 45) - 1));
    let r = ctl.call(json!({"method":"send","conn":nobody,"text":"x"}));
    assert_eq!(r["error"]["code"], "no_such_conn", "{r}");
    let r = ctl.call(json!({"method":"unbind_user","conn":conn}));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // disconnect from node 1 closes node 0's connection with the code asked for.
    let r = ctl.call(json!({"method":"disconnect","conn":conn,"code":4001,"reason":"moved"}));
    assert_eq!(r["result"]["forwarded"], true, "{r}");
    assert_eq!(close_code(&mut ws), 4001);
    nodes[0].eventually("the forwarded requests acted on", |c| {
        c.cluster_conn_forwards_in == 3
    });
    nodes[1].eventually("the forwards counted", |c| c.cluster_conn_forwards == 4);
    // Node 1's own connection is still addressed locally.
    let r = ctl.call(json!({"method":"send","conn":conn1,"text":"here"}));
    assert_eq!(r["result"], json!({}), "{r}");
    assert_eq!(read_json(&mut other), json!({"op":"push","data":"here"}));
}

#[test]
fn history_is_read_from_redis_on_any_node() {
    let redis = Redis::start();
    let nodes = [
        Node::start(&redis.url(), "hist", 0, Vec::new()),
        Node::start(&redis.url(), "hist", 1, Vec::new()),
    ];
    // Published on node 0 with no subscriber anywhere: kept in Redis only.
    let mut ctl0 = nodes[0].ctl();
    let mut epoch = 0;
    for n in 1..=5 {
        let r = publish(&mut ctl0, "rec:h", json!({"n": n}));
        assert_eq!(r["result"]["offset"], n, "{r}");
        epoch = r["result"]["epoch"].as_u64().unwrap();
    }
    // Node 1 never had the channel: its history is Redis's.
    let mut ctl1 = nodes[1].ctl();
    let r = ctl1.call(json!({"method":"history","channel":"rec:h","limit":3}));
    let result = &r["result"];
    assert_eq!(
        (&result["offset"], &result["epoch"]),
        (&json!(5), &json!(epoch)),
        "{r}"
    );
    assert!(result.get("local_only").is_none(), "{r}");
    let got: Vec<(u64, Value)> = result["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["data"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (3, json!({"n":3})),
            (4, json!({"n":4})),
            (5, json!({"n":5}))
        ],
        "the newest 3, oldest first, as subscribers got them: {r}"
    );
    assert_eq!(result["messages"][0]["op"], "message");
    let since = json!({"offset":3,"epoch":epoch});
    let r = ctl1.call(json!({"method":"history","channel":"rec:h","since":since}));
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let offsets: Vec<u64> = (r["result"]["messages"].as_array().unwrap().iter())
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5], "{r}");
    let stale = json!({"offset":3,"epoch":epoch + 1});
    let r = ctl1.call(json!({"method":"history","channel":"rec:h","since":stale}));
    assert_eq!(r["result"]["recovered"], false, "another epoch: {r}");
    // Redis gone: this node's own history, marked.
    drop(redis);
    nodes[1].eventually("the bridge down", |c| c.cluster_up == 0);
    let r = ctl1.call(json!({"method":"history","channel":"rec:h"}));
    assert_eq!(r["result"]["local_only"], true, "{r}");
    assert_eq!(r["result"]["messages"], json!([]), "{r}");
}

#[test]
fn a_node_cut_off_from_redis_catches_up_on_what_it_missed() {
    let redis = Redis::start();
    let a = Node::start(&redis.url(), "catch", 0, Vec::new());
    // Node B comes back slowly, so that what A publishes meanwhile is surely missed.
    let b = Node::start_with(&redis.url(), "catch", 1, Vec::new(), |c| {
        c.cluster.reconnect_min_ms = 2_000;
        c.cluster.reconnect_max_ms = 4_000;
    });
    let (mut ws, _, _) = subscriber(b.addr(), "rec:c");
    let deadline = Instant::now() + WAIT;
    while redis.cli(&["PUBSUB", "NUMSUB", "rc-catch:msg:rec:c"]) != "rc-catch:msg:rec:c\n1" {
        assert!(Instant::now() < deadline, "node B not subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ctl = a.ctl();
    for n in 1..=3 {
        publish(&mut ctl, "rec:c", json!(n));
    }
    assert_eq!(
        messages(&mut ws, 3).iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Cut node B off: Redis closes its two connections.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    for line in clients
        .lines()
        .filter(|l| l.contains("name=ringcast:catch-1:"))
    {
        let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
        redis.cli(&["CLIENT", "KILL", "ID", id]);
    }
    b.eventually("node B down", |c| c.cluster_up == 0);
    for n in 4..=8 {
        let r = publish(&mut ctl, "rec:c", json!(n));
        assert_eq!(r["result"]["offset"], n, "{r}");
    }
    // Back on Redis, B fetches 4..8 from the channel's history before anything newer.
    b.wait_up();
    b.eventually("the catch-up", |c| c.cluster_catch_ups >= 1);
    publish(&mut ctl, "rec:c", json!(9));
    let got: Vec<(u64, Value)> = messages(&mut ws, 6);
    assert_eq!(
        got,
        (4..=9).map(|n| (n, json!(n))).collect::<Vec<_>>(),
        "every message once, in order, no gap"
    );
    assert_eq!(b.server().counters().cluster_catch_ups_failed, 0);
}
