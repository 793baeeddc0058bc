//! One request/response exchange on an upstream connection: the head, the
//! request body up while the response streams down, 1xx relays, the
//! WebSocket switch, and whether the connection may be pooled after.

use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::{Error, ErrorType, RetryType};

use super::head::{close_delimited, Unforwardable};
use super::{Failure, Forwarded, Upstream};
use crate::http::streams::{Closing, Stream};

/// Longest keyward waits to hand a closing SSE stream its final event.
const FINAL_EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Upstream {
    pub(super) async fn exchange(
        &self,
        session: &mut ServerSession,
        mut up: UpstreamSession,
        req: Box<RequestHeader>,
        inspected: Option<Bytes>,
        on_response: impl Fn(&mut http::HeaderMap),
        mut stream: Option<&mut Stream>,
    ) -> Result<Forwarded, Exchange> {
        up.read_timeout = self.peer.options.read_timeout;
        up.write_timeout = self.peer.options.write_timeout;
        // Failures before the upstream said anything may be retried (pingora
        // marks which errors a reused connection may have caused; the caller
        // retries only on a reused one).
        let early = |e: Box<Error>| {
            if !matches!(e.retry, RetryType::Decided(false)) {
                Exchange::Retry(e)
            } else {
                Exchange::Failed(upstream_failure(&e, false))
            }
        };
        // A 101 is relayed only in answer to a forwarded WebSocket handshake
        // (the only upgrade keyward forwards, and re-states); any other
        // leaves the connection in neither protocol (SPEC §5.1).
        let websocket = req.headers.contains_key(header::UPGRADE);
        let client = session.req_header().version;
        let head_request = session.req_header().method == http::Method::HEAD;
        up.write_request_header(req).await.map_err(early)?;
        let mut request_done = true;
        if let Some(body) = inspected {
            if !body.is_empty() {
                up.write_body(&body).await.map_err(early)?;
            }
            up.finish_body().await.map_err(early)?;
        } else if !session.is_body_empty() {
            request_done = false;
        } else {
            up.finish_body().await.map_err(early)?;
        }

        let mut status = 0u16;
        let mut answered = false;
        let mut response_done = false;
        let mut upgraded = false;
        // The request body was not sent to its end (the upstream answered
        // early): pingora's reuse check looks only at the response.
        let mut request_cut = false;
        // the response is an event stream (a closing one gets a final event)
        let mut event_stream = false;
        let follows = stream.is_some();
        // Duplex: the request body goes up while the response may already
        // come down (pingora's reads here are cancel-safe; writes are awaited
        // inside the branch, never cancelled).
        while !request_done || !response_done {
            tokio::select! {
                closing = closed(&mut stream), if follows => {
                    // The credential no longer stands (SPEC §8.2 Streams):
                    // neither connection carries anything more.
                    drop(up);
                    session.set_keepalive(None);
                    if answered && event_stream && !upgraded {
                        let _ = tokio::time::timeout(FINAL_EVENT_WAIT, async {
                            session.write_response_body(final_event(&closing), false).await?;
                            session.write_response_body(Bytes::new(), true).await
                        })
                        .await;
                    }
                    return Err(Exchange::Failed(Failure::Closed { closing, answered }));
                }
                chunk = session.read_request_body(), if !request_done => match chunk {
                    Ok(Some(data)) => {
                        if upgraded {
                            up.maybe_upgrade_body_writer();
                        }
                        up.write_body(&data).await.map_err(|e| fail(&e, answered))?;
                    }
                    Ok(None) => {
                        request_done = true;
                        up.finish_body().await.map_err(|e| fail(&e, answered))?;
                    }
                    Err(_) => return Err(Exchange::Failed(Failure::Downstream)),
                },
                task = read_task(&mut up, client, &on_response), if !response_done => {
                    let task = match task {
                        Ok(t) => t,
                        Err(e) if !answered && status == 0 => return Err(early(e)),
                        Err(e) => return Err(fail(&e, answered)),
                    };
                    response_done = task.is_end();
                    match task {
                        HttpTask::Header(resp, end) => {
                            let code = resp.status.as_u16();
                            if (100..200).contains(&code) && code != 101 {
                                // informational: relay (never to an HTTP/1.0
                                // client, RFC 9110 §15.2), the final answer follows
                                status = code;
                                response_done = false;
                                if client != http::Version::HTTP_10 {
                                    session.write_response_header(resp).await.map_err(|_| down())?;
                                }
                                continue;
                            }
                            if code == 101 && !websocket {
                                tracing::warn!("upstream answered 101 to a request that asked for no upgrade");
                                return Err(Exchange::Failed(Failure::Upstream { timeout: false, answered: false }));
                            }
                            status = code;
                            event_stream = is_event_stream(&resp);
                            if code != 101 && close_delimited(resp.status, &resp.headers, head_request) {
                                // the close ends the body: the head says so
                                // (pingora decides after writing `Connection`)
                                session.set_keepalive(None);
                            }
                            session.write_response_header(resp).await.map_err(|_| down())?;
                            answered = true;
                            if end {
                                session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                            }
                            if !upgraded && up.was_upgraded() && session.was_upgraded() {
                                // The connection now carries another protocol both
                                // ways until either side closes.
                                upgraded = true;
                                up.maybe_upgrade_body_writer();
                                request_done = false;
                            }
                        }
                        HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                            if let Some(data) = data {
                                session.write_response_body(data, end).await.map_err(|_| down())?;
                            } else if end {
                                session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                            }
                        }
                        HttpTask::Done => {
                            session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                        }
                        HttpTask::Trailer(_) => {}
                        HttpTask::Failed(e) => return Err(fail(&e, answered)),
                    }
                    if response_done && !upgraded && !request_done {
                        // The upstream answered before the request body ended:
                        // stop reading it; both connections close (each is
                        // mid-message and must never carry another request).
                        session.set_keepalive(None);
                        request_done = true;
                        request_cut = true;
                    }
                }
            }
        }

        if upgraded || request_cut {
            // Not reusable: dropping the session closes the connection.
            drop(up);
        } else {
            self.release(up).await;
        }
        Ok(Forwarded { status })
    }
}

/// The next piece of the response, as pingora's `read_response_task`
/// reads it, except the head: that one clones the parsed head with its
/// case-preserving name map for every response; here it is rebuilt as
/// plain `http` parts, as the client may read it (`head::client_response`;
/// no name map, so keyward's response headers — `on_response`, for the final
/// head — go in with static names, and names go down in canonical case).
async fn read_task(
    up: &mut UpstreamSession,
    client: http::Version,
    on_response: &impl Fn(&mut http::HeaderMap),
) -> pingora::Result<HttpTask> {
    // a head to read: none yet, or only informational ones (101 switches)
    let head = !matches!(up.get_status().map(|s| s.as_u16()), Some(101 | 200..));
    if head {
        up.read_response().await?;
        let end = up.is_body_done();
        let resp = up
            .resp_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response head"))?;
        let mut parts = super::head::client_response(resp, client)
            .map_err(|Unforwardable(why)| Error::explain(ErrorType::InvalidHTTPHeader, why))?;
        if !parts.status.is_informational() || parts.status.as_u16() == 101 {
            on_response(&mut parts.headers);
        }
        Ok(HttpTask::Header(Box::new(ResponseHeader::from(parts)), end))
    } else if up.is_body_done() {
        Ok(HttpTask::Done)
    } else {
        let body = up.read_body_bytes().await?;
        let end = up.is_body_done();
        if up.was_upgraded() {
            Ok(HttpTask::UpgradedBody(body, end))
        } else {
            Ok(HttpTask::Body(body, end))
        }
    }
}

pub(super) enum Exchange {
    /// Nothing was answered and the failed connection was a reused one.
    Retry(Box<Error>),
    Failed(Failure),
}

/// Resolves when the followed stream must close.
async fn closed(stream: &mut Option<&mut Stream>) -> Closing {
    match stream {
        Some(s) => s.closed().await,
        None => std::future::pending().await,
    }
}

/// A chunked or close-delimited `text/event-stream` response, which can take
/// one more event.
fn is_event_stream(resp: &ResponseHeader) -> bool {
    !resp.headers.contains_key(header::CONTENT_LENGTH)
        && resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
            })
}

/// The last event of a closed SSE stream: `event: error` with the
/// contract's JSON (SPEC §7) as its data. It starts with a blank line, which
/// ends any event the upstream left half-sent.
fn final_event(closing: &Closing) -> Bytes {
    let mut out = b"\n\nevent: error\ndata: ".to_vec();
    out.extend_from_slice(&closing.denial.body());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn down() -> Exchange {
    Exchange::Failed(Failure::Downstream)
}

fn fail(e: &Error, answered: bool) -> Exchange {
    Exchange::Failed(upstream_failure(e, answered))
}

pub(super) fn upstream_failure(e: &Error, answered: bool) -> Failure {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    Failure::Upstream { timeout, answered }
}
