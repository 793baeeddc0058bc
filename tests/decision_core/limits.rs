//! Plan limits, the per-IP throttle, MCP challenges (SPEC §6, §3.1).

use super::*;

#[test]
fn exactly_the_plan_limit_is_admitted_spec_6() {
    let w = World::new("");
    let req = get("/api/v1/x").bearer("wvz_tiny");
    let (first, r1) = w.run(&req);
    assert!(matches!(first, Got::Forward(_)));
    assert_eq!(r1.unwrap().remaining, 1);
    let (second, r2) = w.run(&req);
    assert!(matches!(second, Got::Forward(_)));
    assert_eq!(r2.unwrap().remaining, 0);
    let (third, r3) = w.run(&req);
    assert_eq!(third, refuse(429, "RATE_LIMIT_EXCEEDED", ""));
    let r3 = r3.unwrap();
    assert_eq!((r3.limit, r3.remaining), (2, 0));
    assert_eq!(
        r3.reset % 60,
        0,
        "windows are aligned to multiples of window_s"
    );
}

#[test]
fn denied_requests_do_not_use_up_the_window_spec_6() {
    let w = World::new("");
    // two refusals (another org's workspace) then both admissions still there
    for _ in 0..2 {
        let (got, rate) = w.run(&get("/api/v1/workspaces/ws_b/c").bearer("wvz_tiny"));
        assert_eq!(
            got,
            refuse(403, "SCOPE_DENIED", "workspace_of_another_organization")
        );
        assert_eq!(
            rate.unwrap().limit,
            2,
            "denials carry the organization's headers"
        );
    }
    let (got, rate) = w.run(&get("/api/v1/x").bearer("wvz_tiny"));
    assert!(matches!(got, Got::Forward(_)));
    assert_eq!(rate.unwrap().remaining, 1, "the refusals were not counted");
}

#[test]
fn organization_override_plan_fallback_and_unlimited_callers_spec_6() {
    let w = World::new("");
    let req = get("/api/v1/x").bearer("wvz_override");
    assert!(matches!(w.run(&req).0, Got::Forward(_)));
    assert_eq!(
        w.run(&req).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", ""),
        "organizations.rate_limit overrides the plan"
    );
    // a plan with no table and no [plans.default]: not limited, no headers
    let (got, rate) = w.run(&get("/api/v1/x").bearer("wvz_noplan"));
    assert!(matches!(got, Got::Forward(_)) && rate.is_none());
    // service keys are not limited by default, with or without an organization
    for _ in 0..5 {
        let (got, rate) = w.run(
            &get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_tiny"),
        );
        assert!(matches!(got, Got::Forward(_)) && rate.is_none());
    }
    // requests without an organization carry no headers
    let (_, rate) = w.run(&get("/api/v1/x"));
    assert!(rate.is_none());
    let w = World::new("[plans.default]\nrequests_per_window = 1\n");
    let req = get("/api/v1/x").bearer("wvz_noplan");
    assert!(matches!(w.run(&req).0, Got::Forward(_)));
    assert_eq!(
        w.run(&req).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", ""),
        "[plans.default] applies"
    );
}

#[test]
fn failed_authentications_are_throttled_per_ip_spec_6() {
    let w = World::new("[rate_limit]\nauth_failures_per_ip = 3\n");
    // a valid key first: known valid keys keep working past the limit
    assert!(matches!(
        w.run(&get("/api/v1/x").bearer("wvz_org_a")).0,
        Got::Forward(_)
    ));
    for _ in 0..10 {
        assert_eq!(
            w.run(&get("/api/v1/x")).0,
            refuse(401, "UNAUTHENTICATED", "missing_credential"),
            "requests without a credential are never counted"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            w.run(&get("/api/v1/x").bearer("wvz_nope")).0,
            refuse(401, "UNAUTHENTICATED", "unknown")
        );
    }
    let loads = w.dir.token_loads.get();
    assert_eq!(
        w.run(&get("/api/v1/x").bearer("wvz_other")).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", "")
    );
    assert_eq!(
        w.dir.token_loads.get(),
        loads,
        "a throttled IP does not reach the store"
    );
    assert_eq!(
        w.run(&get("/api/v1/x")).0,
        refuse(401, "UNAUTHENTICATED", "missing_credential")
    );
}

#[test]
fn mcp_challenges_spec_3_1() {
    let w = World::new("");
    let challenge = |req: Req<'_>| {
        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers.insert(http::header::HOST, HeaderValue::from_static("kw.test"));
        let method = Method::GET;
        let facts = RequestFacts {
            method: &method,
            path: req.target,
            query: None,
            headers: &headers,
            client: keyward::request::forwarding::Client::resolve(
                "192.0.2.1".parse().unwrap(),
                false,
                &headers,
                &[],
            ),
        };
        let env = Env {
            policy: &w.policy,
            directory: &w.dir,
            limiter: &w.limiter,
            throttle: &w.throttle,
            now: NOW,
            trace: None,
        };
        match decide(&facts, &env) {
            Decision::Refuse(r) => r.denial.headers(),
            _ => panic!("not refused"),
        }
    };
    let www = |h: Option<(http::HeaderName, String)>| match h {
        Some((k, v)) if k == http::header::WWW_AUTHENTICATE => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        www(challenge(get("/mcp/srv_oauth/sse").bearer("mcp_nope"))),
        "Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\", error=\"invalid_token\""
    );
    assert_eq!(
        www(challenge(get("/mcp/srv_oauth/sse"))),
        "Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\""
    );
    assert_eq!(
        www(challenge(get("/mcp/srv_bearer/sse").bearer("mcp_nope"))),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(www(challenge(get("/mcp/srv_bearer/sse"))), "Bearer");
}
