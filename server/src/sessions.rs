//! The web UI's login sessions: random ids (never the token) in an HttpOnly cookie that
//! expire, the key of the forms' CSRF tokens, and the count of failed logins that slows guessing
//! down.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

/// The name of the UI's session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";

/// How long a UI login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The most live UI sessions; the oldest goes first.
const MOST_SESSIONS: usize = 1024;

/// Failed logins allowed in [`LOGIN_WINDOW`] before logins wait.
const LOGIN_FAILURES: usize = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

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
            .any(|(k, expires)| same(id, k) && *expires > Instant::now())
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

/// Compares a given token with the server's in constant time.
pub fn same(given: &str, token: &str) -> bool {
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_their_csrf_tokens_differ() {
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
