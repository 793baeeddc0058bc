//! `keyward explain`'s text: the answer, the trace, the identity headers,
//! and the line of the config the matched route starts on.

use super::*;

/// The 1-based line of route `index`'s `[[route]]` in the config text.
pub fn route_line(config_text: &str, index: usize) -> Option<usize> {
    config_text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[route]]")
        .nth(index)
        .map(|(n, _)| n + 1)
}

/// Human-readable transcript.
pub fn render_text(req: &Request, e: &Explained, config_text: Option<&str>) -> String {
    let mut out = format!("request     {} {}\n", req.method, req.target);
    for s in &e.steps {
        let mut detail = s.detail.clone();
        if s.step == "route" {
            if let (Some(text), Some(index)) = (config_text, route_index(&s.detail)) {
                if let Some(line) = route_line(text, index) {
                    detail.push_str(&format!(" — config line {line}"));
                }
            }
        }
        out.push_str(&format!("{:<11} {detail}\n", s.step));
    }
    if let Some(r) = &e.rate {
        out.push_str(&format!(
            "{:<11} X-RateLimit-Limit {}, X-RateLimit-Remaining {}, X-RateLimit-Reset {}\n",
            "rate", r.limit, r.remaining, r.reset
        ));
    }
    match &e.answer {
        Answer::Forward { headers } => {
            out.push_str("answer      forwarded; the upstream receives:\n");
            for (k, v) in headers {
                out.push_str(&format!("              {k}: {v}\n"));
            }
        }
        Answer::Refuse {
            status,
            code,
            reason,
        } => {
            out.push_str(&format!(
                "answer      {status} {code}{}\n",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ));
        }
    }
    out
}

pub(super) fn route_index(detail: &str) -> Option<usize> {
    detail.strip_prefix('#')?.split(' ').next()?.parse().ok()
}
