//! Workspace sources (SPEC §5): find the target workspace (or resource id)
//! a route names, in the path, query, a header or the JSON body. Ambiguity is
//! an error (400), absence is "found nothing". Pure: no store, no pingora.

use std::borrow::Cow;

use http::HeaderMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::routes::{Captures, WorkspaceSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceError {
    Ambiguous,
    NotJson,
    NotString,
}

impl SourceError {
    pub fn reason(self) -> &'static str {
        match self {
            SourceError::Ambiguous => "ambiguous_workspace",
            SourceError::NotJson => "body_not_json",
            SourceError::NotString => "workspace_not_a_string",
        }
    }
}

/// What a route's rule found: nothing, or the raw id (a workspace id, or a
/// resource id for `resource_*` rules).
pub fn find<'a>(
    source: &WorkspaceSource,
    path: &'a str,
    captures: &Captures,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: Option<&[u8]>,
) -> Result<Option<Cow<'a, str>>, SourceError> {
    match source {
        WorkspaceSource::Path(i) | WorkspaceSource::ResourcePath(i) => {
            Ok(captures.get(path, *i).map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap_or(Cow::Borrowed(s))
            }))
        }
        WorkspaceSource::Query(name) => query_param(query.unwrap_or(""), name),
        WorkspaceSource::Header(name) => {
            // Another spelling of the name (`_` for `-`) is a second copy to
            // upstreams that read headers CGI-style (X_Ws and X-Ws are one).
            if headers
                .keys()
                .any(|k| k.as_str() != name && same_but_underscores(k.as_str(), name))
            {
                return Err(SourceError::Ambiguous);
            }
            let mut values = headers.get_all(name.as_str()).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(_), Some(_)) => Err(SourceError::Ambiguous),
                (Some(v), None) => match v.to_str() {
                    Ok(s) if s.trim().is_empty() => Ok(None),
                    // a list is the same header repeated (RFC 9110 §5.3)
                    Ok(s) if s.contains(',') => Err(SourceError::Ambiguous),
                    Ok(s) => Ok(Some(Cow::Borrowed(s.trim()))),
                    Err(_) => Err(SourceError::NotString),
                },
            }
        }
        WorkspaceSource::Body(field) | WorkspaceSource::ResourceBody(field) => {
            body_field(body.unwrap_or(&[]), field).map(|o| o.map(Cow::Owned))
        }
    }
}

/// Equal when every `_` is read as `-` (`name` is lowercase, as header names are).
fn same_but_underscores(header: &str, name: &str) -> bool {
    header.len() == name.len()
        && header
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-') || (a == b'-' && b == b'_'))
}

fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, SourceError> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        if k == name {
            if found.is_some() {
                return Err(SourceError::Ambiguous);
            }
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| SourceError::NotString)?;
            found = Some(v);
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// The string value of a top-level JSON field. Empty body or missing field:
/// nothing. Not JSON: `NotJson`. The field twice: `Ambiguous`. A non-string
/// value: `NotString`. A top-level value that is not an object: nothing.
pub fn body_field(body: &[u8], field: &str) -> Result<Option<String>, SourceError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    struct Seed<'f>(&'f str);
    #[derive(Default)]
    struct Found {
        value: Option<String>,
        error: Option<SourceError>,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Found;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let mut found = Found::default();
            let mut seen = false;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == self.0 {
                    let v: serde_json::Value = map.next_value()?;
                    if seen {
                        found.error = Some(SourceError::Ambiguous);
                    }
                    seen = true;
                    match v {
                        serde_json::Value::String(s) => found.value = Some(s),
                        _ => found.error = found.error.or(Some(SourceError::NotString)),
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Found::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Found, E> {
            Ok(Found::default())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
            Ok(Found::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
            Ok(Found::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
            Ok(Found::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
            Ok(Found::default())
        }
        fn visit_unit<E>(self) -> Result<Found, E> {
            Ok(Found::default())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Seed(field)
        .deserialize(&mut de)
        .map_err(|_| SourceError::NotJson)?;
    de.end().map_err(|_| SourceError::NotJson)?;
    match found.error {
        Some(e) => Err(e),
        None => Ok(found.value.filter(|v| !v.is_empty())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_fields() {
        assert_eq!(
            body_field(
                br#"{"workspaceId":"ws_1","x":[1,{"workspaceId":2}]}"#,
                "workspaceId"
            ),
            Ok(Some("ws_1".into()))
        );
        assert_eq!(body_field(b"", "workspaceId"), Ok(None));
        assert_eq!(body_field(b"{}", "workspaceId"), Ok(None));
        assert_eq!(body_field(b"[1,2]", "workspaceId"), Ok(None));
        assert_eq!(
            body_field(b"{nope", "workspaceId"),
            Err(SourceError::NotJson)
        );
        assert_eq!(body_field(br#"{"a":1} x"#, "a"), Err(SourceError::NotJson));
        assert_eq!(
            body_field(br#"{"workspaceId":"a","workspaceId":"b"}"#, "workspaceId"),
            Err(SourceError::Ambiguous)
        );
        assert_eq!(
            body_field(br#"{"workspaceId":5}"#, "workspaceId"),
            Err(SourceError::NotString)
        );
        assert_eq!(
            body_field(br#"{"workspaceId":null}"#, "workspaceId"),
            Err(SourceError::NotString)
        );
        assert_eq!(
            body_field(br#"{"work\u0073paceId":"ws_9"}"#, "workspaceId"),
            Ok(Some("ws_9".into()))
        );
    }

    #[test]
    fn header_source_in_another_spelling_is_ambiguous() {
        let source = WorkspaceSource::Header("x-target-workspace".into());
        let find_in = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            find(&source, "/", &Captures::default(), None, &h, None)
                .map(|o| o.map(|c| c.into_owned()))
        };
        assert_eq!(
            find_in(&[("X-Target-Workspace", "ws_1")]),
            Ok(Some("ws_1".into()))
        );
        assert_eq!(
            find_in(&[
                ("X-Target-Workspace", "ws_1"),
                ("X_Target_Workspace", "ws_2")
            ]),
            Err(SourceError::Ambiguous)
        );
        assert_eq!(
            find_in(&[("x_target-workspace", "ws_2")]),
            Err(SourceError::Ambiguous)
        );
        assert_eq!(find_in(&[("X-Target-Workspacex", "ws_2")]), Ok(None));
        assert_eq!(
            find_in(&[("X-Target-Workspace", "ws_1, ws_2")]),
            Err(SourceError::Ambiguous)
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("a=1&workspaceId=ws%5F1", "workspaceId"),
            Ok(Some(Cow::Borrowed("ws_1")))
        );
        assert_eq!(
            query_param("workspaceId=a&workspaceId=b", "workspaceId"),
            Err(SourceError::Ambiguous)
        );
        assert_eq!(query_param("x=1", "workspaceId"), Ok(None));
        assert_eq!(query_param("workspaceId=", "workspaceId"), Ok(None));
    }
}
