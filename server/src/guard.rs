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

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::ServerConfig;

/// The policy every response carries: no script at all, styles and images from kiln only, forms
/// that post back to kiln, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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
    let put = request.method() == axum::http::Method::PUT;
    let path = request.uri().path();
    let raw = put && path.starts_with("/api/artifacts/");
    // MLflow's client sends each artifact file with the type its name suggests. A page on
    // another site cannot send a PUT at all without kiln's consent (CORS), which it never gives.
    if put
        && (path.starts_with("/api/2.0/mlflow-artifacts/")
            || path.starts_with("/ajax-api/2.0/mlflow-artifacts/"))
    {
        return Ok(());
    }
    // A model version is registered from a run (JSON) or imported from an ONNX file (raw bytes).
    let upload = request.method() == axum::http::Method::POST
        && path.starts_with("/api/models/")
        && path.ends_with("/versions");
    let wanted = if raw {
        "application/octet-stream"
    } else if upload {
        "application/json` or `application/octet-stream"
    } else {
        "application/json"
    };
    let media = |v: &axum::http::HeaderValue| {
        let t = v.to_str().unwrap_or("");
        if upload && is_octet_stream(t) {
            return true;
        }
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

fn is_octet_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/octet-stream")
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

#[cfg(test)]
mod tests {
    use axum::body::Body;

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
        assert!(request("x", Some("application/octet-stream")).is_err());
        // An ONNX file is imported as a version, and only there raw bytes are taken.
        let post = |uri: &str, content_type: &str| {
            let r = Request::builder()
                .method("POST")
                .uri(uri)
                .header(header::CONTENT_TYPE, content_type);
            json_body(&r.body(Body::from("x")).unwrap())
        };
        assert!(post("/api/models/m/versions", "application/octet-stream").is_ok());
        assert!(post("/api/models/m/versions", "text/plain").is_err());
        assert!(post("/api/models/m/promote", "application/octet-stream").is_err());
    }
}
