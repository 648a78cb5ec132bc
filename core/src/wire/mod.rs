//! kiln's own HTTP API as types: each request and response body is defined here once, written
//! by the server and read by the client, so the two cannot drift apart. A field the reader needs
//! and the body lacks is an error, never a silent default.

pub mod experiments;
pub mod models;
pub mod pipelines;
pub mod runs;
