//! The web UI in headless Chromium against a real `kiln up` on loopback, driven over the
//! DevTools protocol with real mouse clicks and typing: the models page lists the trained model;
//! logging in and clicking "Promote v2 to champion" moves the alias (checked through the API);
//! a finished pipeline run's page draws its DAG with every step's state. Screenshots of the main
//! pages go to `target/ui-screenshots/` for people to look at.
//!
//! Needs Chromium (`apt-get install chromium`); `.ci/run` installs it and sets
//! `KILN_REQUIRE_BROWSER=1`, without which a machine lacking it skips this test with a note.
#![allow(clippy::unwrap_used)]

mod util;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// A page of a headless Chromium, over the DevTools protocol.
struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(binary: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ws = loop {
            let line = lines
                .next()
                .expect("Chromium ended before it listened")
                .unwrap();
            if let Some(i) = line.find("ws://") {
                break line[i..].trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let (socket, _) = tungstenite::connect(ws.as_str()).unwrap();
        let mut b = Browser {
            child,
            socket,
            session: String::new(),
            next: 0,
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b
    }

    /// Sends a command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .unwrap();
        loop {
            let Message::Text(text) = self.socket.read().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, expression: &str) {
        let start = Instant::now();
        while self.eval(expression) != json!(true) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        self.wait_for(
            url,
            &format!(
                "document.readyState === 'complete' && location.href.startsWith({})",
                json!(url)
            ),
        );
    }

    /// Clicks the middle of the element `selector` with the mouse.
    fn click(&mut self, selector: &str) {
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; e.scrollIntoView(); \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            json!(selector)
        ));
        let (x, y) = (
            rect[0]
                .as_f64()
                .unwrap_or_else(|| panic!("no element {selector}")),
            rect[1].as_f64().unwrap(),
        );
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text}));
    }

    fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&mut self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("..")
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = decode_base64(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn api(url: &str) -> Value {
    let agent = util::agent();
    agent
        .get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

#[test]
fn the_ui_lists_models_promotes_on_click_and_draws_a_pipeline_run() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("KILN_REQUIRE_BROWSER").is_none(),
            "KILN_REQUIRE_BROWSER is set but no Chromium is installed (apt-get install chromium)"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium) to drive the web UI");
        return;
    };
    let k = util::Kiln::new();
    for seed in ["1", "2"] {
        k.ok(&[
            "train",
            "--data",
            "examples/data/breast_cancer.csv",
            "--target",
            "label",
            "--epochs",
            "5",
            "--seed",
            seed,
            "--register",
            "breast-cancer",
        ]);
    }
    k.ok(&["models", "alias", "set", "breast-cancer", "champion", "1"]);
    let pipeline = k.file(
        "fan.toml",
        "name = \"fan\"\n[[steps]]\nid = \"make\"\nrun = \"seq 5 > ${outputs}/n\"\n\n[[steps]]\nid = \"count\"\nneeds = [\"make\"]\nrun = \"wc -l < ${steps.make.n}\"\n\n[[steps]]\nid = \"sum\"\nneeds = [\"make\"]\nrun = \"echo total=$(($(paste -sd+ ${steps.make.n}))) >> $KILN_METRICS\"\n",
    );
    let pipeline = pipeline.display().to_string();
    k.ok(&["pipeline", "run", &pipeline]);

    let up = util::Served::start(
        &k,
        &[
            "up",
            "--pipeline",
            &pipeline,
            "--addr",
            "127.0.0.1:0",
            "--token",
            "s3 cret;x",
        ],
    );
    let mut b = Browser::start(&binary);

    // The models page lists the model and what is served.
    b.open(&format!("{}/ui/models", up.url));
    let text = b.text();
    assert!(
        text.contains("breast-cancer") && text.contains("v1 100%"),
        "{text}"
    );
    b.screenshot("models");

    // Clicking promote without the token is refused with a page that says why.
    b.open(&format!("{}/ui/models/breast-cancer", up.url));
    b.click("#promote-2");
    b.wait_for(
        "the refusal",
        "document.body.innerText.includes('needs the server')",
    );
    assert_eq!(
        api(&format!("{}/api/models/breast-cancer", up.url))["aliases"]["champion"],
        1
    );

    // Log in, then promote with a click: the alias moves.
    b.open(&format!("{}/ui/login", up.url));
    b.click("#token");
    b.type_text("s3 cret;x");
    b.click("button[type=submit]");
    b.wait_for("the models page", "location.pathname === '/ui/models'");
    b.open(&format!("{}/ui/models/breast-cancer", up.url));
    b.screenshot("model");
    b.click("#promote-2");
    b.wait_for("the promotion", "location.search.includes('done=')");
    assert!(b.text().contains("champion now points to version 2"));
    let model = api(&format!("{}/api/models/breast-cancer", up.url));
    assert_eq!(model["aliases"]["champion"], 2, "{model}");

    // The pipeline run's DAG: three steps, all succeeded, edges from `make`.
    b.open(&format!("{}/ui/pipeline-runs/1", up.url));
    let steps = b.eval(
        "Array.from(document.querySelectorAll('g.step')).map(g => g.dataset.step + ':' + g.dataset.state).sort().join(',')",
    );
    assert_eq!(steps, "count:succeeded,make:succeeded,sum:succeeded");
    assert_eq!(b.eval("document.querySelectorAll('svg line').length"), 2);
    b.screenshot("pipeline-run");
    // `sum` reported a metric: the step links to its tracking run, whose page shows it.
    assert!(b.text().contains("total=15"), "{}", b.text());
    b.click("a[href^='/ui/runs/']");
    b.wait_for(
        "the step's tracking run",
        "location.pathname.startsWith('/ui/runs/')",
    );
    let text = b.text();
    assert!(text.contains("total") && text.contains("15"), "{text}");

    // Trigger a run from the pipelines page; it opens the new run's page.
    b.open(&format!("{}/ui/pipelines", up.url));
    b.screenshot("pipelines");
    b.click("#trigger-fan");
    b.wait_for(
        "the new run's page",
        "location.pathname === '/ui/pipeline-runs/2'",
    );

    for (page, name) in [
        ("/ui/deployments", "deployments"),
        ("/ui/runs", "runs"),
        ("/ui/drift", "drift"),
    ] {
        b.open(&format!("{}{page}", up.url));
        assert!(!b.text().contains("Internal Server Error"), "{page}");
        b.screenshot(name);
    }
}
