//! What stands between a browser and kiln: the `Host` check (DNS rebinding), the cross-site
//! check of state-changing requests (`Origin`, `Sec-Fetch-Site`), JSON-only bodies for the API's
//! writes, security headers on every response, the web UI's login sessions and the CSRF token of
//! its forms.
//!
//! **A request from another site never changes anything**: a browser names the page's origin in
//! `Origin` and `Sec-Fetch-Site` on every cross-site `POST`, and the forms such a page can send
//! (`text/plain`, url-encoded, multipart) are not JSON. **A page served under a foreign name never
//! reads kiln**: after DNS rebinding the browser still sends that name as `Host`, and only IP
//! literals, loopback names and `--allowed-host` names are answered.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::{AppState, ServerConfig};
use crate::error::ApiError;

/// The policy every response carries: no script at all, styles and images from kiln only, forms
/// that post back to kiln, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The name of the UI's session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";

/// How long a UI login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The most live UI sessions; the oldest goes first.
const MOST_SESSIONS: usize = 1024;

/// Failed logins allowed in [`LOGIN_WINDOW`] before logins wait.
const LOGIN_FAILURES: usize = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Whether `host` (a `Host` header's value) may reach this server: an IP literal, a loopback
/// name (`localhost`, `*.localhost`) or one of `allowed` (`*` allows every name).
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = hostname(host).to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        return false;
    }
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('.').eq_ignore_ascii_case(name))
}

/// The host name of a `Host` value or an origin's authority, without its port (and without the
/// brackets of an IPv6 literal).
fn hostname(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether a state-changing request came from another site, by what the browser says of it:
/// `Sec-Fetch-Site` where the browser sends it (every current one does), else `Origin`.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        return (site != "same-origin" && site != "none")
            .then(|| format!("Sec-Fetch-Site: {site}"));
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match authority {
        Some(a) if same_authority(a, host, origin.starts_with("https://")) => None,
        _ => Some(format!("Origin: {origin}")),
    }
}

/// Whether an origin's authority names the same host and port as `Host`.
fn same_authority(origin: &str, host: &str, https: bool) -> bool {
    let default = if https { ":443" } else { ":80" };
    let full = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        let has_port = a.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit())
        }) && !a.ends_with(']');
        if has_port { a } else { format!("{a}{default}") }
    };
    !host.is_empty() && full(origin) == full(host)
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The outermost check of every request: `Host`, then the cross-site check of state-changing
/// methods; and the security headers on every answer.
pub async fn outer(
    State(config): State<std::sync::Arc<ServerConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let refused = if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        (!host_allowed(host, &config.allowed_hosts)).then(|| {
            ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this kiln does not answer to the name {:?}; start it with --allowed-host {} if that name is meant to reach it",
                    hostname(host),
                    hostname(host)
                ),
            )
        })
    } else {
        None
    };
    let refused = refused.or_else(|| {
        if !is_unsafe(request.method()) {
            return None;
        }
        cross_site(headers).map(|why| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                format!("a request from another site cannot change kiln ({why})"),
            )
        })
    });
    let mut response = match refused {
        Some(e) => e.into_response(),
        None => next.run(request).await,
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not `no-referrer`: under it browsers send `Origin: null` with kiln's own forms.
        ("referrer-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Refuses an API write whose body is not JSON (415): the bodies a page on another site can
/// send without asking (`text/plain`, forms) never reach a handler.
pub fn json_body(request: &Request) -> Result<(), ApiError> {
    use axum::body::HttpBody;
    let headers = request.headers();
    let has_body = request.body().size_hint().upper() != Some(0)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    // Artifact objects are raw bytes; everything else is JSON. Neither is a type a cross-site
    // form can send.
    let raw = request.method() == axum::http::Method::PUT
        && request.uri().path().starts_with("/api/artifacts/");
    let wanted = if raw {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let media = |v: &axum::http::HeaderValue| {
        let t = v.to_str().unwrap_or("");
        if raw {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(wanted)
        } else {
            is_json(t)
        }
    };
    match headers.get(header::CONTENT_TYPE) {
        None if !has_body => Ok(()),
        Some(v) if media(v) => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "this endpoint takes `Content-Type: {wanted}`, not {}",
                other.map_or_else(
                    || "a body without a content type".to_string(),
                    |v| format!("{:?}", v.to_str().unwrap_or("?"))
                )
            ),
        )),
    }
}

fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The web UI's logins: random session ids (never the token) that expire, the key of the
/// forms' CSRF tokens, and the count of failed logins that slows guessing down.
pub struct Sessions {
    key: [u8; 32],
    live: Mutex<HashMap<String, Instant>>,
    failures: Mutex<VecDeque<Instant>>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new()
    }
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            key: random(),
            live: Mutex::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
        }
    }

    /// Starts a session; its id goes into the cookie.
    pub fn open(&self) -> String {
        let id = hex(&random::<32>());
        let now = Instant::now();
        let mut live = lock(&self.live);
        live.retain(|_, expires| *expires > now);
        if live.len() >= MOST_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(id.clone(), now + SESSION_LIFETIME);
        id
    }

    /// Whether `id` is a live session.
    pub fn valid(&self, id: &str) -> bool {
        let live = lock(&self.live);
        live.iter()
            .any(|(k, expires)| crate::app::same(id, k) && *expires > Instant::now())
    }

    /// Whether the request carries the cookie of a live session.
    pub fn logged_in(&self, headers: &HeaderMap) -> bool {
        session_cookie(headers).is_some_and(|id| self.valid(&id))
    }

    pub fn close(&self, id: &str) {
        lock(&self.live).remove(id);
    }

    /// The CSRF token of the forms shown to a browser with this session cookie (or none).
    pub fn csrf(&self, session: Option<&str>) -> String {
        let mut input = b"kiln csrf 1\0".to_vec();
        input.extend_from_slice(session.unwrap_or("").as_bytes());
        blake3::keyed_hash(&self.key, &input).to_hex().to_string()
    }

    /// How long logins must wait after too many failures (`None`: a login may be tried now).
    pub fn login_wait(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut f = lock(&self.failures);
        while f
            .front()
            .is_some_and(|t| now.duration_since(*t) > LOGIN_WINDOW)
        {
            f.pop_front();
        }
        (f.len() >= LOGIN_FAILURES).then(|| {
            f.front()
                .map_or(LOGIN_WINDOW, |t| LOGIN_WINDOW - now.duration_since(*t))
        })
    }

    pub fn login_failed(&self) {
        let mut f = lock(&self.failures);
        f.push_back(Instant::now());
        while f.len() > LOGIN_FAILURES {
            f.pop_front();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = getrandom::fill(&mut b) {
        // Without the system's randomness no session or CSRF token would be safe.
        panic!("the operating system gave no random bytes: {e}");
    }
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id of the request's cookie, if it carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            c.trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .map(str::to_string)
        .next()
}

/// The check of every UI form post: the form's `csrf` field must be the token of the browser's
/// session. Pages get the token put into each of their post forms on the way out.
pub async fn ui_forms(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let session = session_cookie(request.headers());
    let expected = state.sessions.csrf(session.as_deref());
    if request.method() == Method::POST {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, state.config.max_body).await {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, format!("reading the form: {e}"))
                    .into_response();
            }
        };
        let given: Option<String> = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|fields| {
                fields
                    .into_iter()
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v)
            });
        if !given.is_some_and(|g| crate::app::same(&g, &expected)) {
            return crate::ui::error_page(
                StatusCode::FORBIDDEN,
                "this form is stale or did not come from this kiln's own pages; reload the page and try again",
            )
            .into_response();
        }
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    let response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !is_html {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let html = String::from_utf8_lossy(&bytes);
    let with_tokens = add_csrf(&html, &expected);
    let mut response = Response::from_parts(parts, Body::from(with_tokens));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// Puts a hidden `csrf` field into every `<form … method="post" …>` of a page.
fn add_csrf(html: &str, token: &str) -> String {
    let field = format!("<input type=\"hidden\" name=\"csrf\" value=\"{token}\">");
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        let tag = &rest[start..start + end + 1];
        out.push_str(&rest[..start + end + 1]);
        if tag.contains("method=\"post\"") {
            out.push_str(&field);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_loopback_names_and_allowed_names_are_answered() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:8080",
            "10.0.0.7",
            "localhost.",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "evil.example",
            "",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        assert!(host_allowed("kiln.internal:443", &["kiln.internal".into()]));
        assert!(host_allowed("anything:1", &["*".into()]));
    }

    #[test]
    fn origins_must_match_the_host() {
        let with = |origin: &str, host: &str, site: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if !origin.is_empty() {
                h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            }
            if let Some(s) = site {
                h.insert("sec-fetch-site", HeaderValue::from_str(s).unwrap());
            }
            cross_site(&h)
        };
        assert_eq!(with("", "127.0.0.1:8080", None), None);
        assert_eq!(
            with(
                "http://127.0.0.1:8080",
                "127.0.0.1:8080",
                Some("same-origin")
            ),
            None
        );
        assert_eq!(with("http://localhost", "localhost:80", None), None);
        assert!(with("http://evil.example", "127.0.0.1:8080", None).is_some());
        assert!(with("null", "127.0.0.1:8080", None).is_some());
        assert!(with("http://127.0.0.1:9999", "127.0.0.1:8080", None).is_some());
        assert!(with("", "127.0.0.1:8080", Some("cross-site")).is_some());
        assert!(with("", "127.0.0.1:8080", Some("same-site")).is_some());
    }

    #[test]
    fn json_is_required_of_bodies() {
        let request = |body: &'static str, content_type: Option<&str>| {
            let mut r = Request::builder().method("POST").uri("/api/x");
            if let Some(t) = content_type {
                r = r.header(header::CONTENT_TYPE, t);
            }
            json_body(&r.body(Body::from(body)).unwrap())
        };
        assert!(request("", None).is_ok());
        assert!(request("{}", None).is_err());
        assert!(request("{}", Some("text/plain")).is_err());
        assert!(request("", Some("text/plain")).is_err());
        assert!(request("{}", Some("application/json; charset=utf-8")).is_ok());
        assert!(request("{}", Some("application/merge-patch+json")).is_ok());
    }

    #[test]
    fn every_post_form_gets_the_token_and_sessions_expire_nowhere_else() {
        let html = "<form method=\"get\" action=\"/a\"></form><form class=\"inline\" method=\"post\" action=\"/b\"><button>x</button></form>";
        let out = add_csrf(html, "T");
        assert_eq!(out.matches("name=\"csrf\"").count(), 1);
        assert!(
            out.contains("action=\"/b\"><input type=\"hidden\" name=\"csrf\" value=\"T\"><button>")
        );
        let s = Sessions::new();
        let id = s.open();
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        assert_ne!(s.csrf(Some(&id)), s.csrf(None));
        s.close(&id);
        assert!(!s.valid(&id));
        for _ in 0..LOGIN_FAILURES {
            assert!(s.login_wait().is_none());
            s.login_failed();
        }
        assert!(s.login_wait().is_some());
    }
}
