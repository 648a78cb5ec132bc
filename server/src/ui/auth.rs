//! Who may act: the token check of UI actions, the login session (a random id in an HttpOnly
//! cookie, never the token), logout, and the CSRF token every form post must carry.

use axum::Form;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Problem, error_page, page, url};
use crate::error::ApiError;
use crate::sessions::session_cookie;
use crate::state::AppState;

/// Whether a browser request may act: a login session, or the API's own check (no token set,
/// or the bearer token).
pub(super) fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Problem> {
    if state.sessions.logged_in(headers) || crate::state::authorized(&state.config, headers).is_ok()
    {
        Ok(())
    } else {
        Err(error_page(
            StatusCode::UNAUTHORIZED,
            "this action needs the server's token; log in at /ui/login",
        ))
    }
}

pub(super) fn back(to: &str, done: Result<String, String>) -> Response {
    let (key, text) = match done {
        Ok(t) => ("done", t),
        Err(t) => ("error", t),
    };
    Redirect::to(&format!("{to}?{key}={}", url(&text))).into_response()
}

pub(super) async fn login_page(State(state): State<AppState>) -> Html<String> {
    let note = if state.config.token.is_some() {
        "Actions (promote, split, pipeline runs) need the server's token. A login lasts 12 hours and opens this web UI only; scripts send the token as `Authorization: Bearer`."
    } else {
        "This server has no token: every action is open."
    };
    page(
        "Log in",
        "",
        &format!(
            "<h1>Log in</h1><p>{note}</p><form method=\"post\" action=\"/ui/login\"><label for=\"token\">token</label> \
             <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\"> <button type=\"submit\">Log in</button></form>\
             <form method=\"post\" action=\"/ui/logout\"><button type=\"submit\">Log out</button></form>"
        ),
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let Some(token) = &state.config.token else {
        return Redirect::to("/ui/models").into_response();
    };
    if let Some(wait) = state.sessions.login_wait() {
        let mut r = error_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many wrong tokens; try again in {} s",
                wait.as_secs().max(1)
            ),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !crate::sessions::same(&f.token, token) {
        state.sessions.login_failed();
        return error_page(StatusCode::UNAUTHORIZED, "that is not the server's token")
            .into_response();
    }
    let id = state.sessions.open();
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
                crate::sessions::SESSION_COOKIE,
                crate::sessions::SESSION_LIFETIME.as_secs()
            ),
        )],
        Redirect::to("/ui/models"),
    )
        .into_response()
}

pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = crate::sessions::session_cookie(&headers) {
        state.sessions.close(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                crate::sessions::SESSION_COOKIE
            ),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

/// The check of every UI form post: the form's `csrf` field must be the token of the browser's
/// session. Pages get the token put into each of their post forms on the way out.
pub(crate) async fn ui_forms(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
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
        if !given.is_some_and(|g| crate::sessions::same(&g, &expected)) {
            return super::error_page(
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
    fn every_post_form_gets_the_token() {
        let html = "<form method=\"get\" action=\"/a\"></form><form class=\"inline\" method=\"post\" action=\"/b\"><button>x</button></form>";
        let out = add_csrf(html, "T");
        assert_eq!(out.matches("name=\"csrf\"").count(), 1);
        assert!(
            out.contains("action=\"/b\"><input type=\"hidden\" name=\"csrf\" value=\"T\"><button>")
        );
    }
}
