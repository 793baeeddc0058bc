//! Slow clients (issue 8 §3). pingora 0.9 has no whole-header deadline: the
//! downstream read timeout (60 s, not configurable before the header is
//! parsed) applies to each read, so a client that sends one byte at a time
//! holds its connection open until the 1 MiB header cap. What must hold is
//! that such clients cost a task each and never delay anyone else; these
//! tests assert that and print what happened to the slow connections.
use super::*;
use std::io::Write;
use std::net::TcpStream;

/// Normal requests during `for_how_long`: (count, slowest).
fn normal_traffic(kw: &Keyward, key: &str, for_how_long: Duration) -> (usize, Duration) {
    let end = Instant::now() + for_how_long;
    let mut n = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < end {
        let start = Instant::now();
        let r = timed_get(kw.addr, "/api/v1/x", key, Duration::from_secs(2))
            .expect("a normal client was not answered within 2 s");
        assert_eq!(r.status, 200);
        slowest = slowest.max(start.elapsed());
        n += 1;
        std::thread::sleep(NORMAL_REQUEST_GAP);
    }
    (n, slowest)
}

/// How many of `conns` the server still holds open (no EOF, no reset).
fn still_open(conns: &mut [TcpStream]) -> usize {
    use std::io::Read;
    let mut open = 0;
    for c in conns.iter_mut() {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        if matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            open += 1;
        }
        c.set_nonblocking(false).unwrap();
    }
    open
}

/// The world, keyward in front of the echo upstream, the org-wide key.
fn setup() -> (World, Keyward, String) {
    let w = World::new();
    let kw = w.start(echo());
    let key = w.org_key.clone();
    (w, kw, key)
}

/// Pause between two requests of [`normal_traffic`].
const NORMAL_REQUEST_GAP: Duration = Duration::from_millis(50);
/// How often a header dribbler sends its next byte.
const DRIBBLE_EVERY: Duration = Duration::from_secs(1);
/// How often the dribbler checks whether to stop while it waits.
const DRIBBLE_STOP_CHECK: Duration = Duration::from_millis(50);
/// How often a slow body gets its next byte.
const SLOW_BODY_BYTE_EVERY: Duration = Duration::from_millis(500);

#[test]
fn header_dribblers_do_not_starve_other_clients() {
    let (_w, kw, key) = setup();
    let request = format!(
        "GET /api/v1/slow HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {key}\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(64)
    );
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(kw.addr).unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // one byte per connection per second, never finishing the head
    let dribbler = {
        let stop = stop.clone();
        let mut conns: Vec<TcpStream> = conns.iter().map(|c| c.try_clone().unwrap()).collect();
        let bytes = request.into_bytes();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < bytes.len() - 4 {
                for c in conns.iter_mut() {
                    let _ = c.write_all(&bytes[i..i + 1]);
                }
                i += 1;
                let next = Instant::now() + DRIBBLE_EVERY;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(DRIBBLE_STOP_CHECK);
                }
            }
            i
        })
    };
    let (n, slowest) = normal_traffic(&kw, &key, Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let sent = dribbler.join().unwrap();
    let open = still_open(&mut conns);
    eprintln!(
        "header dribblers: {open}/50 still open after {sent} bytes each over ~4 s; \
         {n} normal requests meanwhile, slowest {slowest:?}"
    );
    assert!(n >= 20, "only {n} normal requests in 4 s");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest normal request {slowest:?}"
    );
    assert!(kw.get("/api/v1/x", Some(&key)).status == 200);
}

#[test]
fn slow_bodies_on_an_inspected_route_do_not_starve_other_clients() {
    let (_w, kw, key) = setup();
    // the route reads the body before deciding: each of these holds a task
    let head = format!(
        "POST /api/v1/connections HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"workspaceId\":"
    );
    let mut conns: Vec<TcpStream> = (0..30)
        .map(|_| {
            let mut c = TcpStream::connect(kw.addr).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let stop = stop.clone();
        let mut conns: Vec<TcpStream> = conns.iter().map(|c| c.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    let _ = c.write_all(b" ");
                }
                std::thread::sleep(SLOW_BODY_BYTE_EVERY);
            }
        })
    };
    let (n, slowest) = normal_traffic(&kw, &key, Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    dribbler.join().unwrap();
    let open = still_open(&mut conns);
    eprintln!(
        "slow bodies: {open}/30 still open after ~3 s; {n} normal requests, slowest {slowest:?}"
    );
    assert!(n >= 15, "only {n} normal requests in 3 s");
    assert!(
        slowest < Duration::from_secs(1),
        "slowest normal request {slowest:?}"
    );
}

#[test]
fn many_idle_connections_do_not_starve_other_clients() {
    let (_w, kw, key) = setup();
    // 300 connections that never send a byte, and 100 that sent one full
    // request and now sit idle in keep-alive
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(kw.addr).unwrap())
        .collect();
    let req =
        format!("GET /api/v1/x HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {key}\r\n\r\n");
    let mut kept: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(kw.addr).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    let (n, slowest) = normal_traffic(&kw, &key, Duration::from_secs(2));
    eprintln!(
        "idle: {}/300 silent and {}/100 keep-alive connections still open; {n} normal requests, slowest {slowest:?}",
        still_open(&mut idle),
        kept.len()
    );
    assert!(n >= 10);
    assert!(
        slowest < Duration::from_secs(1),
        "slowest normal request {slowest:?}"
    );
    kept.clear();
}

/// Measurement, not part of the default run (about 70 s): how long pingora
/// keeps a silent new connection, a half-sent head, and an idle keep-alive
/// connection. `cargo nextest run --test resilience --run-ignored only`
#[test]
#[ignore = "slow measurement (~70 s); run with --run-ignored only"]
fn idle_connection_lifetimes() {
    use std::io::Read;
    let (_w, kw, key) = setup();
    let lifetime = |mut c: TcpStream| {
        std::thread::spawn(move || {
            let start = Instant::now();
            c.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
            let mut b = [0u8; 4096];
            loop {
                match c.read(&mut b) {
                    Ok(0) | Err(_) => return start.elapsed(),
                    Ok(_) => {}
                }
            }
        })
    };
    let silent = lifetime(TcpStream::connect(kw.addr).unwrap());
    let mut half = TcpStream::connect(kw.addr).unwrap();
    half.write_all(b"GET /api/v1/x HTTP/1.1\r\n").unwrap();
    let half = lifetime(half);
    let mut kept = TcpStream::connect(kw.addr).unwrap();
    kept.write_all(
        format!("GET /api/v1/x HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {key}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let kept = lifetime(kept);
    let (silent, half, kept) = (
        silent.join().unwrap(),
        half.join().unwrap(),
        kept.join().unwrap(),
    );
    eprintln!("silent new connection closed after {silent:?}; half-sent head after {half:?}; idle keep-alive after {kept:?}");
    for (what, t) in [
        ("silent", silent),
        ("half head", half),
        ("keep-alive", kept),
    ] {
        assert!(t < Duration::from_secs(75), "{what}: {t:?}");
    }
}
