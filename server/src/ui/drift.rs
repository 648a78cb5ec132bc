//! Drift: each live version's features against its training statistics.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::IntoResponse;

use super::{UiResult, blocking, esc, internal, num, page, url};
use crate::state::AppState;

pub(super) async fn drift_page(State(state): State<AppState>) -> UiResult {
    let html = blocking(&state, |s| {
        let mut out = String::new();
        for name in s.models.names().map_err(internal)? {
            let reports = match s.models.drift(&name) {
                Ok(r) => r,
                Err(_) => continue,
            };
            for r in reports {
                let mut rows = String::new();
                for f in r.features.iter().chain(r.prediction.as_ref()) {
                    let fmt = |x: Option<f64>| x.map_or("-".into(), num);
                    let _ = write!(
                        rows,
                        "<tr><td>{}{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} ({})</td><td class=\"bad\">{}</td></tr>",
                        if f.alarm { "⚠ " } else { "" },
                        esc(&f.feature),
                        esc(&f.kind),
                        fmt(f.psi),
                        fmt(f.js),
                        fmt(f.linf),
                        fmt(f.unseen),
                        num(f.missing),
                        num(f.missing_train),
                        esc(&f.reasons.join("; "))
                    );
                }
                let status = if !r.judged {
                    format!("{} rows in the window; judged from {}", r.rows, r.thresholds.min_rows)
                } else {
                    format!("{} rows in the window; {} in alarm", r.rows, r.alarms().len())
                };
                let _ = write!(
                    out,
                    "<h2 id=\"{}\">{} version {}</h2><p class=\"muted\">{status}</p><table><thead><tr><th scope=\"col\">feature</th><th scope=\"col\">kind</th>\
                     <th scope=\"col\" class=\"num\">psi</th><th scope=\"col\" class=\"num\">js</th><th scope=\"col\" class=\"num\">linf</th><th scope=\"col\" class=\"num\">unseen</th>\
                     <th scope=\"col\" class=\"num\">missing (train)</th><th scope=\"col\">alarm</th></tr></thead><tbody>{rows}</tbody></table>",
                    url(&name),
                    esc(&name),
                    r.version
                );
            }
        }
        if out.is_empty() {
            out = "<p class=\"muted\">No live model has a drift window (is the prediction log on? <code>--log-sample</code>).</p>".into();
        }
        Ok(format!("<h1>Drift</h1><p class=\"muted\">Live traffic against each version's training statistics.</p>{out}"))
    })
    .await?;
    Ok(page("Drift", "drift", &html).into_response())
}
