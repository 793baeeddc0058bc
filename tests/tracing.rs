//! Tracing (SPEC §8.2 "Tracing (optional)", `[tracing]`): W3C trace context
//! in, keyward's spans out over OTLP/HTTP to a receiver the test runs, and
//! the upstream's `traceparent` naming keyward's span. Without `[tracing]`
//! a client's `traceparent` passes unchanged. The exporter tests need a
//! build with the `otel` feature (scripts/test.sh runs the suite with it).
mod common;
use common::*;

/// A client span in a sampled trace.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn client_traceparent(flags: &str) -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}")
}

#[test]
fn without_tracing_a_client_traceparent_passes_unchanged() {
    let world = World::new();
    let kw = world.start(echo());
    let tp = client_traceparent("01");
    let r = kw.request(
        "GET",
        "/api/v1/workspaces/ws_a1/things",
        &[
            ("Authorization", &format!("Bearer {}", world.org_key)),
            ("traceparent", &tp),
            ("tracestate", "vendor=abc"),
        ],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("traceparent"), [tp]);
    assert_eq!(r.upstream_header("tracestate"), ["vendor=abc"]);
    // and none is started
    let r = kw.get("/api/v1/workspaces/ws_a1/things", Some(&world.org_key));
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("traceparent").is_empty());
}

/// A build without the feature refuses `[tracing]` by name instead of
/// running without the traces the operator asked for.
#[cfg(not(feature = "otel"))]
#[test]
fn a_build_without_otel_refuses_a_tracing_table() {
    let text = check_refuses(
        &Snap::new(),
        "[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n",
    );
    assert!(
        text.contains("tracing") && text.contains("built without the otel feature"),
        "{text}"
    );
}

#[cfg(feature = "otel")]
mod otel {
    use super::*;

    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use prost::Message;

    /// Longest wait for spans to reach the receiver (the tests set the batch
    /// delay to 100 ms; a loaded 2-core machine can take much longer).
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(15);

    /// One span as the receiver decoded it.
    #[derive(Debug, Clone)]
    struct Got {
        service: String,
        name: String,
        kind: i32,
        trace_id: String,
        span_id: String,
        parent: String,
        attrs: HashMap<String, Value>,
    }

    impl Got {
        fn str(&self, key: &str) -> Option<&str> {
            match self.attrs.get(key) {
                Some(Value::StringValue(s)) => Some(s),
                _ => None,
            }
        }
        fn int(&self, key: &str) -> Option<i64> {
            match self.attrs.get(key) {
                Some(Value::IntValue(i)) => Some(*i),
                _ => None,
            }
        }
    }

    /// A tiny OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
    /// `ExportTraceServiceRequest`, answered 200; keep-alive connections.
    struct Receiver {
        addr: SocketAddr,
        spans: Arc<Mutex<Vec<Got>>>,
        posts: Arc<Mutex<Vec<String>>>,
    }

    impl Receiver {
        fn start() -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let spans = Arc::new(Mutex::new(Vec::new()));
            let posts = Arc::new(Mutex::new(Vec::new()));
            let (s, p) = (spans.clone(), posts.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (s, p) = (s.clone(), p.clone());
                    std::thread::spawn(move || serve(conn, &s, &p));
                }
            });
            Receiver { addr, spans, posts }
        }

        fn endpoint(&self) -> String {
            format!("http://{}/v1/traces", self.addr)
        }

        fn spans(&self) -> Vec<Got> {
            self.spans.lock().unwrap().clone()
        }

        fn in_trace(&self, trace_id: &str) -> Vec<Got> {
            self.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect()
        }

        /// Wait until the trace has a request span and a decision span.
        fn wait_trace(&self, trace_id: &str, kw: &Keyward) -> (Got, Got) {
            let mut found = None;
            let ok = wait_until(EXPORT_TIMEOUT, || {
                let spans = self.in_trace(trace_id);
                let request = spans.iter().find(|s| s.kind == SpanKind::Server as i32);
                let decision = spans.iter().find(|s| s.name == "keyward.decide");
                if let (Some(r), Some(d)) = (request, decision) {
                    found = Some((r.clone(), d.clone()));
                }
                found.is_some()
            });
            assert!(
                ok,
                "trace {trace_id} not exported within {EXPORT_TIMEOUT:?}; got {:?} (posts {:?}); log: {}",
                self.spans(),
                self.posts.lock().unwrap(),
                kw.log()
            );
            found.unwrap()
        }
    }

    fn serve(conn: TcpStream, spans: &Mutex<Vec<Got>>, posts: &Mutex<Vec<String>>) {
        let mut out = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let request_line = line.trim_end().to_string();
            let (mut length, mut chunked) = (0usize, false);
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((h, ""));
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.contains("chunked") {
                    chunked = true;
                }
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size).unwrap();
                    let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0; n + 2];
                    r.read_exact(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                body.resize(length, 0);
                r.read_exact(&mut body).unwrap();
            }
            posts.lock().unwrap().push(request_line.clone());
            if request_line.starts_with("POST /v1/traces ") {
                let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
                spans.lock().unwrap().extend(decode(req));
            }
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
            );
        }
    }

    fn decode(req: ExportTraceServiceRequest) -> Vec<Got> {
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs: s
                            .attributes
                            .into_iter()
                            .filter_map(|kv| Some((kv.key, kv.value?.value?)))
                            .collect(),
                    });
                }
            }
        }
        out
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// `(trace id, parent id, flags)` of a `traceparent`.
    fn parse_traceparent(v: &str) -> (String, String, String) {
        let parts: Vec<&str> = v.split('-').collect();
        assert_eq!(parts.len(), 4, "{v}");
        assert_eq!(parts[0], "00", "{v}");
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{v}");
        (parts[1].into(), parts[2].into(), parts[3].into())
    }

    /// keyward with `[tracing]` pointed at `rx`, batches sent every 100 ms.
    fn start(world: &World, rx: &Receiver, tracing: &str) -> Keyward {
        let mut opts = Opts::new(echo()).toml(&format!(
            "[tracing]\nendpoint = \"{}\"\nservice_name = \"keyward-test\"\n{tracing}",
            rx.endpoint()
        ));
        opts.env
            .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
        world.start_with(opts)
    }

    fn get_with(kw: &Keyward, path: &str, key: Option<&str>, extra: &[(&str, &str)]) -> Resp {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        kw.request("GET", path, &headers, "")
    }

    #[test]
    fn a_client_trace_is_followed_and_the_upstream_sees_keywards_span_as_parent() {
        let world = World::new();
        let rx = Receiver::start();
        let kw = start(&world, &rx, "sample_ratio = 1.0\n");
        let generation = kw.generation();
        assert!(generation > 0);
        let r = get_with(
            &kw,
            "/api/v1/workspaces/ws_a1/things",
            Some(&world.org_key),
            &[
                ("traceparent", &client_traceparent("01")),
                ("tracestate", "vendor=abc"),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body_str());
        let forwarded = r.upstream_header("traceparent");
        assert_eq!(forwarded.len(), 1, "{forwarded:?}");
        let (trace, parent, flags) = parse_traceparent(&forwarded[0]);
        assert_eq!(trace, CLIENT_TRACE);
        assert_ne!(parent, CLIENT_SPAN, "the client's span was forwarded as is");
        assert_eq!(flags, "01");
        assert_eq!(r.upstream_header("tracestate"), ["vendor=abc"]);

        let (request, decision) = rx.wait_trace(CLIENT_TRACE, &kw);
        // the upstream's parent is keyward's request span, itself a child
        // of the client's span; the decision is a child of the request
        assert_eq!(request.span_id, parent);
        assert_eq!(request.parent, CLIENT_SPAN);
        assert_eq!(decision.parent, request.span_id);
        assert_eq!(request.service, "keyward-test");
        assert_eq!(request.name, "GET /api/v1/workspaces/{workspaceId}/**");
        assert_eq!(request.int("http.response.status_code"), Some(200));
        assert_eq!(request.str("keyward.outcome"), Some("forwarded"));
        assert_eq!(
            request.str("url.path"),
            Some("/api/v1/workspaces/ws_a1/things")
        );
        assert_eq!(request.str("http.request.method"), Some("GET"));

        assert_eq!(decision.int("keyward.route"), Some(1));
        assert_eq!(
            decision.str("http.route"),
            Some("/api/v1/workspaces/{workspaceId}/**")
        );
        assert_eq!(decision.str("keyward.auth_method"), Some("api_key"));
        assert_eq!(decision.str("keyward.outcome"), Some("forwarded"));
        assert_eq!(
            decision.int("keyward.snapshot.generation"),
            Some(generation as i64)
        );
        // no organization id unless include_org
        for span in rx.spans() {
            assert!(!span.attrs.contains_key("keyward.org_id"), "{span:?}");
            assert!(
                !span
                    .attrs
                    .values()
                    .any(|v| matches!(v, Value::StringValue(s) if s.contains("org_a"))),
                "{span:?}"
            );
        }
    }

    #[test]
    fn include_org_and_refusals_and_traces_keyward_starts() {
        let world = World::new();
        let rx = Receiver::start();
        let kw = start(&world, &rx, "sample_ratio = 1.0\ninclude_org = true\n");

        // no traceparent: keyward starts the trace; a stray tracestate does
        // not belong to it
        let r = get_with(
            &kw,
            "/api/v1/workspaces/ws_a1/things",
            Some(&world.org_key),
            &[("tracestate", "vendor=stray")],
        );
        assert_eq!(r.status, 200, "{}", r.body_str());
        let forwarded = r.upstream_header("traceparent");
        assert_eq!(forwarded.len(), 1, "{forwarded:?}");
        let (trace, parent, flags) = parse_traceparent(&forwarded[0]);
        assert_eq!(flags, "01");
        assert!(r.upstream_header("tracestate").is_empty());
        let (request, decision) = rx.wait_trace(&trace, &kw);
        assert_eq!(request.span_id, parent);
        assert_eq!(request.parent, "", "a root span");
        assert_eq!(decision.str("keyward.org_id"), Some("org_a"));

        // a refusal is traced too, with its reason
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let r = get_with(
            &kw,
            "/api/v1/workspaces/ws_a1/things",
            Some("wvz_not_a_key"),
            &[("traceparent", tp)],
        );
        assert_eq!(r.status, 401, "{}", r.body_str());
        let (request, decision) = rx.wait_trace("0af7651916cd43dd8448eb211c80319c", &kw);
        assert_eq!(request.int("http.response.status_code"), Some(401));
        assert_eq!(request.str("keyward.outcome"), Some("unauthenticated"));
        assert_eq!(decision.str("keyward.outcome"), Some("unauthenticated"));
        assert!(decision.str("keyward.reason").is_some(), "{decision:?}");
        assert!(!decision.attrs.contains_key("keyward.org_id"));
    }

    #[test]
    fn ratio_zero_starts_nothing_but_follows_a_sampled_client() {
        let world = World::new();
        let rx = Receiver::start();
        let kw = start(&world, &rx, "sample_ratio = 0.0\n");
        let path = "/api/v1/workspaces/ws_a1/things";

        // not sampled: nothing forwarded, nothing exported
        let r = get_with(&kw, path, Some(&world.org_key), &[]);
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert!(r.upstream_header("traceparent").is_empty());
        // a client's unsampled trace passes unchanged
        let unsampled = client_traceparent("00");
        let r = get_with(
            &kw,
            path,
            Some(&world.org_key),
            &[("traceparent", &unsampled)],
        );
        assert_eq!(r.upstream_header("traceparent"), [unsampled]);

        // a sampled client trace is followed whatever the ratio
        let tp = "00-11111111111111111111111111111111-2222222222222222-01";
        let r = get_with(&kw, path, Some(&world.org_key), &[("traceparent", tp)]);
        let forwarded = r.upstream_header("traceparent");
        assert_eq!(forwarded.len(), 1);
        let (trace, parent, _) = parse_traceparent(&forwarded[0]);
        assert_eq!(trace, "11111111111111111111111111111111");
        let (request, _) = rx.wait_trace(&trace, &kw);
        assert_eq!(request.span_id, parent);
        // exported after the first two requests ended: they would be there
        std::thread::sleep(Duration::from_millis(300));
        let others: Vec<Got> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id != trace)
            .collect();
        assert!(others.is_empty(), "unsampled requests exported: {others:?}");
    }

    /// Export failures are keyward's log lines, never a request's problem.
    #[test]
    fn an_unreachable_receiver_is_logged_and_requests_still_pass() {
        let world = World::new();
        let closed = free_port(); // nothing listens there
        let mut opts = Opts::new(echo()).toml(&format!(
            "[tracing]\nendpoint = \"http://{closed}/v1/traces\"\nsample_ratio = 1.0\n"
        ));
        opts.env
            .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
        let kw = world.start_with(opts);
        for _ in 0..3 {
            let r = get_with(
                &kw,
                "/api/v1/workspaces/ws_a1/things",
                Some(&world.org_key),
                &[("traceparent", &client_traceparent("01"))],
            );
            assert_eq!(r.status, 200, "{}", r.body_str());
            assert_eq!(r.upstream_header("traceparent").len(), 1);
        }
        assert!(
            wait_until(EXPORT_TIMEOUT, || kw.log().contains("ExportError")),
            "no export error logged: {}",
            kw.log()
        );
    }

    #[test]
    fn spans_are_flushed_when_keyward_stops() {
        let world = World::new();
        let rx = Receiver::start();
        let mut opts = Opts::new(echo())
            .toml(&format!(
                "[tracing]\nendpoint = \"{}\"\nsample_ratio = 1.0\n",
                rx.endpoint()
            ))
            .set("server.shutdown_grace_s", 1);
        // no scheduled export before the stop
        opts.env
            .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into()));
        let mut kw = world.start_with(opts);
        kw.wait_catches(libc::SIGTERM);
        let tp = client_traceparent("01");
        let r = get_with(
            &kw,
            "/api/v1/workspaces/ws_a1/things",
            Some(&world.org_key),
            &[("traceparent", &tp)],
        );
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.spans().is_empty(), "exported before the stop");
        kw.signal(libc::SIGTERM);
        assert!(
            kw.wait_exit(Duration::from_secs(15)).is_some(),
            "did not exit: {}",
            kw.log()
        );
        let spans = rx.in_trace(CLIENT_TRACE);
        assert!(
            spans.iter().any(|s| s.kind == SpanKind::Server as i32)
                && spans.iter().any(|s| s.name == "keyward.decide"),
            "spans not flushed on SIGTERM: {:?}; log: {}",
            rx.spans(),
            kw.log()
        );
    }
}
