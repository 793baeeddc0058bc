//! Workspace sources (SPEC §5, §5.1): find the target workspace (or resource
//! id) a route names, in the path, query, a header or the JSON body, and
//! refuse wherever the upstream could read another one: ambiguity and a
//! second source that disagrees are errors (400), absence is "found
//! nothing", an id keyward could not put in a header is `malformed_id`
//! before any lookup. Also owns which bodies can be inspected at all (415).
//! Pure: no store, no pingora.

use std::borrow::Cow;

use http::HeaderMap;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::request::headers::{count, single, spelled_as, Count};
use crate::routes::{Captures, Route, WorkspaceSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceError {
    Ambiguous,
    NotJson,
    NotString,
    /// not 1–256 bytes of visible ASCII after percent-decoding
    MalformedId,
    /// a query parameter of the rule's name names another workspace
    Conflicting,
}

impl SourceError {
    pub fn reason(self) -> &'static str {
        match self {
            SourceError::Ambiguous => "ambiguous_workspace",
            SourceError::NotJson => "body_not_json",
            SourceError::NotString => "workspace_not_a_string",
            SourceError::MalformedId => "malformed_id",
            SourceError::Conflicting => "conflicting_workspace",
        }
    }
}

/// Longest workspace, resource or MCP server id taken from a request.
pub const MAX_ID_LEN: usize = 256;

/// An id keyward may look up and forward (SPEC §5.1): 1–256 bytes of
/// visible ASCII, no controls, no spaces.
pub fn valid_id(id: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// Empty: found nothing; valid: the id; else `MalformedId`.
fn checked(id: Cow<'_, str>) -> Result<Option<Cow<'_, str>>, SourceError> {
    if id.is_empty() {
        Ok(None)
    } else if valid_id(id.as_bytes()) {
        Ok(Some(id))
    } else {
        Err(SourceError::MalformedId)
    }
}

/// An id captured from the (normalized) path, percent-decoded and checked:
/// a workspace, a resource or an MCP server.
pub fn path_id(segment: &str) -> Result<Option<Cow<'_, str>>, SourceError> {
    if !segment.contains('%') {
        return checked(Cow::Borrowed(segment));
    }
    let bytes: Cow<'_, [u8]> = percent_encoding::percent_decode_str(segment).into();
    if !valid_id(&bytes) {
        return Err(SourceError::MalformedId);
    }
    // visible ASCII is UTF-8
    Ok(Some(Cow::Owned(
        String::from_utf8(bytes.into_owned()).expect("ASCII"),
    )))
}

/// The workspace (or resource id) a route's rule names, after every rule of
/// SPEC §5.1 about reading it one way: the id is well formed, and on a
/// `path:` or `header:` rule no query parameter of the rule's name (plain or
/// bracketed, any case) names another workspace. Routes without a rule
/// find nothing.
pub fn resolve<'a>(
    route: &Route,
    path: &'a str,
    captures: &Captures,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
    body: Option<&[u8]>,
) -> Result<Option<Cow<'a, str>>, SourceError> {
    let Some(source) = &route.workspace else {
        return Ok(None);
    };
    let found = find(source, path, captures, query, headers, body)?;
    if matches!(
        source,
        WorkspaceSource::Path(_) | WorkspaceSource::Header(_)
    ) {
        if let Some(name) = route.workspace_name() {
            let scan = QueryScan::of(query.unwrap_or(""), name)?;
            match scan.count {
                0 => {}
                1 => {
                    let other = form_decode(scan.value.unwrap_or(""))?;
                    if !other.is_empty() && found.as_deref() != Some(&*other) {
                        return Err(SourceError::Conflicting);
                    }
                }
                _ => return Err(SourceError::Ambiguous),
            }
        }
    }
    Ok(found)
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
            match captures.get(path, *i) {
                Some(s) => path_id(s),
                None => Ok(None),
            }
        }
        WorkspaceSource::Query(name) => query_param(query.unwrap_or(""), name),
        WorkspaceSource::Header(name) => {
            // Another spelling of the name (`_` for `-`) is a second copy to
            // upstreams that read headers CGI-style (X_Ws and X-Ws are one).
            if headers
                .keys()
                .any(|k| k.as_str() != name && spelled_as(k.as_str(), name))
            {
                return Err(SourceError::Ambiguous);
            }
            match count(headers, name.as_str()) {
                Count::Absent => Ok(None),
                Count::Repeated => Err(SourceError::Ambiguous),
                Count::Once(v) => match v.to_str() {
                    Ok(s) if s.trim().is_empty() => Ok(None),
                    // a list is the same header repeated (RFC 9110 §5.3)
                    Ok(s) if s.contains(',') => Err(SourceError::Ambiguous),
                    Ok(s) => checked(Cow::Borrowed(s.trim())),
                    Err(_) => Err(SourceError::MalformedId),
                },
            }
        }
        WorkspaceSource::Body(field) | WorkspaceSource::ResourceBody(field) => {
            match body_field(body.unwrap_or(&[]), field)? {
                Some(v) => checked(Cow::Owned(v)),
                None => Ok(None),
            }
        }
    }
}

/// Where a query names a parameter: how often (plain, bracketed `NAME[]` /
/// `NAME[…]` as Express `qs` reads arrays and objects, or in another letter
/// case as ASP.NET binds it), whether any was bracketed, and the first raw
/// value. A `;` that older parsers split pairs on, inside a pair that names
/// NAME or before a NAME, is a second reading: `Ambiguous`.
/// Where some upstream parser starts another pair inside what a standard
/// one reads as one: `;` (Rack 2, Go < 1.17, Python < 3.9.2) and `?` (Hono
/// finds a parameter by searching the raw URL for `?NAME=`, so
/// `??workspaceId=ws_b` or `x=?workspaceId=ws_b` names ws_b to it).
const SECOND_READING: [char; 2] = [';', '?'];

#[derive(Debug, Default)]
struct QueryScan<'a> {
    count: usize,
    /// some occurrence was bracketed or spelled in another letter case
    variant: bool,
    value: Option<&'a str>,
}

impl<'a> QueryScan<'a> {
    fn of(query: &'a str, name: &str) -> Result<QueryScan<'a>, SourceError> {
        let mut scan = QueryScan::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match key_names(k, name) {
                Some(variant) => {
                    if v.contains(SECOND_READING) {
                        return Err(SourceError::Ambiguous);
                    }
                    scan.count += 1;
                    scan.variant |= variant;
                    scan.value.get_or_insert(v);
                }
                None if pair.contains(SECOND_READING) => {
                    let split = pair.split(SECOND_READING);
                    if split
                        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
                        .any(|k| key_names(k, name).is_some())
                    {
                        return Err(SourceError::Ambiguous);
                    }
                }
                None => {}
            }
        }
        Ok(scan)
    }
}

/// Whether a raw query key names `name`, after form-decoding, ignoring
/// ASCII case and any `[…]` suffix: `Some(variant)`, where `variant` says it
/// was not spelled exactly `name` (bracketed, or another letter case).
fn key_names(raw_key: &str, name: &str) -> Option<bool> {
    let key = form_decode_lossy(raw_key);
    let base = match key.find('[') {
        Some(i) => &key[..i],
        None => &key[..],
    };
    base.eq_ignore_ascii_case(name)
        .then(|| base.len() != key.len() || base != name)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), as every
/// common query parser reads a value.
fn form_decode(v: &str) -> Result<Cow<'_, str>, SourceError> {
    if !v.contains(['%', '+']) {
        return Ok(Cow::Borrowed(v));
    }
    let spaced = v.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| Cow::Owned(c.into_owned()))
        .map_err(|_| SourceError::MalformedId)
}

fn form_decode_lossy(v: &str) -> Cow<'_, str> {
    if !v.contains(['%', '+']) {
        return Cow::Borrowed(v);
    }
    let spaced = v.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// A `query:` rule's value: the parameter exactly once, spelled exactly
/// (a bracketed or case-variant spelling is read by some upstreams and not
/// by others: `Ambiguous`), form-decoded and checked as an id.
fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, SourceError> {
    let scan = QueryScan::of(query, name)?;
    if scan.count > 1 || scan.variant {
        return Err(SourceError::Ambiguous);
    }
    match scan.value {
        None => Ok(None),
        Some(v) => checked(form_decode(v)?),
    }
}

/// No `charset` parameter, or `utf-8` (any case, quoted or not): keyward
/// reads the body as UTF-8, and Express' body-parser decodes any `utf-*`
/// charset it is given (`charset=utf-7` hides a second key in `+ACI-`).
fn utf8_charset(content_type: &[u8]) -> bool {
    content_type.split(|&b| b == b';').skip(1).all(|param| {
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            return true;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") {
            return true;
        }
        let value = param[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        value.eq_ignore_ascii_case(b"utf-8")
    })
}

/// Why an inspected body is refused (415 UNSUPPORTED_MEDIA_TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaError {
    /// not `application/json` or `application/*+json`
    Unsupported,
    /// a `Content-Encoding` other than `identity`
    Encoded,
}

impl MediaError {
    pub fn reason(self) -> &'static str {
        match self {
            MediaError::Unsupported => "unsupported_media_type",
            MediaError::Encoded => "encoded_body",
        }
    }
}

/// Whether a body a route inspects can be read one way (SPEC §5.1): judged
/// from the head before the body is read. An empty body (no
/// `Transfer-Encoding`, `Content-Length` absent or 0) always can. Otherwise
/// exactly one `Content-Type` of `application/json` or `application/*+json`
/// (parameters allowed, no list) and no coding but `identity`: a form parser
/// reads a JSON/form polyglot another way, and a compressed body (brotli has
/// no magic bytes) is not what keyward would read.
pub fn inspectable_body(headers: &HeaderMap) -> Result<(), MediaError> {
    let non_empty = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'));
    if !non_empty {
        return Ok(());
    }
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(MediaError::Encoded);
    }
    let Some(ct) = single(headers, http::header::CONTENT_TYPE) else {
        return Err(MediaError::Unsupported);
    };
    let ct = ct.as_bytes();
    if ct.contains(&b',') {
        return Err(MediaError::Unsupported);
    }
    if !utf8_charset(ct) {
        return Err(MediaError::Unsupported);
    }
    let media = ct
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(slash) = media.iter().position(|&b| b == b'/') else {
        return Err(MediaError::Unsupported);
    };
    let (kind, sub) = (&media[..slash], &media[slash + 1..]);
    let token = |t: &[u8]| {
        !t.is_empty()
            && t.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let json = sub.eq_ignore_ascii_case(b"json")
        || (sub.len() > 5
            && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json")
            && token(&sub[..sub.len() - 5]));
    if kind.eq_ignore_ascii_case(b"application") && json {
        Ok(())
    } else {
        Err(MediaError::Unsupported)
    }
}

/// Whether a JSON key is `field` to a decoder that matches names ignoring
/// case (Go folds `ſ` to `s` and the Kelvin sign to `k` too).
fn folds_to(key: &str, field: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(field.chars().map(fold))
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
                    if folds_to(&key, self.0) {
                        // Go's encoding/json and System.Text.Json match
                        // field names ignoring case: a second copy to them
                        found.error = Some(SourceError::Ambiguous);
                    }
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
        for body in [
            r#"{"workspaceId":"a","WorkspaceId":"b"}"#,
            r#"{"WORKSPACEID":"b","workspaceId":"a"}"#,
            "{\"workspaceId\":\"a\",\"work\u{17F}paceId\":\"b\"}",
        ] {
            assert_eq!(
                body_field(body.as_bytes(), "workspaceId"),
                Err(SourceError::Ambiguous),
                "{body}"
            );
        }
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
        for q in [
            "workspaceId=a&workspaceId[]=b",
            "workspaceId[]=a",
            "workspaceId[0]=a",
            "workspaceId=a&WorkspaceID=b",
            "WorkspaceID=a",
            "workspace%49d=a&workspaceId=a",
            "workspaceId=a;b",
            "x=1;workspaceId=b&workspaceId=a",
            "workspaceId=0&workspaceId;",
            "?workspaceId=b&workspaceId=a",
            "x=?workspaceId=b&workspaceId=a",
            "workspaceId=a?workspaceId=b",
        ] {
            assert_eq!(
                query_param(q, "workspaceId"),
                Err(SourceError::Ambiguous),
                "{q}"
            );
        }
        assert_eq!(
            query_param("workspaceId=a+b", "workspaceId"),
            Err(SourceError::MalformedId)
        );
        assert_eq!(
            query_param("workspaceId=a%0Ab", "workspaceId"),
            Err(SourceError::MalformedId)
        );
        assert_eq!(
            query_param("filter=a;b&workspaceId=ws", "workspaceId"),
            Ok(Some(Cow::Borrowed("ws")))
        );
    }

    fn table(toml_routes: &str) -> crate::routes::RouteTable {
        #[derive(serde::Deserialize)]
        struct T {
            route: Vec<crate::routes::RawRoute>,
        }
        let t: T = toml::from_str(toml_routes).unwrap();
        crate::routes::RouteTable::compile(t.route).unwrap()
    }

    #[test]
    fn a_second_source_in_the_query_must_agree() {
        let t =
            table("[[route]]\npath = \"/w/{workspaceId}/**\"\nworkspace = \"path:workspaceId\"\n");
        let r = &t.routes()[0];
        let h = HeaderMap::new();
        let path = "/w/ws_a/x";
        let (_, caps) = t.find(&http::Method::GET, path);
        let res =
            |q: Option<&str>| resolve(r, path, &caps, q, &h, None).map(|o| o.map(Cow::into_owned));
        assert_eq!(res(None), Ok(Some("ws_a".into())));
        assert_eq!(res(Some("workspaceId=ws_a")), Ok(Some("ws_a".into())));
        assert_eq!(res(Some("workspaceId=")), Ok(Some("ws_a".into())));
        assert_eq!(res(Some("workspaceId=ws_b")), Err(SourceError::Conflicting));
        assert_eq!(
            res(Some("workspaceId[]=ws_b")),
            Err(SourceError::Conflicting)
        );
        assert_eq!(res(Some("WORKSPACEID=ws_b")), Err(SourceError::Conflicting));
        assert_eq!(
            res(Some("workspaceId=ws_a&workspaceId[]=ws_a")),
            Err(SourceError::Ambiguous)
        );
        let (_, caps) = t.find(&http::Method::GET, "/w/kw%0Aprobe/x");
        assert_eq!(
            resolve(r, "/w/kw%0Aprobe/x", &caps, None, &h, None),
            Err(SourceError::MalformedId)
        );
        let long = format!("/w/{}/x", "a".repeat(300));
        let (_, caps) = t.find(&http::Method::GET, &long);
        assert_eq!(
            resolve(r, &long, &caps, None, &h, None),
            Err(SourceError::MalformedId)
        );
    }

    #[test]
    fn ids_are_visible_ascii() {
        assert!(valid_id(b"ws_1") && valid_id(&[b'a'; 256]));
        assert!(!valid_id(b"") && !valid_id(&[b'a'; 257]));
        assert!(!valid_id(b"a b") && !valid_id(b"a\nb") && !valid_id("é".as_bytes()));
        assert_eq!(path_id("ws%5F1"), Ok(Some(Cow::Owned("ws_1".into()))));
        assert_eq!(path_id("ws%20"), Err(SourceError::MalformedId));
        assert_eq!(path_id("%FF"), Err(SourceError::MalformedId));
    }

    #[test]
    fn only_json_bodies_are_inspected() {
        let h = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            inspectable_body(&h)
        };
        let cl = ("content-length", "10");
        assert_eq!(h(&[cl, ("content-type", "application/json")]), Ok(()));
        assert_eq!(
            h(&[cl, ("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(
            h(&[cl, ("content-type", "application/vnd.api+json")]),
            Ok(())
        );
        assert_eq!(
            h(&[
                cl,
                ("content-type", "application/json"),
                ("content-encoding", "identity")
            ]),
            Ok(())
        );
        assert_eq!(
            h(&[("content-length", "0"), ("content-type", "text/plain")]),
            Ok(())
        );
        assert_eq!(h(&[("content-type", "text/plain")]), Ok(()));
        let bad = Err(MediaError::Unsupported);
        assert_eq!(
            h(&[cl, ("content-type", "application/x-www-form-urlencoded")]),
            bad
        );
        assert_eq!(
            h(&[
                ("transfer-encoding", "chunked"),
                ("content-type", "text/plain")
            ]),
            bad
        );
        assert_eq!(h(&[cl]), bad);
        assert_eq!(
            h(&[cl, ("content-type", "application/json, text/plain")]),
            bad
        );
        assert_eq!(
            h(&[
                cl,
                ("content-type", "application/json"),
                ("content-type", "application/json")
            ]),
            bad
        );
        assert_eq!(h(&[cl, ("content-type", "application/+json")]), bad);
        assert_eq!(h(&[cl, ("content-type", "text/json")]), bad);
        assert_eq!(
            h(&[cl, ("content-type", "application/json; charset=utf-7")]),
            bad
        );
        assert_eq!(
            h(&[cl, ("content-type", "application/json; charset=UTF-16")]),
            bad
        );
        assert_eq!(
            h(&[cl, ("content-type", "application/json; charset=\"UTF-8\"")]),
            Ok(())
        );
        assert_eq!(
            h(&[
                cl,
                ("content-type", "application/json"),
                ("content-encoding", "br")
            ]),
            Err(MediaError::Encoded)
        );
        assert_eq!(
            h(&[
                cl,
                ("content-type", "application/json"),
                ("content-encoding", "identity, gzip")
            ]),
            Err(MediaError::Encoded)
        );
    }
}
