//! Who may act: the token check of UI actions, the login session (a random id in an HttpOnly
//! cookie, never the token) and logout.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Problem, error_page, page, url};
use crate::app::AppState;

/// Whether a browser request may act: a login session, or the API's own check (no token set,
/// or the bearer token).
pub(super) fn authorized(state: &AppState, headers: &HeaderMap) -> Result<(), Problem> {
    if state.sessions.logged_in(headers) || crate::app::authorized(&state.config, headers).is_ok() {
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
    if !crate::app::same(&f.token, token) {
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
                crate::guard::SESSION_COOKIE,
                crate::guard::SESSION_LIFETIME.as_secs()
            ),
        )],
        Redirect::to("/ui/models"),
    )
        .into_response()
}

pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = crate::guard::session_cookie(&headers) {
        state.sessions.close(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
                crate::guard::SESSION_COOKIE
            ),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}
