//! The Redis protocol against real node processes: a real Redis client (redis-rs), raw RESP
//! where the exact bytes matter, and `redis-cli` / `redis-benchmark` when the machine has them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use basalt_testkit::{run_cli, runtime, ClusterOptions, TestCluster};

const NODE: &str = env!("CARGO_BIN_EXE_basalt-test-node");

fn resp_cluster(extra: &[&str]) -> TestCluster {
    let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
    cluster.enable_resp();
    cluster.push_args(extra.iter().map(|s| s.to_string()));
    cluster.launch();
    cluster
}

fn connect(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("a redis client");
    // The node may still be starting: its RESP port answers once it is bound.
    for _ in 0..100 {
        if let Ok(mut connection) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                return connection;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no RESP connection to {addr}");
}

/// A raw connection, for replies whose exact bytes matter.
struct Raw {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Raw {
    /// Connects, waiting for a node that is still starting to bind its RESP port.
    fn open(addr: SocketAddr) -> Raw {
        let mut attempts = 0;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(stream) => break stream,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no RESP listener on {addr}: {e}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        Raw {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next whole reply, as text.
    fn reply(&mut self) -> String {
        loop {
            if let Some(end) = reply_end(&self.pending, 0) {
                let reply: Vec<u8> = self.pending.drain(..end).collect();
                return String::from_utf8_lossy(&reply).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read a reply");
            assert!(
                n > 0,
                "connection closed; had {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// A request of byte strings (keys that are not UTF-8).
    fn call_bytes(&mut self, args: &[&[u8]]) -> String {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.send(&request);
        self.reply()
    }

    fn call(&mut self, args: &[&str]) -> String {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.send(request.as_bytes());
        self.reply()
    }

    /// Whether the server closed the connection (after answering what it had).
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(self.stream.read(&mut chunk), Ok(0) | Err(_))
    }
}

/// Where the reply starting at `at` ends, if `buf` holds all of it.
fn reply_end(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + 2;
    let header = std::str::from_utf8(&buf[at + 1..line_end - 2]).ok()?;
    match buf[at] {
        b'$' | b'=' => {
            let n: i64 = header.parse().ok()?;
            if n < 0 {
                return Some(line_end);
            }
            let end = line_end + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n: i64 = header.parse().ok()?;
            let items = if buf[at] == b'%' { n * 2 } else { n };
            let mut end = line_end;
            for _ in 0..items.max(0) {
                end = reply_end(buf, end)?;
            }
            Some(end)
        }
        _ => Some(line_end),
    }
}

/// A follower's id: commands sent there must reach the leader.
fn follower(cluster: &TestCluster) -> u64 {
    runtime().block_on(async {
        let client = cluster.client().await;
        let leader = cluster.leader(&client).await;
        (1..=3).find(|id| *id != leader).expect("a follower")
    })
}

#[test]
fn strings_and_keys_answer_as_redis_does_through_a_follower() {
    let cluster = resp_cluster(&[]);
    let node = follower(&cluster);
    let mut c = connect(cluster.resp(node));
    let mut raw = Raw::open(cluster.resp(node));

    // SET and its options.
    assert_eq!(raw.call(&["SET", "s:a", "1"]), "+OK\r\n");
    assert_eq!(raw.call(&["GET", "s:a"]), "$1\r\n1\r\n");
    assert_eq!(raw.call(&["GET", "s:none"]), "$-1\r\n");
    assert_eq!(raw.call(&["SET", "s:a", "2", "NX"]), "$-1\r\n");
    assert_eq!(raw.call(&["SET", "s:a", "2", "XX", "GET"]), "$1\r\n1\r\n");
    assert_eq!(raw.call(&["SET", "s:b", "2", "XX"]), "$-1\r\n");
    assert_eq!(raw.call(&["SETNX", "s:b", "x"]), ":1\r\n");
    assert_eq!(raw.call(&["SETNX", "s:b", "y"]), ":0\r\n");
    assert_eq!(raw.call(&["SET", "s:t", "v", "EX", "100"]), "+OK\r\n");
    let ttl: i64 = redis::cmd("TTL").arg("s:t").query(&mut c).expect("TTL");
    assert!((99..=100).contains(&ttl), "{ttl}");
    let pttl: i64 = redis::cmd("PTTL").arg("s:t").query(&mut c).expect("PTTL");
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(raw.call(&["SET", "s:t", "w", "KEEPTTL"]), "+OK\r\n");
    let kept: i64 = redis::cmd("TTL").arg("s:t").query(&mut c).expect("TTL");
    assert!((98..=100).contains(&kept), "KEEPTTL kept {kept}");
    assert_eq!(raw.call(&["PERSIST", "s:t"]), ":1\r\n");
    assert_eq!(raw.call(&["TTL", "s:t"]), ":-1\r\n");
    assert_eq!(raw.call(&["TTL", "s:none"]), ":-2\r\n");
    assert_eq!(raw.call(&["PEXPIRE", "s:t", "300"]), ":1\r\n");
    assert_eq!(raw.call(&["EXPIRE", "s:t", "100", "GT"]), ":1\r\n");
    assert_eq!(raw.call(&["EXPIRE", "s:t", "1", "NX"]), ":0\r\n");
    // INCR and APPEND keep the key's deadline exactly, however often they rewrite it.
    assert_eq!(raw.call(&["SET", "s:window", "0", "PX", "1500"]), "+OK\r\n");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        let _: i64 = redis::cmd("INCR").arg("s:window").query(&mut c).expect("INCR");
    }
    let left: i64 = redis::cmd("PTTL").arg("s:window").query(&mut c).expect("PTTL");
    assert!(left > 0 && left <= 800, "the deadline moved: {left} ms left");
    std::thread::sleep(Duration::from_millis(left as u64 + 300));
    assert_eq!(raw.call(&["GET", "s:window"]), "$-1\r\n", "the window ended on time");
    assert_eq!(raw.call(&["SET", "s:gone", "v", "PX", "200"]), "+OK\r\n");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        raw.call(&["GET", "s:gone"]),
        "$-1\r\n",
        "an expired key reads as absent"
    );
    assert_eq!(raw.call(&["SET", "s:past", "v", "PXAT", "1000"]), "+OK\r\n");
    assert_eq!(raw.call(&["EXISTS", "s:past"]), ":0\r\n", "a time already past deletes");

    // Many keys at once.
    assert_eq!(raw.call(&["MSET", "m:1", "a", "m:2", "b", "m:1", "c"]), "+OK\r\n");
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["m:1", "m:2", "m:3"])
        .query(&mut c)
        .expect("MGET");
    assert_eq!(values, vec![Some("c".into()), Some("b".into()), None]);
    // More keys than one multi-key read takes: read in groups, answered in order.
    let many: Vec<String> = (0..40).map(|i| format!("m:{}", i % 4)).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&many).query(&mut c).expect("MGET");
    let expected: Vec<Option<String>> = (0..40)
        .map(|i| match i % 4 {
            1 => Some("c".into()),
            2 => Some("b".into()),
            _ => None,
        })
        .collect();
    assert_eq!(values, expected);
    assert_eq!(raw.call(&["MSETNX", "m:2", "x", "m:9", "y"]), ":0\r\n");
    assert_eq!(raw.call(&["EXISTS", "m:9"]), ":0\r\n", "MSETNX is all or nothing");
    assert_eq!(raw.call(&["EXISTS", "m:1", "m:1", "m:3"]), ":2\r\n");
    assert_eq!(raw.call(&["DEL", "m:1", "m:2", "m:3"]), ":2\r\n");
    assert_eq!(raw.call(&["UNLINK", "m:1"]), ":0\r\n");

    // Counters, strings.
    assert_eq!(raw.call(&["INCR", "n"]), ":1\r\n");
    assert_eq!(raw.call(&["INCRBY", "n", "41"]), ":42\r\n");
    assert_eq!(raw.call(&["DECRBY", "n", "2"]), ":40\r\n");
    assert_eq!(raw.call(&["DECR", "n"]), ":39\r\n");
    assert_eq!(raw.call(&["INCRBYFLOAT", "n", "0.5"]), "$4\r\n39.5\r\n");
    assert_eq!(
        raw.call(&["INCR", "n"]),
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(raw.call(&["SET", "big", "9223372036854775807"]), "+OK\r\n");
    assert_eq!(
        raw.call(&["INCR", "big"]),
        "-ERR increment or decrement would overflow\r\n"
    );
    assert_eq!(raw.call(&["APPEND", "s:b", "yz"]), ":3\r\n");
    assert_eq!(raw.call(&["STRLEN", "s:b"]), ":3\r\n");
    assert_eq!(raw.call(&["GETDEL", "s:b"]), "$3\r\nxyz\r\n");
    assert_eq!(raw.call(&["GETDEL", "s:b"]), "$-1\r\n");
    assert_eq!(raw.call(&["GETEX", "s:a", "PX", "60000"]), "$1\r\n2\r\n");
    assert_eq!(raw.call(&["TYPE", "s:a"]), "+string\r\n");
    assert_eq!(raw.call(&["TYPE", "s:b"]), "+none\r\n");

    // Walking the keyspace.
    for i in 0..25 {
        assert_eq!(raw.call(&["SET", &format!("walk:{i:02}"), "v"]), "+OK\r\n");
    }
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("walk:1*").query(&mut c).expect("KEYS");
    keys.sort();
    assert_eq!(keys, (10..20).map(|i| format!("walk:{i}")).collect::<Vec<_>>());
    let mut scanned: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg("walk:*")
        .arg("COUNT")
        .arg(7)
        .clone()
        .iter(&mut c)
        .expect("SCAN")
        .collect();
    scanned.sort();
    assert_eq!(scanned, (0..25).map(|i| format!("walk:{i:02}")).collect::<Vec<_>>());

    // A long pipeline of large SETs (8 MiB, twice a transaction's bound) all apply; a SET the
    // cluster refuses on its own (an empty key) fails alone, not the SETs around it.
    let big = "v".repeat(200 * 1024);
    let mut pipe = redis::pipe();
    for i in 0..40 {
        pipe.cmd("SET").arg(format!("big:{i}")).arg(&big);
    }
    let answers: Vec<redis::Value> = pipe.query(&mut c).expect("pipelined large SETs");
    assert!(answers.iter().all(|a| *a == redis::Value::Okay), "{answers:?}");
    let length: i64 = redis::cmd("STRLEN").arg("big:39").query(&mut c).expect("STRLEN");
    assert_eq!(length, 200 * 1024);
    // GETs of one key in a row take one read; their 8 MiB of replies still arrive whole.
    let mut pipe = redis::pipe();
    for _ in 0..40 {
        pipe.cmd("GET").arg("big:39");
    }
    let values: Vec<Vec<u8>> = pipe.query(&mut c).expect("pipelined large GETs");
    assert!(values.len() == 40 && values.iter().all(|v| v.len() == 200 * 1024));
    raw.send(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$0\r\n\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$1\r\ny\r\n$1\r\n2\r\n");
    assert_eq!(raw.reply(), "+OK\r\n");
    assert!(raw.reply().starts_with("-ERR empty keys are not supported"));
    assert_eq!(raw.reply(), "+OK\r\n");
    assert_eq!(raw.call(&["MGET", "x", "y"]), "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    // So does a SET with a time to live past the cluster's 365 days, found only there.
    raw.send(b"*3\r\n$3\r\nSET\r\n$2\r\nt1\r\n$1\r\n1\r\n*5\r\n$3\r\nSET\r\n$2\r\nt2\r\n$1\r\n2\r\n$2\r\nEX\r\n$8\r\n40000000\r\n*3\r\n$3\r\nSET\r\n$2\r\nt3\r\n$1\r\n3\r\n");
    assert_eq!(raw.reply(), "+OK\r\n");
    assert!(raw.reply().starts_with("-ERR"));
    assert_eq!(raw.reply(), "+OK\r\n");
    assert_eq!(raw.call(&["EXISTS", "t1", "t2", "t3"]), ":2\r\n");
    // Transaction bounds, named before anything is sent.
    let many: Vec<String> = (0..65).map(|i| format!("w:{i}")).collect();
    let mut watch = vec!["WATCH"];
    watch.extend(many.iter().map(String::as_str));
    assert!(raw.call(&watch).starts_with("-ERR at most 64 keys may be watched"));
    let mut msetnx = vec!["MSETNX"];
    for key in &many {
        msetnx.extend([key.as_str(), "v"]);
    }
    assert!(raw.call(&msetnx).starts_with("-ERR at most 64 keys per MSETNX"));

    // Connection commands and Redis's errors, byte for byte.
    assert_eq!(raw.call(&["PING"]), "+PONG\r\n");
    assert_eq!(raw.call(&["ECHO", "hi"]), "$2\r\nhi\r\n");
    assert_eq!(raw.call(&["SELECT", "0"]), "+OK\r\n");
    assert_eq!(raw.call(&["SELECT", "1"]), "-ERR DB index is out of range\r\n");
    assert_eq!(raw.call(&["CLIENT", "SETNAME", "worker-1"]), "+OK\r\n");
    assert_eq!(raw.call(&["CLIENT", "GETNAME"]), "$8\r\nworker-1\r\n");
    assert_eq!(
        raw.call(&["FOO", "bar"]),
        "-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n"
    );
    assert_eq!(
        raw.call(&["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(raw.call(&["SET", "k", "v", "NX", "XX"]), "-ERR syntax error\r\n");
    assert!(raw
        .call(&["FLUSHDB"])
        .starts_with("-ERR FLUSHDB and FLUSHALL are refused"));
    let info: String = redis::cmd("INFO").arg("replication").query(&mut c).expect("INFO");
    assert!(info.contains("role:slave"), "{info}");
    let leader_info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connect(cluster.resp(node % 3 + 1)))
        .expect("INFO");
    assert!(leader_info.contains("redis_version:7.2.0"), "{leader_info}");

    // RESP3 after HELLO 3: maps and nulls in RESP3's own types.
    assert!(raw.call(&["HELLO", "3"]).starts_with("%7\r\n"));
    assert_eq!(raw.call(&["GET", "s:none"]), "_\r\n");
    assert_eq!(raw.call(&["HELLO", "4"]), "-NOPROTO unsupported protocol version\r\n");

    // Pipelining: replies in order, a GET sees the SET before it.
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("SET").arg(format!("p:{i}")).arg(i).ignore();
        pipe.cmd("SET").arg("p:same").arg(i).ignore();
        pipe.cmd("GET").arg(format!("p:{i}"));
    }
    pipe.cmd("GET").arg("p:same");
    let got: Vec<i64> = pipe.query(&mut c).expect("pipeline");
    let mut expected: Vec<i64> = (0..50).collect();
    expected.push(49);
    assert_eq!(got, expected);

    // A protocol error is answered and closes the connection, as Redis does.
    let mut broken = Raw::open(cluster.resp(node));
    broken.send(b"*1\r\n$-5\r\n");
    assert_eq!(broken.reply(), "-ERR Protocol error: invalid bulk length\r\n");
    assert!(broken.closed());
    let mut oversized = Raw::open(cluster.resp(node));
    oversized.send(format!("*2\r\n$3\r\nGET\r\n${}\r\n", 64 * 1024 * 1024).as_bytes());
    assert_eq!(oversized.reply(), "-ERR Protocol error: invalid bulk length\r\n");
}

#[test]
fn resp_sdk_and_cli_read_each_others_keys_and_multi_exec_is_one_transaction() {
    let cluster = resp_cluster(&[]);
    let mut c = connect(cluster.resp(1));
    let mut raw = Raw::open(cluster.resp(2));
    runtime().block_on(async {
        let client = cluster.client().await;
        redis::cmd("SET")
            .arg("shared:resp")
            .arg("from redis")
            .exec(&mut c)
            .expect("SET");
        let entry = client.kv().get("shared:resp").await.expect("SDK get").expect("present");
        assert_eq!(entry.value, b"from redis");
        client.kv().put("shared:sdk", "from the SDK").await.expect("SDK put");
        let value: String = redis::cmd("GET").arg("shared:sdk").query(&mut c).expect("GET");
        assert_eq!(value, "from the SDK");
        let cli = run_cli(NODE, &cluster.endpoints(), &["kv", "get", "shared:resp"], None).await;
        assert!(cli.stdout.contains("from redis"), "{cli:?}");
    });

    // MULTI / EXEC: queued, then applied whole; the reads see the block's own writes.
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(raw.call(&["SET", "tx:a", "1"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["GET", "tx:a"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["EXISTS", "shared:resp", "tx:none"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["DEL", "shared:sdk"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["EXEC"]), "*4\r\n+OK\r\n$1\r\n1\r\n:1\r\n:1\r\n");
    assert_eq!(raw.call(&["EXISTS", "shared:sdk"]), ":0\r\n");
    // Commands that compute from what they read run in a block too, in order, each seeing the
    // earlier ones' writes; one command's error is its reply and the rest apply.
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    for args in [
        &["INCR", "tx:n"][..],
        &["INCRBY", "tx:n", "9"],
        &["HSET", "tx:h", "f", "v"],
        &["INCR", "tx:h"],
        &["ZADD", "tx:z", "1", "m"],
        &["PEXPIRE", "tx:z", "60000"],
        &["ZCARD", "tx:z"],
        &["GETDEL", "tx:n"],
    ] {
        assert_eq!(raw.call(args), "+QUEUED\r\n", "{args:?}");
    }
    assert_eq!(
        raw.call(&["EXEC"]),
        "*8\r\n:1\r\n:10\r\n:1\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:1\r\n:1\r\n:1\r\n$2\r\n10\r\n"
    );
    assert_eq!(raw.call(&["EXISTS", "tx:n", "tx:h", "tx:z"]), ":2\r\n");
    // A command that is not of keys cannot be queued: the block is discarded.
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert!(raw
        .call(&["SCAN", "0"])
        .starts_with("-ERR SCAN cannot be queued in MULTI"));
    assert_eq!(
        raw.call(&["EXEC"]),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // A queueing error discards the block; nothing of it applies.
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(raw.call(&["SET", "tx:b", "1"]), "+QUEUED\r\n");
    assert_eq!(
        raw.call(&["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        raw.call(&["EXEC"]),
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(raw.call(&["EXISTS", "tx:b"]), ":0\r\n");
    assert_eq!(raw.call(&["EXEC"]), "-ERR EXEC without MULTI\r\n");
    // WATCH: another client's write in between aborts the block (a null array).
    assert_eq!(raw.call(&["WATCH", "tx:a"]), "+OK\r\n");
    redis::cmd("SET").arg("tx:a").arg("changed").exec(&mut c).expect("SET");
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(raw.call(&["SET", "tx:a", "mine"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["EXEC"]), "*-1\r\n");
    assert_eq!(raw.call(&["GET", "tx:a"]), "$7\r\nchanged\r\n");
    // A block with nothing to write still obeys its watches.
    assert_eq!(raw.call(&["WATCH", "tx:a"]), "+OK\r\n");
    redis::cmd("SET").arg("tx:a").arg("again").exec(&mut c).expect("SET");
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(raw.call(&["PING"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["EXEC"]), "*-1\r\n");
    // Without a write in between, the block applies.
    assert_eq!(raw.call(&["WATCH", "tx:a", "tx:absent"]), "+OK\r\n");
    assert_eq!(raw.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(raw.call(&["SET", "tx:a", "mine"]), "+QUEUED\r\n");
    assert_eq!(raw.call(&["EXEC"]), "*1\r\n+OK\r\n");
    assert_eq!(raw.call(&["GET", "tx:a"]), "$4\r\nmine\r\n");

    // Blocks from many connections at once are each atomic: every block increments both keys,
    // so each EXEC sees them equal, and none is lost.
    let threads: Vec<_> = (0..6u16)
        .map(|i| {
            let addr = cluster.resp(1 + u64::from(i % 3));
            std::thread::spawn(move || {
                let mut c = connect(addr);
                for _ in 0..10 {
                    let (counter, field): (i64, i64) = redis::pipe()
                        .atomic()
                        .cmd("INCR")
                        .arg("tx:both")
                        .cmd("HINCRBY")
                        .arg("tx:both:h")
                        .arg("n")
                        .arg(1)
                        .query(&mut c)
                        .expect("a MULTI block");
                    assert_eq!(counter, field, "a block saw another block half applied");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a connection's thread");
    }
    assert_eq!(raw.call(&["GET", "tx:both"]), "$2\r\n60\r\n");
    assert_eq!(raw.call(&["HGET", "tx:both:h", "n"]), "$2\r\n60\r\n");

    // A block over more keys than one read takes (20: read in two groups) still sees them at
    // one instant: writers increment all 20 in each block, readers find them equal.
    let names: Vec<String> = (0..20).map(|i| format!("tx:wide:{i:02}")).collect();
    let threads: Vec<_> = (0..4u16)
        .map(|i| {
            let addr = cluster.resp(1 + u64::from(i % 3));
            let names = names.clone();
            std::thread::spawn(move || {
                let mut c = connect(addr);
                for _ in 0..8 {
                    let mut block = redis::pipe();
                    block.atomic();
                    if i % 2 == 0 {
                        for name in &names {
                            block.cmd("INCR").arg(name).ignore();
                        }
                        block.cmd("PING");
                        let _: (String,) = block.query(&mut c).expect("a writing block");
                    } else {
                        block.cmd("MGET").arg(&names);
                        let (values,): (Vec<Option<i64>>,) = block.query(&mut c).expect("a reading block");
                        let first = values[0];
                        assert!(
                            values.iter().all(|v| *v == first),
                            "a block saw another half applied: {values:?}"
                        );
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a connection's thread");
    }
    assert_eq!(raw.call(&["GET", "tx:wide:19"]), "$2\r\n16\r\n");
}

/// Many connections on every node increment one key at once: every increment is counted once,
/// and every client gets a distinct value, as from Redis running them one by one. Then the
/// leader is killed: nothing acknowledged is lost.
#[test]
fn concurrent_increments_of_one_key_are_each_counted_once_across_a_leader_kill() {
    let mut cluster = resp_cluster(&[]);
    const THREADS: u64 = 9;
    const EACH: u64 = 150;
    let addrs: Vec<SocketAddr> = (1..=3).map(|id| cluster.resp(id)).collect();
    for addr in &addrs {
        drop(connect(*addr));
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let addr = addrs[(t % 3) as usize];
            std::thread::spawn(move || {
                let mut c = connect(addr);
                (0..EACH)
                    .map(|_| redis::cmd("INCR").arg("hot").query::<i64>(&mut c).expect("INCR"))
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut all: Vec<i64> = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=(THREADS * EACH) as i64).collect::<Vec<_>>(),
        "every value once"
    );

    let leader = runtime().block_on(async {
        let client = cluster.client().await;
        cluster.leader(&client).await
    });
    cluster.kill(leader);
    let survivor = (1..=3).find(|id| *id != leader).expect("a survivor");
    let mut c = connect(cluster.resp(survivor));
    let value: i64 = redis::cmd("GET").arg("hot").query(&mut c).expect("GET after the kill");
    assert_eq!(value, (THREADS * EACH) as i64);
    assert_eq!(
        redis::cmd("INCR").arg("hot").query::<i64>(&mut c).expect("INCR"),
        value + 1
    );
}

/// The Raft index the RESP node has applied (`INFO replication`).
fn applied_index(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("replication").query(c).expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix("basalt_applied_index:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("basalt_applied_index in INFO replication")
}

/// A pipeline's writes of one key in a row are one group: each answered as if run one by one
/// (an increment past a refused one, a hash write to a string refused in its place), and the
/// pipeline of a hundred increments costs a few log entries, not a hundred. Writes of other
/// keys between them keep their places.
#[test]
fn a_pipeline_of_writes_of_one_key_is_one_group_answered_in_order() {
    let cluster = resp_cluster(&[]);
    let mut c = connect(cluster.resp(1));
    let _: () = redis::cmd("SET").arg("n").arg("10").query(&mut c).expect("SET");
    let before = applied_index(&mut c);
    let mut pipe = redis::pipe();
    for _ in 0..100 {
        pipe.cmd("INCR").arg("n");
    }
    let values: Vec<i64> = pipe.query(&mut c).expect("pipelined INCRs");
    assert_eq!(values, (11..=110).collect::<Vec<i64>>());
    let entries = applied_index(&mut c) - before;
    assert!(
        entries < 20,
        "100 pipelined INCRs of one key took {entries} log entries"
    );

    let mut raw = Raw::open(cluster.resp(1));
    let mut batch = Vec::new();
    for args in [
        vec!["INCRBY", "n", "5"],
        vec!["INCRBY", "n", "9223372036854775807"],
        vec!["HSET", "n", "f", "v"],
        vec!["APPEND", "n", "0"],
        vec!["INCR", "other"],
        vec!["INCRBYFLOAT", "n", "0.5"],
        vec!["INCR", "n"],
    ] {
        batch.extend(format!("*{}\r\n", args.len()).into_bytes());
        for arg in args {
            batch.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
        }
    }
    raw.send(&batch);
    let replies: Vec<String> = (0..7).map(|_| raw.reply()).collect();
    assert_eq!(
        replies,
        vec![
            ":115\r\n".to_string(),
            "-ERR increment or decrement would overflow\r\n".to_string(),
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n".to_string(),
            ":4\r\n".to_string(),
            ":1\r\n".to_string(),
            "$6\r\n1150.5\r\n".to_string(),
            "-ERR value is not an integer or out of range\r\n".to_string(),
        ]
    );
    let value: String = redis::cmd("GET").arg("n").query(&mut c).expect("GET");
    assert_eq!(value, "1150.5");
}

#[test]
fn auth_is_required_when_a_password_is_set() {
    let cluster = resp_cluster(&["--resp-password", "s3cret", "--resp-allow-flush"]);
    let mut raw = Raw::open(cluster.resp(1));
    for _ in 0..100 {
        if raw.call(&["PING"]) == "-NOAUTH Authentication required.\r\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(raw.call(&["GET", "k"]), "-NOAUTH Authentication required.\r\n");
    // Before AUTH, requests are held to Redis's small limits: a stranger cannot make the node
    // buffer or parse much.
    let mut stranger = Raw::open(cluster.resp(1));
    stranger.send(b"*11\r\n");
    assert_eq!(
        stranger.reply(),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert!(stranger.closed());
    assert_eq!(
        raw.call(&["AUTH", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        raw.call(&["AUTH", "someone", "s3cret"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(raw.call(&["AUTH", "s3cret"]), "+OK\r\n");
    assert_eq!(raw.call(&["SET", "k", "v"]), "+OK\r\n");
    let mut hello = Raw::open(cluster.resp(2));
    assert!(hello.call(&["HELLO", "3"]).starts_with("-NOAUTH HELLO must be called"));
    assert!(hello
        .call(&["HELLO", "3", "AUTH", "default", "s3cret"])
        .starts_with("%7\r\n"));
    assert_eq!(hello.call(&["GET", "k"]), "$1\r\nv\r\n");
    let client = redis::Client::open(format!("redis://:s3cret@{}/", cluster.resp(3))).expect("client");
    let mut c = client.get_connection().expect("connect with a password");
    assert_eq!(redis::cmd("GET").arg("k").query::<String>(&mut c).expect("GET"), "v");
    // A dev node (--resp-allow-flush) empties its cluster on FLUSHDB, streams included.
    assert!(raw.call(&["XADD", "events", "*", "a", "1"]).starts_with('$'));
    assert_eq!(raw.call(&["DBSIZE"]), ":2\r\n");
    assert_eq!(raw.call(&["FLUSHALL"]), "+OK\r\n");
    assert_eq!(raw.call(&["DBSIZE"]), ":0\r\n");
    assert_eq!(raw.call(&["XLEN", "events"]), ":0\r\n");
}

fn tool(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.is_file())
}

/// The tools of Debian's `redis-tools` against a node, when the machine has them.
#[test]
fn redis_cli_and_redis_benchmark_work_against_a_node() {
    let (Some(cli), Some(bench)) = (tool("redis-cli"), tool("redis-benchmark")) else {
        eprintln!("redis-cli or redis-benchmark not installed (Debian redis-tools): skipped");
        return;
    };
    let cluster = resp_cluster(&[]);
    let port = cluster.resp(1).port().to_string();
    drop(connect(cluster.resp(1)));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli)
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["SET", "tool", "works"]), "OK");
    assert_eq!(run(&["GET", "tool"]), "works");
    assert_eq!(run(&["INCRBY", "tool:n", "5"]), "5");
    let out = std::process::Command::new(&bench)
        .args(["-p", &port, "-t", "set,get,incr", "-c", "10", "-n", "2000", "-q"])
        .output()
        .expect("redis-benchmark");
    assert!(out.status.success(), "{out:?}");
    // Every INCR of the benchmark counted: its key is `counter:__rand_int__` without -r.
    assert_eq!(run(&["GET", "counter:__rand_int__"]), "2000");
    assert_eq!(
        run(&["STRLEN", "key:__rand_int__"]),
        "3",
        "the benchmark's 3-byte value"
    );
}

/// Pub/sub across nodes: a RESP2 subscriber, a RESP3 pattern subscriber and a publisher, each
/// on a different node.
#[test]
fn pubsub_reaches_subscribers_on_every_node_in_resp2_and_resp3() {
    let cluster = resp_cluster(&[]);
    let mut sub = Raw::open(cluster.resp(1));
    let mut psub = Raw::open(cluster.resp(2));
    let mut publisher = Raw::open(cluster.resp(3));
    // Wait for the cluster to serve (a subscription is taken at the node, which needs none, but
    // PUBLISH needs a leader).
    for _ in 0..100 {
        if publisher.call(&["SET", "ready", "1"]) == "+OK\r\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    sub.send(b"*3\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n$6\r\nalerts\r\n");
    assert_eq!(sub.reply(), "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    assert_eq!(sub.reply(), "*3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:2\r\n");
    assert!(psub.call(&["HELLO", "3"]).starts_with("%7\r\n"));
    assert_eq!(
        psub.call(&["PSUBSCRIBE", "news.*"]),
        ">3\r\n$10\r\npsubscribe\r\n$6\r\nnews.*\r\n:1\r\n"
    );

    assert_eq!(publisher.call(&["PUBLISH", "news", "hello"]), ":1\r\n");
    assert_eq!(sub.reply(), "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    assert_eq!(publisher.call(&["PUBLISH", "news.eu", "hi"]), ":1\r\n");
    assert_eq!(
        psub.reply(),
        ">4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n$7\r\nnews.eu\r\n$2\r\nhi\r\n"
    );
    assert_eq!(publisher.call(&["PUBLISH", "nobody", "x"]), ":0\r\n");
    // One command may name at most 1,024 channels.
    let many: Vec<String> = (0..1025).map(|i| format!("c{i}")).collect();
    let mut subscribe_many = vec!["SUBSCRIBE"];
    subscribe_many.extend(many.iter().map(String::as_str));
    assert!(psub.call(&subscribe_many).starts_with("-ERR at most 1024 channels"));

    // A RESP2 subscriber may only change its subscriptions (and PING); RESP3 may do anything.
    assert_eq!(
        sub.call(&["GET", "ready"]),
        "-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
    );
    assert_eq!(sub.call(&["PING"]), "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(psub.call(&["GET", "ready"]), "$1\r\n1\r\n");

    // Pipelined SETs on a subscribed RESP2 connection are refused like any other command.
    sub.send(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n1\r\n");
    assert!(sub.reply().starts_with("-ERR Can't execute 'set'"));
    assert!(sub.reply().starts_with("-ERR Can't execute 'set'"));

    // Unsubscribing while messages flow: once both confirmations are read, no stray message
    // may follow (a RESP2 client would read it as its next reply).
    let flood_addr = cluster.resp(3);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_stop = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut flooder = Raw::open(flood_addr);
        while !flood_stop.load(std::sync::atomic::Ordering::Relaxed) {
            flooder.call(&["PUBLISH", "news", "flood"]);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    sub.send(b"*1\r\n$11\r\nUNSUBSCRIBE\r\n");
    let mut left = Vec::new();
    while left.len() < 2 {
        let reply = sub.reply();
        if reply.contains("unsubscribe") {
            left.push(reply);
        } else {
            assert_eq!(reply, "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nflood\r\n");
        }
    }
    assert_eq!(
        sub.call(&["GET", "ready"]),
        "$1\r\n1\r\n",
        "no message after the unsubscribe"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().expect("flooder");
    left.sort();
    assert_eq!(
        left,
        vec![
            "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n".to_string(),
            "*3\r\n$11\r\nunsubscribe\r\n$6\r\nalerts\r\n:1\r\n".to_string(),
        ]
    );
    assert_eq!(publisher.call(&["PUBLISH", "news", "gone"]), ":0\r\n");
}

/// Hashes and sorted sets: Redis's replies and errors, one type per key (`WRONGTYPE` both
/// ways, `SET` replacing any type), the key-wide commands on every type, RESP3's shapes, SDK
/// interop, and atomic field changes from many connections.
#[test]
fn hashes_and_sorted_sets_answer_as_redis_does() {
    let cluster = resp_cluster(&[]);
    let mut c = connect(cluster.resp(follower(&cluster)));
    let mut raw = Raw::open(cluster.resp(1));

    // Hashes.
    assert_eq!(raw.call(&["HSET", "h:user", "name", "ann", "age", "30"]), ":2\r\n");
    assert_eq!(raw.call(&["HSET", "h:user", "name", "bea", "city", "oslo"]), ":1\r\n");
    assert_eq!(raw.call(&["HGET", "h:user", "name"]), "$3\r\nbea\r\n");
    assert_eq!(raw.call(&["HGET", "h:user", "none"]), "$-1\r\n");
    assert_eq!(raw.call(&["HGET", "h:none", "f"]), "$-1\r\n");
    assert_eq!(
        raw.call(&["HMGET", "h:user", "age", "none", "city"]),
        "*3\r\n$2\r\n30\r\n$-1\r\n$4\r\noslo\r\n"
    );
    let all: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("h:user").query(&mut c).expect("HGETALL");
    assert_eq!(all.len(), 3);
    assert_eq!(all["city"], "oslo");
    assert_eq!(raw.call(&["HINCRBY", "h:user", "age", "5"]), ":35\r\n");
    assert_eq!(
        raw.call(&["HINCRBY", "h:user", "name", "1"]),
        "-ERR hash value is not an integer\r\n"
    );
    assert_eq!(raw.call(&["HINCRBYFLOAT", "h:user", "score", "1.5"]), "$3\r\n1.5\r\n");
    assert_eq!(raw.call(&["HEXISTS", "h:user", "city"]), ":1\r\n");
    assert_eq!(raw.call(&["HLEN", "h:user"]), ":4\r\n");
    assert_eq!(raw.call(&["HSTRLEN", "h:user", "city"]), ":4\r\n");
    assert_eq!(raw.call(&["HSETNX", "h:user", "city", "rome"]), ":0\r\n");
    assert_eq!(raw.call(&["HMSET", "h:user", "a", "1"]), "+OK\r\n");
    assert_eq!(raw.call(&["HKEYS", "h:small"]), "*0\r\n");
    assert_eq!(
        raw.call(&["HSET", "h:user", "odd"]),
        "-ERR wrong number of arguments for 'hset' command\r\n"
    );
    assert_eq!(raw.call(&["HDEL", "h:user", "a", "score", "none"]), ":2\r\n");
    assert_eq!(raw.call(&["TYPE", "h:user"]), "+hash\r\n");
    // A hash left without fields is gone.
    assert_eq!(raw.call(&["HSET", "h:one", "f", "v"]), ":1\r\n");
    assert_eq!(raw.call(&["HDEL", "h:one", "f"]), ":1\r\n");
    assert_eq!(raw.call(&["EXISTS", "h:one"]), ":0\r\n");

    // One type per key.
    let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    assert_eq!(raw.call(&["SET", "w:s", "text"]), "+OK\r\n");
    for args in [
        &["HSET", "w:s", "f", "v"][..],
        &["HGET", "w:s", "f"],
        &["ZADD", "w:s", "1", "m"],
        &["ZCARD", "w:s"],
        &["GET", "h:user"],
        &["INCR", "h:user"],
        &["APPEND", "h:user", "x"],
        &["STRLEN", "h:user"],
        &["GETDEL", "h:user"],
        &["SET", "h:user", "x", "GET"],
        &["ZSCORE", "h:user", "m"],
    ] {
        assert_eq!(raw.call(args), wrongtype, "{args:?}");
    }
    assert_eq!(
        raw.call(&["HLEN", "h:user"]),
        ":3\r\n",
        "nothing changed by the refusals"
    );
    assert_eq!(raw.call(&["MGET", "w:s", "h:user"]), "*2\r\n$4\r\ntext\r\n$-1\r\n");
    // A time to live past the 365 days the cluster keeps a key fails that command alone.
    assert!(raw
        .call(&["EXPIRE", "w:s", "40000000"])
        .starts_with("-ERR a time to live of"));
    assert_eq!(raw.call(&["TTL", "w:s"]), ":-1\r\n");
    // The key-wide commands work on every type; a change of a field keeps the key's TTL.
    assert_eq!(raw.call(&["EXPIRE", "h:user", "100"]), ":1\r\n");
    assert_eq!(raw.call(&["HSET", "h:user", "more", "1"]), ":1\r\n");
    assert_eq!(raw.call(&["TTL", "h:user"]), ":100\r\n");
    let mut hashes: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("TYPE")
            .arg("hash")
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .expect("SCAN");
        hashes.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(hashes, vec!["h:user".to_string()]);
    // SET replaces any type, whole.
    assert_eq!(raw.call(&["SET", "h:user", "plain"]), "+OK\r\n");
    assert_eq!(raw.call(&["TYPE", "h:user"]), "+string\r\n");
    assert_eq!(raw.call(&["TTL", "h:user"]), ":-1\r\n");
    // No string may look like another type.
    let mut reserved = b"*3\r\n$3\r\nSET\r\n$5\r\nw:bad\r\n$20\r\n".to_vec();
    reserved.extend_from_slice(basalt_resp::typed::TYPE_MARKER);
    reserved.extend_from_slice(b"\x01abc\r\n");
    raw.send(&reserved);
    assert!(raw
        .reply()
        .starts_with("-ERR the value begins with Basalt's reserved type marker"));
    assert_eq!(raw.call(&["EXISTS", "w:bad"]), ":0\r\n");

    // Sorted sets: a sliding-window limiter's round, pipelined as clients send it.
    let (removed, added, count, _): (i64, i64, i64, i64) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg("z:win")
        .arg("-inf")
        .arg("(1000")
        .cmd("ZADD")
        .arg("z:win")
        .arg(1500)
        .arg("req-1")
        .cmd("ZCARD")
        .arg("z:win")
        .cmd("PEXPIRE")
        .arg("z:win")
        .arg(60_000)
        .query(&mut c)
        .expect("a limiter round");
    assert_eq!((removed, added, count), (0, 1, 1));
    assert_eq!(
        raw.call(&["ZADD", "z:win", "900", "old", "1200", "req-0", "2000", "req-2"]),
        ":3\r\n"
    );
    assert_eq!(raw.call(&["ZREMRANGEBYSCORE", "z:win", "-inf", "(1000"]), ":1\r\n");
    assert_eq!(raw.call(&["ZCARD", "z:win"]), ":3\r\n");
    assert_eq!(raw.call(&["ZCOUNT", "z:win", "(1200", "+inf"]), ":2\r\n");
    assert_eq!(
        raw.call(&["ZCOUNT", "z:win", "x", "1"]),
        "-ERR min or max is not a float\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGE", "z:win", "0", "-1", "WITHSCORES"]),
        "*6\r\n$5\r\nreq-0\r\n$4\r\n1200\r\n$5\r\nreq-1\r\n$4\r\n1500\r\n$5\r\nreq-2\r\n$4\r\n2000\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGE", "z:win", "(1200", "+inf", "BYSCORE", "LIMIT", "1", "5"]),
        "*1\r\n$5\r\nreq-2\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGE", "z:win", "+inf", "-inf", "BYSCORE", "REV", "LIMIT", "0", "2"]),
        "*2\r\n$5\r\nreq-2\r\n$5\r\nreq-1\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGEBYSCORE", "z:win", "1500", "1500"]),
        "*1\r\n$5\r\nreq-1\r\n"
    );
    assert_eq!(
        raw.call(&["ZREVRANGEBYSCORE", "z:win", "1500", "-inf"]),
        "*2\r\n$5\r\nreq-1\r\n$5\r\nreq-0\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGE", "z:win", "0", "1", "REV"]),
        "*2\r\n$5\r\nreq-2\r\n$5\r\nreq-1\r\n"
    );
    assert_eq!(
        raw.call(&["ZRANGE", "z:win", "0", "1", "LIMIT", "0", "1"]),
        "-ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX\r\n"
    );
    assert_eq!(raw.call(&["ZSCORE", "z:win", "req-1"]), "$4\r\n1500\r\n");
    assert_eq!(raw.call(&["ZSCORE", "z:win", "none"]), "$-1\r\n");
    assert_eq!(raw.call(&["ZINCRBY", "z:win", "0.5", "req-1"]), "$6\r\n1500.5\r\n");
    assert_eq!(raw.call(&["ZADD", "z:win", "NX", "1", "req-1"]), ":0\r\n");
    assert_eq!(
        raw.call(&["ZADD", "z:win", "GT", "CH", "1", "req-1", "3000", "req-2"]),
        ":1\r\n"
    );
    assert_eq!(
        raw.call(&["ZADD", "z:win", "XX", "INCR", "1", "req-2"]),
        "$4\r\n3001\r\n"
    );
    assert_eq!(raw.call(&["ZADD", "z:win", "XX", "INCR", "1", "none"]), "$-1\r\n");
    assert_eq!(
        raw.call(&["ZADD", "z:win", "NX", "XX", "1", "a"]),
        "-ERR XX and NX options at the same time are not compatible\r\n"
    );
    assert_eq!(
        raw.call(&["ZADD", "z:win", "one", "a"]),
        "-ERR value is not a valid float\r\n"
    );
    assert_eq!(raw.call(&["ZREM", "z:win", "req-0", "none"]), ":1\r\n");
    assert_eq!(raw.call(&["TYPE", "z:win"]), "+zset\r\n");
    let pttl: i64 = redis::cmd("PTTL").arg("z:win").query(&mut c).expect("PTTL");
    assert!((50_000..=60_000).contains(&pttl), "the window keeps its expiry: {pttl}");
    assert_eq!(raw.call(&["ZREM", "z:win", "req-1", "req-2"]), ":2\r\n");
    assert_eq!(raw.call(&["EXISTS", "z:win"]), ":0\r\n", "an empty sorted set is gone");

    // RESP3: a hash is a map, scores are doubles in pairs.
    let mut three = Raw::open(cluster.resp(2));
    assert!(three.call(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(three.call(&["HSET", "r3:h", "f", "v"]), ":1\r\n");
    assert_eq!(three.call(&["HGETALL", "r3:h"]), "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(three.call(&["ZADD", "r3:z", "1.5", "m"]), ":1\r\n");
    assert_eq!(
        three.call(&["ZRANGE", "r3:z", "0", "-1", "WITHSCORES"]),
        "*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n"
    );
    assert_eq!(three.call(&["ZSCORE", "r3:z", "m"]), ",1.5\r\n");

    runtime().block_on(async {
        let client = cluster.client().await;
        // The SDK sees the stored hash (marker first) and deletes it like any key.
        let stored = client.kv().get("r3:h").await.expect("SDK get").expect("present");
        assert!(stored.value.starts_with(basalt_resp::typed::TYPE_MARKER));
        assert!(client.kv().delete("r3:h").await.expect("SDK delete").deleted);
    });
    assert_eq!(three.call(&["HLEN", "r3:h"]), ":0\r\n");

    // Field changes from many connections are atomic: none is lost.
    let connections = 6;
    let each = 20;
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let addr = cluster.resp(1 + i % 3);
            std::thread::spawn(move || {
                let mut c = connect(addr);
                for _ in 0..each {
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg("h:hits")
                        .arg("n")
                        .arg(1)
                        .query(&mut c)
                        .expect("HINCRBY");
                    let _: i64 = redis::cmd("ZINCRBY")
                        .arg("z:hits")
                        .arg(1)
                        .arg("n")
                        .query(&mut c)
                        .map(|s: f64| s as i64)
                        .expect("ZINCRBY");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a connection's thread");
    }
    let total = (connections * each).to_string();
    assert_eq!(
        raw.call(&["HGET", "h:hits", "n"]),
        format!("${}\r\n{total}\r\n", total.len())
    );
    assert_eq!(
        raw.call(&["ZSCORE", "z:hits", "n"]),
        format!("${}\r\n{total}\r\n", total.len())
    );
}

/// Every name a full `SCAN` with `options` lists, page by page from cursor 0 (at most 1,000
/// pages: a scan that does not end fails the test).
fn scan_all(raw: &mut Raw, options: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut names = Vec::new();
    for _ in 0..1000 {
        let args: Vec<&str> = ["SCAN", cursor.as_str()]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let reply = raw.call(&args);
        // `*2 $n cursor *k $len name $len name ...`
        let parts: Vec<&str> = reply.split("\r\n").collect();
        cursor = parts[2].to_string();
        names.extend(
            parts
                .iter()
                .skip(5)
                .step_by(2)
                .filter(|p| !p.is_empty())
                .map(|p| p.to_string()),
        );
        if cursor == "0" {
            return names;
        }
    }
    panic!("SCAN {options:?} did not end in 1,000 pages");
}

/// `[id, [field, value ...]]` as RESP2 bytes.
fn entry_bytes(id: &str, fields: &[&str]) -> String {
    let mut out = format!("*2\r\n${}\r\n{id}\r\n*{}\r\n", id.len(), fields.len());
    for field in fields {
        out.push_str(&format!("${}\r\n{field}\r\n", field.len()));
    }
    out
}

/// The id in a bulk reply (`$N\r\nID\r\n`).
fn bulk_text(reply: &str) -> String {
    reply.split("\r\n").nth(1).expect("a bulk string").to_string()
}

/// The ids in an `XREADGROUP` / `XREAD` reply of one stream, in order.
fn ids_in(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .filter(|part| part.contains('-') && part.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn streams_answer_as_redis_does_and_are_basalt_topics() {
    let cluster = resp_cluster(&[]);
    let mut raw = Raw::open(cluster.resp(follower(&cluster)));
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;

    // XADD: ids are stamp-offset, growing.
    let first = bulk_text(&raw.call(&["XADD", "s:orders", "*", "sku", "a1", "qty", "2"]));
    let second = bulk_text(&raw.call(&["XADD", "s:orders", "*", "sku", "b2"]));
    let (ms, seq) = first.split_once('-').expect("an id");
    let ms: u64 = ms.parse().expect("ms");
    assert!(
        ms + 60_000 > before_ms && ms < before_ms + 60_000,
        "{first} near {before_ms}"
    );
    assert_eq!(seq, "0", "the first record's offset");
    assert!(second.ends_with("-1"), "{second}");
    assert_eq!(raw.call(&["XLEN", "s:orders"]), ":2\r\n");
    assert_eq!(raw.call(&["XLEN", "s:none"]), ":0\r\n");
    assert_eq!(raw.call(&["TYPE", "s:orders"]), "+stream\r\n");
    assert_eq!(raw.call(&["EXISTS", "s:orders", "s:none"]), ":1\r\n");

    // XRANGE / XREVRANGE, with exclusive ends, COUNT and ids of milliseconds alone.
    let e1 = entry_bytes(&first, &["sku", "a1", "qty", "2"]);
    let e2 = entry_bytes(&second, &["sku", "b2"]);
    assert_eq!(raw.call(&["XRANGE", "s:orders", "-", "+"]), format!("*2\r\n{e1}{e2}"));
    assert_eq!(
        raw.call(&["XREVRANGE", "s:orders", "+", "-", "COUNT", "1"]),
        format!("*1\r\n{e2}")
    );
    assert_eq!(
        raw.call(&["XRANGE", "s:orders", &format!("({first}"), "+"]),
        format!("*1\r\n{e2}")
    );
    assert_eq!(raw.call(&["XRANGE", "s:orders", "-", &first]), format!("*1\r\n{e1}"));
    assert_eq!(
        raw.call(&["XRANGE", "s:orders", &ms.to_string(), &ms.to_string(), "COUNT", "1"]),
        format!("*1\r\n{e1}")
    );
    assert_eq!(raw.call(&["XRANGE", "s:orders", "0", &(ms - 1).to_string()]), "*0\r\n");
    assert_eq!(raw.call(&["XRANGE", "s:none", "-", "+"]), "*0\r\n");

    // XREAD: after an id; nothing after the last is a null array.
    assert_eq!(
        raw.call(&["XREAD", "STREAMS", "s:orders", "0"]),
        format!("*1\r\n*2\r\n$8\r\ns:orders\r\n*2\r\n{e1}{e2}")
    );
    assert_eq!(
        raw.call(&["XREAD", "COUNT", "1", "STREAMS", "s:orders", &first]),
        format!("*1\r\n*2\r\n$8\r\ns:orders\r\n*1\r\n{e2}")
    );
    assert_eq!(raw.call(&["XREAD", "STREAMS", "s:orders", &second]), "*-1\r\n");
    assert_eq!(
        raw.call(&["XREAD", "BLOCK", "200", "STREAMS", "s:orders", "$"]),
        "*-1\r\n"
    );

    // XREAD BLOCK wakes for an entry added by another client on another node, and for a
    // stream that did not exist when it started waiting.
    for stream in ["s:orders", "s:later"] {
        let addr = cluster.resp(1);
        let stream_name = stream.to_string();
        let adder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            Raw::open(addr).call(&["XADD", &stream_name, "*", "late", "1"])
        });
        let woken = raw.call(&["XREAD", "BLOCK", "20000", "STREAMS", stream, "$"]);
        let added = bulk_text(&adder.join().expect("adder"));
        assert_eq!(
            woken,
            format!(
                "*1\r\n*2\r\n${}\r\n{stream}\r\n*1\r\n{}",
                stream.len(),
                entry_bytes(&added, &["late", "1"])
            ),
        );
    }

    // A blocking read first writes the replies pipelined before it, and commands pipelined
    // while it waits run after it, in order.
    raw.send(b"*3\r\n$3\r\nSET\r\n$7\r\ns:plain\r\n$1\r\nv\r\n*6\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n$1\r\n0\r\n$7\r\nSTREAMS\r\n$8\r\ns:orders\r\n$1\r\n$\r\n");
    assert_eq!(
        raw.reply(),
        "+OK\r\n",
        "the SET's reply is not held back by the blocked XREAD"
    );
    std::thread::sleep(Duration::from_millis(300));
    raw.send(b"*1\r\n$4\r\nPING\r\n");
    std::thread::sleep(Duration::from_millis(300));
    let woke = bulk_text(&Raw::open(cluster.resp(1)).call(&["XADD", "s:orders", "*", "wake", "1"]));
    assert!(raw.reply().contains(&woke), "the XREAD answers the entry added");
    assert_eq!(raw.reply(), "+PONG\r\n", "the PING sent while it waited runs after it");

    // Consumer groups: each entry goes to one consumer, stays pending until acknowledged.
    assert_eq!(raw.call(&["XGROUP", "CREATE", "s:orders", "g", "0"]), "+OK\r\n");
    assert_eq!(
        raw.call(&["XGROUP", "CREATE", "s:orders", "g", "$"]),
        "-BUSYGROUP Consumer Group name already exists\r\n"
    );
    let got = raw.call(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "2",
        "STREAMS",
        "s:orders",
        ">",
    ]);
    assert_eq!(got, format!("*1\r\n*2\r\n$8\r\ns:orders\r\n*2\r\n{e1}{e2}"));
    let third = ids_in(&raw.call(&["XREADGROUP", "GROUP", "g", "c2", "STREAMS", "s:orders", ">"]));
    assert_eq!(third.len(), 2, "the entries added while blocked: {third:?}");
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "g", "c2", "STREAMS", "s:orders", ">"]),
        "*-1\r\n"
    );
    // History: a consumer's own pending entries.
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "g", "c1", "STREAMS", "s:orders", "0"]),
        format!("*1\r\n*2\r\n$8\r\ns:orders\r\n*2\r\n{e1}{e2}")
    );
    assert_eq!(raw.call(&["XACK", "s:orders", "g", &first, &first, "9-9"]), ":1\r\n");
    assert_eq!(raw.call(&["XACK", "s:orders", "g", &first]), ":0\r\n");
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "g", "c1", "STREAMS", "s:orders", "0"]),
        format!("*1\r\n*2\r\n$8\r\ns:orders\r\n*1\r\n{e2}")
    );
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "nope", "c", "STREAMS", "s:orders", ">"]),
        "-NOGROUP No such key 's:orders' or consumer group 'nope' in XREADGROUP with GROUP option\r\n"
    );
    assert!(raw
        .call(&["XGROUP", "CREATE", "s:fresh", "g", "$"])
        .starts_with("-ERR The XGROUP subcommand requires the key to exist."));
    assert_eq!(
        raw.call(&["XGROUP", "CREATE", "s:fresh", "g", "$", "MKSTREAM"]),
        "+OK\r\n"
    );
    assert_eq!(raw.call(&["XLEN", "s:fresh"]), ":0\r\n");

    // Pending entries read back whole however large: 48 entries of 100 KiB (more than one
    // fetch answers) come back with their fields, none as nil.
    let big = "x".repeat(100 * 1024);
    for _ in 0..48 {
        assert!(raw.call(&["XADD", "s:big", "*", "blob", &big]).starts_with('$'));
    }
    assert_eq!(raw.call(&["XGROUP", "CREATE", "s:big", "g", "0"]), "+OK\r\n");
    let claimed = raw.call(&["XREADGROUP", "GROUP", "g", "c", "COUNT", "100", "STREAMS", "s:big", ">"]);
    assert_eq!(claimed.matches("blob").count(), 48);
    let history = raw.call(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s:big", "0"]);
    assert_eq!(history.matches("blob").count(), 48, "every pending entry read back");
    assert_eq!(raw.call(&["DEL", "s:big"]), ":1\r\n");

    // XPENDING, XCLAIM and XAUTOCLAIM: entries pending with one consumer move to another.
    let id1 = bulk_text(&raw.call(&["XADD", "s:claims", "*", "a", "1"]));
    let id2 = bulk_text(&raw.call(&["XADD", "s:claims", "*", "b", "2"]));
    let (c1, c2) = (entry_bytes(&id1, &["a", "1"]), entry_bytes(&id2, &["b", "2"]));
    assert_eq!(raw.call(&["XGROUP", "CREATE", "s:claims", "g", "0"]), "+OK\r\n");
    raw.call(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "alice",
        "COUNT",
        "1",
        "STREAMS",
        "s:claims",
        ">",
    ]);
    raw.call(&["XREADGROUP", "GROUP", "g", "bob", "STREAMS", "s:claims", ">"]);
    let bulk = |text: &str| format!("${}\r\n{text}\r\n", text.len());
    assert_eq!(
        raw.call(&["XPENDING", "s:claims", "g"]),
        format!(
            "*4\r\n:2\r\n{}{}*2\r\n*2\r\n$5\r\nalice\r\n$1\r\n1\r\n*2\r\n$3\r\nbob\r\n$1\r\n1\r\n",
            bulk(&id1),
            bulk(&id2)
        )
    );
    let bobs = raw.call(&["XPENDING", "s:claims", "g", "-", "+", "10", "bob"]);
    assert!(
        bobs.starts_with(&format!("*1\r\n*4\r\n{}$3\r\nbob\r\n:", bulk(&id2))) && bobs.ends_with(":1\r\n"),
        "{bobs}"
    );
    assert_eq!(
        raw.call(&["XPENDING", "s:claims", "g", "IDLE", "3600000", "-", "+", "10"]),
        "*0\r\n"
    );
    assert_eq!(
        raw.call(&["XCLAIM", "s:claims", "g", "carol", "3600000", &id1]),
        "*0\r\n"
    );
    assert_eq!(
        raw.call(&["XCLAIM", "s:claims", "g", "carol", "0", &id1, "9-9"]),
        format!("*1\r\n{c1}")
    );
    assert!(
        raw.call(&["XPENDING", "s:claims", "g", "-", "+", "10", "carol"])
            .ends_with(":2\r\n"),
        "a claim counts a delivery"
    );
    assert_eq!(
        raw.call(&["XCLAIM", "s:claims", "g", "carol", "0", &id2, "JUSTID"]),
        format!("*1\r\n{}", bulk(&id2))
    );
    assert_eq!(
        raw.call(&["XAUTOCLAIM", "s:claims", "g", "dave", "0", "0-0", "COUNT", "1"]),
        format!("*3\r\n{}*1\r\n{c1}*0\r\n", bulk(&id2))
    );
    assert_eq!(
        raw.call(&["XAUTOCLAIM", "s:claims", "g", "dave", "0", "0-0", "JUSTID"]),
        format!("*3\r\n$3\r\n0-0\r\n*2\r\n{}{}*0\r\n", bulk(&id1), bulk(&id2))
    );
    assert_eq!(
        raw.call(&["XAUTOCLAIM", "s:claims", "g", "erin", "0", "-", "COUNT", "1", "JUSTID"]),
        format!("*3\r\n{}*1\r\n{}*0\r\n", bulk(&id2), bulk(&id1))
    );
    // FORCE makes an entry no consumer has pending someone's, counting its first delivery.
    assert_eq!(raw.call(&["XACK", "s:claims", "g", &id2]), ":1\r\n");
    assert_eq!(
        raw.call(&["XCLAIM", "s:claims", "g", "frank", "0", &id2, "FORCE"]),
        format!("*1\r\n{c2}")
    );
    assert!(raw
        .call(&["XPENDING", "s:claims", "g", "-", "+", "10", "frank"])
        .ends_with(":2\r\n"));
    assert_eq!(
        raw.call(&["XPENDING", "s:claims", "nog"]),
        "-NOGROUP No such key 's:claims' or consumer group 'nog'\r\n"
    );
    assert_eq!(raw.call(&["XGROUP", "CREATE", "s:claims", "empty", "$"]), "+OK\r\n");
    assert_eq!(
        raw.call(&["XPENDING", "s:claims", "empty"]),
        "*4\r\n:0\r\n$-1\r\n$-1\r\n*-1\r\n"
    );

    // XINFO: the stream, its groups and a group's consumers (those with pending entries:
    // erin has the first entry, frank the second).
    let pair = |name: &str, value: String| format!("{}{value}", bulk(name));
    assert_eq!(
        raw.call(&["XINFO", "STREAM", "s:claims"]),
        format!(
            "*16\r\n{}{}{}{}{}{}{}{}",
            pair("length", ":2\r\n".into()),
            pair("last-generated-id", bulk(&id2)),
            pair("max-deleted-entry-id", bulk("0-0")),
            pair("entries-added", ":2\r\n".into()),
            pair("recorded-first-entry-id", bulk(&id1)),
            pair("groups", ":2\r\n".into()),
            pair("first-entry", c1.clone()),
            pair("last-entry", c2.clone()),
        )
    );
    let group = |name: &str, consumers: u32, pending: u32, last: &str| {
        format!(
            "*12\r\n{}{}{}{}{}{}",
            pair("name", bulk(name)),
            pair("consumers", format!(":{consumers}\r\n")),
            pair("pending", format!(":{pending}\r\n")),
            pair("last-delivered-id", bulk(last)),
            pair("entries-read", ":2\r\n".into()),
            pair("lag", ":0\r\n".into()),
        )
    };
    assert_eq!(
        raw.call(&["XINFO", "GROUPS", "s:claims"]),
        // ("empty", made at `$`, took the last entry's id as delivered, as Redis does.)
        format!("*2\r\n{}{}", group("empty", 0, 0, &id2), group("g", 2, 2, &id2))
    );
    let consumers = raw.call(&["XINFO", "CONSUMERS", "s:claims", "g"]);
    let erin = format!(
        "*8\r\n{}{}{}",
        pair("name", bulk("erin")),
        pair("pending", ":1\r\n".into()),
        bulk("idle")
    );
    let frank = format!(
        "{}{}{}",
        pair("name", bulk("frank")),
        pair("pending", ":1\r\n".into()),
        bulk("idle")
    );
    assert!(
        consumers.starts_with(&format!("*2\r\n{erin}")) && consumers.contains(&frank),
        "{consumers}"
    );
    assert_eq!(raw.call(&["XINFO", "CONSUMERS", "s:claims", "empty"]), "*0\r\n");
    // RESP3: the same answers as maps.
    let mut resp3 = Raw::open(cluster.resp(1));
    assert!(resp3.call(&["HELLO", "3"]).starts_with("%7\r\n"));
    let groups = resp3.call(&["XINFO", "GROUPS", "s:claims"]);
    assert!(
        groups.starts_with(&format!("*2\r\n%6\r\n{}", pair("name", bulk("empty")))),
        "{groups}"
    );
    assert!(resp3
        .call(&["XINFO", "STREAM", "s:claims"])
        .starts_with(&format!("%8\r\n{}", pair("length", ":2\r\n".into()))));
    assert_eq!(
        raw.call(&["XINFO", "CONSUMERS", "s:claims", "nog"]),
        "-NOGROUP No such consumer group 'nog' for key name 's:claims'\r\n"
    );
    assert_eq!(raw.call(&["XINFO", "STREAM", "s:nothing"]), "-ERR no such key\r\n");
    // An empty stream: no entries, ids 0-0.
    assert_eq!(
        raw.call(&["XGROUP", "CREATE", "s:void", "g", "$", "MKSTREAM"]),
        "+OK\r\n"
    );
    assert_eq!(
        raw.call(&["XINFO", "STREAM", "s:void"]),
        format!(
            "*16\r\n{}{}{}{}{}{}{}{}",
            pair("length", ":0\r\n".into()),
            pair("last-generated-id", bulk("0-0")),
            pair("max-deleted-entry-id", bulk("0-0")),
            pair("entries-added", ":0\r\n".into()),
            pair("recorded-first-entry-id", bulk("0-0")),
            pair("groups", ":1\r\n".into()),
            pair("first-entry", "$-1\r\n".into()),
            pair("last-entry", "$-1\r\n".into()),
        )
    );
    assert_eq!(raw.call(&["DEL", "s:void"]), ":1\r\n");
    assert!(raw
        .call(&["XINFO", "STREAM", "s:claims", "FULL"])
        .contains("not served"));

    // XGROUP DELCONSUMER drops a consumer's pending entries; SETID moves a group's place.
    assert_eq!(raw.call(&["XGROUP", "DELCONSUMER", "s:claims", "g", "erin"]), ":1\r\n");
    assert_eq!(raw.call(&["XGROUP", "DELCONSUMER", "s:claims", "g", "erin"]), ":0\r\n");
    assert!(raw
        .call(&["XPENDING", "s:claims", "g"])
        .starts_with(&format!("*4\r\n:1\r\n{}", bulk(&id2))));
    assert_eq!(
        raw.call(&["XGROUP", "DELCONSUMER", "s:claims", "nog", "erin"]),
        "-NOGROUP No such consumer group 'nog' for key name 's:claims'\r\n"
    );
    assert_eq!(raw.call(&["XGROUP", "SETID", "s:claims", "empty", "0"]), "+OK\r\n");
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "empty", "x", "STREAMS", "s:claims", ">"]),
        format!("*1\r\n*2\r\n$8\r\ns:claims\r\n*2\r\n{c1}{c2}")
    );
    assert_eq!(raw.call(&["XGROUP", "SETID", "s:claims", "empty", &id1]), "+OK\r\n");
    assert_eq!(
        raw.call(&["XREADGROUP", "GROUP", "empty", "x", "STREAMS", "s:claims", ">"]),
        format!("*1\r\n*2\r\n$8\r\ns:claims\r\n*1\r\n{c2}")
    );
    assert_eq!(
        raw.call(&["XGROUP", "SETID", "s:claims", "nog", "$"]),
        "-NOGROUP No such consumer group 'nog' for key name 's:claims'\r\n"
    );
    assert!(raw
        .call(&["XGROUP", "SETID", "s:nothing", "g", "$"])
        .starts_with("-ERR The XGROUP subcommand requires the key to exist."));

    // A name holds one type; errors are Redis's, or say what Basalt does instead.
    assert_eq!(raw.call(&["SET", "s:text", "v"]), "+OK\r\n");
    let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    assert_eq!(raw.call(&["XADD", "s:text", "*", "a", "1"]), wrongtype);
    assert_eq!(raw.call(&["XLEN", "s:text"]), wrongtype);
    assert_eq!(raw.call(&["XINFO", "STREAM", "s:text"]), wrongtype);
    assert_eq!(raw.call(&["XINFO", "GROUPS", "s:text"]), wrongtype);
    assert_eq!(raw.call(&["XRANGE", "s:text", "-", "+"]), wrongtype);
    assert_eq!(raw.call(&["XPENDING", "s:text", "g"]), wrongtype);
    assert_eq!(raw.call(&["XCLAIM", "s:text", "g", "c", "0", "1-1"]), wrongtype);
    assert_eq!(raw.call(&["XADD", "s:nomk", "NOMKSTREAM", "*", "a", "1"]), "$-1\r\n");
    assert!(raw
        .call(&["XADD", "s:orders", "5-1", "a", "1"])
        .starts_with("-ERR Basalt gives stream entries their ids"));
    assert_eq!(
        raw.call(&["XADD", "s:orders", "*", "a"]),
        "-ERR wrong number of arguments for 'xadd' command\r\n"
    );
    assert_eq!(
        raw.call(&["XREAD", "STREAMS", "s:orders", "s:fresh", "0"]),
        "-ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.\r\n"
    );
    assert_eq!(
        raw.call(&["XRANGE", "s:orders", "x", "+"]),
        "-ERR Invalid stream ID specified as stream command argument\r\n"
    );
    // Groups' rows are Basalt's own: out of the keyspace, and not writable through RESP.
    // KEYS, SCAN and DBSIZE list the KV keys, then the streams.
    assert_eq!(
        raw.call(&["KEYS", "s:*"]),
        "*6\r\n$7\r\ns:plain\r\n$6\r\ns:text\r\n$8\r\ns:claims\r\n$7\r\ns:fresh\r\n$7\r\ns:later\r\n$8\r\ns:orders\r\n"
    );
    assert_eq!(raw.call(&["DBSIZE"]), ":6\r\n");
    let streams = scan_all(&mut raw, &["MATCH", "s:*r*", "TYPE", "stream", "COUNT", "2"]);
    assert_eq!(
        streams,
        ["s:fresh", "s:later", "s:orders"],
        "SCAN TYPE stream MATCH s:*r*"
    );
    let reserved = b"\xffbasalt\x00xgroup\x00x";
    let mut request = format!("*3\r\n$3\r\nSET\r\n${}\r\n", reserved.len()).into_bytes();
    request.extend_from_slice(reserved);
    request.extend_from_slice(b"\r\n$1\r\nv\r\n");
    raw.send(&request);
    assert!(raw
        .reply()
        .starts_with("-ERR keys beginning with 0xFF 'basalt' 0x00 are reserved"));

    // RESP3: XREAD answers a map.
    assert!(raw.call(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(
        raw.call(&["XREAD", "COUNT", "1", "STREAMS", "s:orders", "0"]),
        format!("%1\r\n$8\r\ns:orders\r\n*1\r\n{e1}")
    );
    assert!(raw.call(&["HELLO", "2"]).starts_with('*'));

    // The stream is the topic s:orders: the SDK reads what XADD wrote and writes what XRANGE reads.
    runtime().block_on(async {
        let client = cluster.client().await;
        let fetched = client
            .streams()
            .fetch("s:orders", 0, 0, basalt_client::FetchOptions::default())
            .await
            .expect("SDK fetch");
        assert_eq!(fetched.records.len(), 4);
        let produced = client
            .streams()
            .produce(
                "s:orders",
                vec![basalt_client::Record::new("k", "from the SDK").to_partition(0)],
            )
            .await
            .expect("SDK produce");
        let id = format!("{}-{}", produced[0].timestamp_ms, produced[0].offset);
        assert_eq!(
            raw.call(&["XRANGE", "s:orders", &id, &id]),
            format!("*1\r\n{}", entry_bytes(&id, &["key", "k", "value", "from the SDK"]))
        );
    });

    // A topic the SDK created is read and written as a stream, but a DEL of its name (say, of a
    // cache key that expired) never deletes it: only streams RESP created are keys.
    runtime().block_on(async {
        let client = cluster.client().await;
        let one = basalt_client::TopicOptions {
            partitions: 1,
            ..basalt_client::TopicOptions::default()
        };
        client.streams().create_topic("s:sdk", one).await.expect("create");
    });
    assert!(raw.call(&["XADD", "s:sdk", "*", "a", "1"]).starts_with('$'));
    assert_eq!(raw.call(&["DEL", "s:sdk"]), ":0\r\n");
    assert_eq!(raw.call(&["XLEN", "s:sdk"]), ":1\r\n");
    // A name too long for a topic is no stream: DEL and EXISTS answer for the KV key alone.
    let long = "k".repeat(300);
    assert_eq!(raw.call(&["DEL", &long, "s:none"]), ":0\r\n");
    assert_eq!(raw.call(&["EXISTS", &long]), ":0\r\n");
    assert_eq!(raw.call(&["TYPE", &long]), "+none\r\n");

    // A SCAN in small pages lists every key and stream once: the KV keys (those sorting after
    // Basalt's reserved rows too), then the streams, whatever rows a page ends on.
    assert_eq!(raw.call_bytes(&[b"SET", b"\xffzz", b"v"]), "+OK\r\n");
    for n in 0..12 {
        assert!(raw
            .call(&["XADD", &format!("s:many{n:02}"), "*", "a", "1"])
            .starts_with('$'));
    }
    let expected_keys: usize = raw
        .call(&["DBSIZE"])
        .trim_start_matches(':')
        .trim()
        .parse()
        .expect("DBSIZE");
    let mut listed = scan_all(&mut raw, &["COUNT", "3"]);
    let count = listed.len();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), count, "a name listed twice: {listed:?}");
    assert_eq!(count, expected_keys, "{listed:?}");
    assert!(
        listed.iter().any(|k| k == "\u{fffd}zz" || k.ends_with("zz")),
        "the key after the reserved rows: {listed:?}"
    );
    assert_eq!(listed.iter().filter(|k| k.starts_with("s:many")).count(), 12);

    // DEL removes a stream with its groups; a new stream of the name starts afresh.
    assert_eq!(raw.call(&["DEL", "s:orders", "s:text", "s:none"]), ":2\r\n");
    assert_eq!(raw.call(&["TYPE", "s:orders"]), "+none\r\n");
    assert_eq!(raw.call(&["XLEN", "s:orders"]), ":0\r\n");
    assert!(bulk_text(&raw.call(&["XADD", "s:orders", "*", "a", "1"])).ends_with("-0"));
    assert_eq!(raw.call(&["XGROUP", "CREATE", "s:orders", "g", "0"]), "+OK\r\n");
}

/// Consumers of one group on every node, claiming while producers on every node append: every
/// entry gets its own id and is delivered to exactly one consumer.
#[test]
fn a_group_delivers_each_entry_to_one_consumer() {
    let cluster = resp_cluster(&[]);
    let mut setup = Raw::open(cluster.resp(1));
    assert_eq!(
        setup.call(&["XGROUP", "CREATE", "s:jobs", "workers", "$", "MKSTREAM"]),
        "+OK\r\n"
    );
    // Producers on every node, several connections each: their appends are combined.
    const ENTRIES_EACH: usize = 15;
    let producers: Vec<_> = (1..=3u64)
        .flat_map(|node| [(node, 0), (node, 1)])
        .map(|(node, n)| {
            let addr = cluster.resp(node);
            std::thread::spawn(move || {
                let mut raw = Raw::open(addr);
                (0..ENTRIES_EACH)
                    .map(|i| bulk_text(&raw.call(&["XADD", "s:jobs", "*", "from", &format!("{node}.{n}.{i}")])))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let consumers: Vec<_> = (1..=3u64)
        .flat_map(|node| [(node, 0), (node, 1)])
        .map(|(node, n)| {
            let addr = cluster.resp(node);
            std::thread::spawn(move || {
                let mut raw = Raw::open(addr);
                let name = format!("c{node}-{n}");
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let reply = raw.call(&[
                        "XREADGROUP",
                        "GROUP",
                        "workers",
                        &name,
                        "COUNT",
                        "7",
                        "BLOCK",
                        "1000",
                        "STREAMS",
                        "s:jobs",
                        ">",
                    ]);
                    let ids = ids_in(&reply);
                    idle = if ids.is_empty() { idle + 1 } else { 0 };
                    for id in &ids {
                        assert_eq!(
                            raw.call(&["XACK", "s:jobs", "workers", id]),
                            ":1\r\n",
                            "{name} acks {id}"
                        );
                    }
                    got.extend(ids);
                }
                got
            })
        })
        .collect();
    let mut added: Vec<String> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer"))
        .collect();
    let appended = added.len();
    added.sort();
    added.dedup();
    assert_eq!(added.len(), appended, "two appends got one id");
    assert_eq!(setup.call(&["XLEN", "s:jobs"]), format!(":{appended}\r\n"));
    let mut delivered: Vec<String> = consumers
        .into_iter()
        .flat_map(|c| c.join().expect("consumer"))
        .collect();
    let count = delivered.len();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), count, "an entry was delivered twice");
    added.sort();
    assert_eq!(delivered, added, "every entry delivered once");
}

/// A dead consumer's entries, claimed by survivors on every node at once with XAUTOCLAIM: each
/// entry goes to exactly one of them (a claim rewrites the entry's row conditioned on the
/// revision it read).
#[test]
fn a_dead_consumer_s_entries_are_claimed_by_one_survivor_each() {
    let cluster = resp_cluster(&[]);
    let mut setup = Raw::open(cluster.resp(1));
    assert_eq!(
        setup.call(&["XGROUP", "CREATE", "s:work", "g", "$", "MKSTREAM"]),
        "+OK\r\n"
    );
    const ENTRIES: usize = 60;
    for n in 0..ENTRIES {
        assert!(setup
            .call(&["XADD", "s:work", "*", "n", &n.to_string()])
            .starts_with('$'));
    }
    let delivered = ids_in(&setup.call(&["XREADGROUP", "GROUP", "g", "dead", "STREAMS", "s:work", ">"]));
    assert_eq!(delivered.len(), ENTRIES);
    std::thread::sleep(Duration::from_millis(400));
    let survivors: Vec<_> = (1..=3u64)
        .flat_map(|node| [(node, 0), (node, 1)])
        .map(|(node, n)| {
            let addr = cluster.resp(node);
            std::thread::spawn(move || {
                let mut raw = Raw::open(addr);
                let name = format!("s{node}.{n}");
                let mut cursor = "0-0".to_string();
                let mut got = Vec::new();
                loop {
                    let reply = raw.call(&[
                        "XAUTOCLAIM",
                        "s:work",
                        "g",
                        &name,
                        "300",
                        &cursor,
                        "COUNT",
                        "7",
                        "JUSTID",
                    ]);
                    let ids = ids_in(&reply);
                    cursor = ids.first().cloned().unwrap_or_else(|| panic!("{reply}"));
                    got.extend(ids.into_iter().skip(1));
                    if cursor == "0-0" {
                        return got;
                    }
                }
            })
        })
        .collect();
    let mut claimed: Vec<String> = survivors
        .into_iter()
        .flat_map(|s| s.join().expect("survivor"))
        .collect();
    let count = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), count, "an entry was claimed by two survivors");
    let mut delivered = delivered;
    delivered.sort();
    assert_eq!(claimed, delivered, "every entry of the dead consumer claimed");
}

#[test]
fn xtrim_and_xadd_maxlen_minid_trim_as_redis_does_also_from_many_connections() {
    let cluster = resp_cluster(&[]);
    let mut raw = Raw::open(cluster.resp(follower(&cluster)));
    let ids: Vec<String> = (0..5)
        .map(|n| bulk_text(&raw.call(&["XADD", "t:capped", "MAXLEN", "3", "*", "n", &n.to_string()])))
        .collect();
    assert_eq!(raw.call(&["XLEN", "t:capped"]), ":3\r\n");
    let kept = |raw: &mut Raw, key: &str| ids_in(&raw.call(&["XRANGE", key, "-", "+"]));
    assert_eq!(kept(&mut raw, "t:capped"), ids[2..].to_vec(), "the newest three");
    // XTRIM answers the entries it removed; a looser bound removes nothing.
    assert_eq!(raw.call(&["XTRIM", "t:capped", "MAXLEN", "~", "10"]), ":0\r\n");
    assert_eq!(raw.call(&["XTRIM", "t:capped", "MAXLEN", "=", "1"]), ":2\r\n");
    assert_eq!(kept(&mut raw, "t:capped"), ids[4..].to_vec());
    // MINID: the entries before an id go, the id's own entry stays.
    let more: Vec<String> = (0..3)
        .map(|n| bulk_text(&raw.call(&["XADD", "t:capped", "*", "m", &n.to_string()])))
        .collect();
    assert_eq!(raw.call(&["XTRIM", "t:capped", "MINID", &more[1]]), ":2\r\n");
    assert_eq!(kept(&mut raw, "t:capped"), more[1..].to_vec());
    // LIMIT with ~ removes at most that many.
    assert_eq!(
        raw.call(&["XTRIM", "t:capped", "MAXLEN", "~", "0", "LIMIT", "1"]),
        ":1\r\n"
    );
    assert_eq!(kept(&mut raw, "t:capped"), more[2..].to_vec());
    // A consumer group reads on from what is kept.
    assert_eq!(raw.call(&["XGROUP", "CREATE", "t:capped", "g", "0"]), "+OK\r\n");
    assert_eq!(
        ids_in(&raw.call(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "t:capped", ">"])),
        more[2..].to_vec()
    );
    // Redis's answers for no stream, another type and bad options.
    assert_eq!(raw.call(&["XTRIM", "t:none", "MAXLEN", "0"]), ":0\r\n");
    assert_eq!(raw.call(&["SET", "t:string", "v"]), "+OK\r\n");
    assert!(raw
        .call(&["XTRIM", "t:string", "MAXLEN", "0"])
        .starts_with("-WRONGTYPE"));
    assert_eq!(
        raw.call(&["XTRIM", "t:capped", "MAXLEN", "1", "LIMIT", "5"]),
        "-ERR syntax error, LIMIT cannot be used without the special ~ option\r\n"
    );
    assert_eq!(
        raw.call(&["XADD", "t:capped", "MAXLEN", "-1", "*", "f", "v"]),
        "-ERR The MAXLEN argument must be >= 0.\r\n"
    );
    assert_eq!(
        raw.call(&["XTRIM", "t:capped"]),
        "-ERR wrong number of arguments for 'xtrim' command\r\n"
    );
    // NOMKSTREAM with MAXLEN and no stream: nothing created, nothing trimmed.
    assert_eq!(
        raw.call(&["XADD", "t:absent", "NOMKSTREAM", "MAXLEN", "1", "*", "f", "v"]),
        "$-1\r\n"
    );
    assert_eq!(raw.call(&["EXISTS", "t:absent"]), ":0\r\n");

    // Many connections appending with MAXLEN at once (their appends combined into rounds):
    // the stream ends with the newest entries, as many as the bound.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let addr = cluster.resp(1 + w % 3);
            std::thread::spawn(move || {
                let mut raw = Raw::open(addr);
                for n in 0..25 {
                    let reply = raw.call(&["XADD", "t:busy", "MAXLEN", "~", "7", "*", "w", &format!("w{w}n{n}")]);
                    assert!(reply.starts_with('$'), "{reply}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    assert_eq!(raw.call(&["XLEN", "t:busy"]), ":7\r\n");
    let busy = kept(&mut raw, "t:busy");
    let offsets: Vec<u64> = busy
        .iter()
        .map(|id| id.split_once('-').expect("an id").1.parse().expect("an offset"))
        .collect();
    assert_eq!(offsets, (193..200).collect::<Vec<u64>>(), "the newest seven of 200");

    // The SDK's trim of the same topic, and the log start it moved.
    runtime().block_on(async {
        let client = cluster.client().await;
        let streams = client.streams();
        let removed = streams
            .trim("t:busy", 0, basalt_client::TrimRule::MaxLen(2), None)
            .await
            .expect("trim");
        assert_eq!(removed, 5);
        let info = streams
            .describe("t:busy", basalt_client::ReadConsistency::Linearizable)
            .await
            .expect("describe");
        assert_eq!(
            (info.partitions[0].log_start, info.partitions[0].high_watermark),
            (198, 200)
        );
        let refused = streams
            .trim("t:busy", 3, basalt_client::TrimRule::MaxLen(0), None)
            .await
            .expect_err("no partition 3");
        assert_eq!(
            refused.code(),
            Some(basalt_client::ErrorCode::OutOfRange),
            "{refused:?}"
        );
        // And the CLI's.
        let endpoints = cluster.endpoints();
        let run = run_cli(NODE, &endpoints, &["stream", "trim", "t:busy", "--max-len", "1"], None).await;
        assert_eq!((run.code, run.stdout.trim()), (Some(0), "TRIMMED 1"), "{}", run.stderr);
        let run = run_cli(NODE, &endpoints, &["stream", "trim", "t:busy", "--min-id", "x"], None).await;
        assert_ne!(run.code, Some(0), "a bad id is refused: {}", run.stdout);
    });
    assert_eq!(raw.call(&["XLEN", "t:busy"]), ":1\r\n");
}

/// Raises this process's soft limit on open descriptors to its hard limit: the tests below
/// open thousands of connections.
fn raise_own_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
    }
    limit.rlim_cur
}

/// What a connection to a door has been told so far, without waiting: a refusal (its words),
/// closed without a word, or nothing yet (open and served).
fn door_answer(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(reply),
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return (!reply.is_empty()).then_some(reply);
            }
            Err(_) => return Some(reply),
        }
    }
}

/// A node on a host with few file descriptors (2,000, soft and hard): clients that open far
/// more connections than that to the leader are refused at once (RESP with Redis's words), and
/// never take the descriptors it needs for itself. Before the descriptor plan, the node ran out,
/// could no longer reach its peers nor write its vote, and stopped for good.
#[test]
fn a_flood_of_connections_is_refused_and_never_takes_the_node_s_own_descriptors() {
    const NODE_LIMIT: u64 = 2000;
    // The node's plan: 2,000 less its reserve (1,536), the peer listener's (256) and the HTTP
    // door's (128, which keeps /metrics reachable here).
    const CLIENT_CONNECTIONS: usize = 80;
    const RESP_FLOOD: usize = 2300;
    const GRPC_FLOOD: usize = 300;
    const PEER_FLOOD: usize = 300;
    let own = raise_own_open_files_limit();
    assert!(
        own > 4 * NODE_LIMIT,
        "this test needs {} descriptors, has {own}",
        4 * NODE_LIMIT
    );
    let mut cluster = TestCluster::plan(NODE, ClusterOptions::default());
    cluster.enable_resp();
    cluster.set_open_files_limit(NODE_LIMIT);
    cluster.launch();
    // One runtime for the whole test: the SDK client's channels run their tasks on it.
    let rt = runtime();
    let client = rt.block_on(cluster.client());
    let leader = rt.block_on(cluster.leader(&client));
    let resp = cluster.resp(leader);
    let mut held = connect(resp);
    assert_eq!(
        cluster.metric(leader, "basalt_client_connections_max"),
        CLIENT_CONNECTIONS as u64
    );

    let open_all = |addr: String, count: usize| -> Vec<TcpStream> {
        (0..count)
            .map(|_| TcpStream::connect(&addr).expect("the kernel accepts the connection"))
            .collect()
    };
    let mut flood = open_all(resp.to_string(), RESP_FLOOD);
    let grpc_flood = open_all(cluster.addr(leader), GRPC_FLOOD);
    let peer_flood = open_all(cluster.specs[&leader].peer.clone(), PEER_FLOOD);
    // Every connection of the flood has been accepted (and the excess refused) once the
    // refusals are all counted.
    let expected_refusals = (RESP_FLOOD + GRPC_FLOOD - CLIENT_CONNECTIONS) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.metric(leader, "basalt_client_connections_refused_total") < expected_refusals
        || cluster.metric(leader, "basalt_peer_connections_refused_total") < (PEER_FLOOD - 256) as u64
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was not taken in\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut served, mut refused, mut closed) = (0, 0, 0);
    for stream in &mut flood {
        match door_answer(stream) {
            None => served += 1,
            Some(reply) if reply == b"-ERR max number of clients reached\r\n" => refused += 1,
            Some(reply) if reply.is_empty() => closed += 1,
            Some(reply) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&reply)),
        }
    }
    assert!(served < CLIENT_CONNECTIONS, "{served} served");
    assert_eq!(served + refused + closed, RESP_FLOOD);
    assert!(
        refused >= RESP_FLOOD - CLIENT_CONNECTIONS - 50,
        "{refused} refused, {closed} closed"
    );
    let client_refused = cluster.metric(leader, "basalt_client_connections_refused_total");
    assert!(
        client_refused >= (RESP_FLOOD + GRPC_FLOOD - CLIENT_CONNECTIONS) as u64,
        "{client_refused}"
    );
    assert!(cluster.metric(leader, "basalt_client_connections_open") <= CLIENT_CONNECTIONS as u64);
    // (A flood of the peer port holds its budget: new member connections wait until it goes.
    // The peer port is for a network only the members reach.)
    drop(peer_flood);

    // With the client flood still held, the leader writes, and opens what it needs: a follower
    // goes down and comes back, and the leader links to it anew.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    rt.block_on(async {
        cluster.kill(follower);
        for i in 0..20 {
            let n: i64 = redis::cmd("INCR")
                .arg("flooded")
                .query(&mut held)
                .expect("INCR while flooded");
            assert_eq!(n, i + 1);
        }
    });
    cluster.restart(follower);
    // The follower catches up from the leader, which links to it anew. (Read over the HTTP
    // doors, which have budgets of their own: the leader's client doors are full, so a new SDK
    // connection to it would be refused until the flood goes, as would any new client's.)
    let target = cluster.metric(leader, "basalt_raft_last_log_index");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.metric(follower, "basalt_raft_applied_index") < target {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not catch up\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let value: i64 = redis::cmd("GET").arg("flooded").query(&mut held).expect("GET");
    assert_eq!(value, 20);

    // Once the flood goes, its permits come back.
    drop((flood, grpc_flood));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.metric(leader, "basalt_client_connections_open") > 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood's permits did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut again = connect(resp);
    let pong: String = redis::cmd("PING").query(&mut again).expect("PING");
    assert_eq!(pong, "PONG");
    // The SDK client whose calls to the leader were refused meanwhile reaches it again.
    rt.block_on(cluster.wait_caught_up(&client, follower));
}

/// A node whose descriptor limit cannot leave room for its own files, its peers and a few
/// clients does not start, and says which limit to raise.
#[test]
fn a_node_with_too_few_descriptors_refuses_to_start_and_says_why() {
    let mut cluster = TestCluster::plan(
        NODE,
        ClusterOptions {
            nodes: 1,
            ..Default::default()
        },
    );
    cluster.set_open_files_limit(1024);
    cluster.launch();
    let status = cluster.wait_exit(1, Duration::from_secs(30)).expect("the node stops");
    assert!(!status.success());
    let log = cluster.logs();
    assert!(
        log.contains("may open 1024 file descriptors") && log.contains("ulimit -n"),
        "{log}"
    );
}
