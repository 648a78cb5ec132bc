//! The ceiling of the HTTP stack for serving benchmarks: axum on the same tokio configuration
//! as `kiln serve`, answering every POST with a constant V2-shaped JSON body and doing nothing
//! else. `benches/serve.sh` loads it and `kiln serve` with the same requests.
//!
//! Run: `cargo run --release -p kiln-server --example ceiling -- 127.0.0.1:18081`

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

const ANSWER: &str = r#"{"model_name":"bc","model_version":"1","outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["1"]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]}]}"#;

async fn constant(_body: Bytes) -> ([(&'static str, &'static str); 1], &'static str) {
    ([("content-type", "application/json")], ANSWER)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let app = Router::new().route("/v2/models/{name}/infer", post(constant));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            eprintln!("ceiling on http://{addr}");
            axum::serve(listener, app).await
        })
}
