//! What a hostile web page (or a rebinding DNS name) can make a browser send to a kiln on
//! loopback: text/plain and form bodies, a foreign `Origin` or `Sec-Fetch-Site`, a foreign
//! `Host`, UI forms without their CSRF token. Each is refused and nothing changes; the same
//! request from kiln's own pages or a script goes through. And the login: a session id, not the
//! token; it opens the UI only, ends at logout, and wrong tokens are rate-limited.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use common::*;
use kiln_server::ServerConfig;

fn champion(f: &Fixture) -> u32 {
    f.registry.aliases("bc").unwrap()["champion"]
}

#[tokio::test]
async fn cross_site_writes_change_nothing() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let body = r#"{"version": 2}"#;
    let url = "/api/models/bc/aliases/champion";
    // What `<form enctype="text/plain">` and url-encoded forms send: not JSON.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _, answer) =
            call(&s, "PUT", url, &[("content-type", content_type)], body).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert!(String::from_utf8_lossy(&answer).contains("application/json"));
        let (status, _, _) = call(
            &s,
            "POST",
            "/api/models/bc/promote",
            &[("content-type", content_type)],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
    }
    // JSON from another site, by Origin or by Sec-Fetch-Site.
    for headers in [
        vec![
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
        ],
        vec![("origin", "null"), ("host", "127.0.0.1:8080")],
        vec![
            ("origin", "http://127.0.0.1:9999"),
            ("host", "127.0.0.1:8080"),
        ],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let mut all = headers.clone();
        all.push(("content-type", "application/json"));
        let (status, _, _) = call(&s, "PUT", url, &all, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        let (status, _, _) = call(&s, "POST", "/v2/models/bc/infer", &all, "{}").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert_eq!(champion(&f), 1);
    // The same change from kiln's own origin, or from a script (no Origin), goes through.
    let (status, _, _) = call(
        &s,
        "PUT",
        url,
        &[
            ("content-type", "application/json"),
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(champion(&f), 2);
}

#[tokio::test]
async fn a_rebinding_host_name_reads_nothing() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    for path in ["/ui/models", "/api/models", "/v2/models/bc", "/metrics"] {
        let (status, _, answer) = call(
            &s,
            "GET",
            path,
            &[("host", "evil.example:8080")],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}");
        assert!(String::from_utf8_lossy(&answer).contains("--allowed-host evil.example"));
        for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            let (status, _, _) = call(&s, "GET", path, &[("host", host)], Body::empty()).await;
            assert_eq!(status, StatusCode::OK, "{path} {host}");
        }
    }
    let s = state(
        &f,
        ServerConfig {
            allowed_hosts: vec!["kiln.internal".into()],
            ..ServerConfig::default()
        },
    )
    .await;
    let (status, _, _) = call(
        &s,
        "GET",
        "/api/models",
        &[("host", "kiln.internal:8080")],
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn ui_forms_need_their_csrf_token_and_every_answer_has_security_headers() {
    let f = fixture();
    let s = state(&f, ServerConfig::default()).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, _, _) = call(
        &s,
        "POST",
        "/ui/models/bc/alias",
        &form,
        "alias=champion&version=2",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &s,
        "POST",
        "/ui/models/bc/alias",
        &form,
        "alias=champion&version=2&csrf=0000",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(champion(&f), 1);
    let (status, headers, page) = call(&s, "GET", "/ui/models/bc", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    // Every post form of the page carries the token.
    assert_eq!(
        page.matches("method=\"post\"").count(),
        page.matches("name=\"csrf\"").count()
    );
    let csrf = csrf_of(&page);
    let (status, _, _) = call(
        &s,
        "POST",
        "/ui/models/bc/alias",
        &form,
        format!("alias=champion&version=2&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(champion(&f), 2);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    for (path, expected) in [
        ("/nope", StatusCode::NOT_FOUND),
        ("/v2/health/live", StatusCode::OK),
    ] {
        let (status, headers, _) = call(&s, "GET", path, &[], Body::empty()).await;
        assert_eq!(status, expected);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "same-origin");
        assert!(headers.contains_key("content-security-policy"));
    }
}

#[tokio::test]
async fn the_login_is_a_session_for_the_ui_only_that_logout_ends() {
    let f = fixture();
    let s = state(
        &f,
        ServerConfig {
            token: Some("s3cret".into()),
            protect_reads: true,
            ..ServerConfig::default()
        },
    )
    .await;
    let (_, _, page) = call(&s, "GET", "/ui/login", &[], Body::empty()).await;
    let csrf = csrf_of(&String::from_utf8(page).unwrap());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, headers, _) = call(
        &s,
        "POST",
        "/ui/login",
        &form,
        format!("token=s3cret&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(!set.contains("s3cret"), "the cookie holds the token: {set}");
    assert!(
        set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
            && set.contains("Max-Age=")
            && set.contains("Path=/ui"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = [("cookie", cookie.as_str())];
    let (status, _, _) = call(&s, "GET", "/ui/models", &with_cookie, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    // The cookie is no key to the API.
    let (status, _, _) = call(&s, "GET", "/api/models", &with_cookie, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &s,
        "PUT",
        "/api/models/bc/aliases/champion",
        &[
            ("cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ],
        r#"{"version": 2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A forged cookie holding the token opens nothing.
    let (status, _, _) = call(
        &s,
        "GET",
        "/ui/models",
        &[("cookie", "kiln_session=s3cret")],
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Logout ends the session.
    let (_, _, login) = call(&s, "GET", "/ui/login", &with_cookie, Body::empty()).await;
    let session_csrf = csrf_of(&String::from_utf8(login).unwrap());
    assert_ne!(
        session_csrf, csrf,
        "a session's forms have a token of their own"
    );
    let (status, _, _) = call(
        &s,
        "POST",
        "/ui/logout",
        &[("cookie", cookie.as_str()), form[0]],
        format!("csrf={session_csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = call(&s, "GET", "/ui/models", &with_cookie, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Guessing is slowed down: after ten wrong tokens even the right one waits.
    let (_, _, page) = call(&s, "GET", "/ui/login", &[], Body::empty()).await;
    let csrf = csrf_of(&String::from_utf8(page).unwrap());
    for _ in 0..10 {
        let (status, _, _) = call(
            &s,
            "POST",
            "/ui/login",
            &form,
            format!("token=guess&csrf={csrf}"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, _) = call(
        &s,
        "POST",
        "/ui/login",
        &form,
        format!("token=s3cret&csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
}
