//! Errors of the server: the domain's [`ServeError`], and [`ApiError`], its HTTP form (status and
//! body), mapped in one place. A 500 hides its detail from the client and logs it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::registry::RegistryError;

/// What went wrong serving a request or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or does not fit the model's signature.
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// The model is known but has nothing loaded to answer with.
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A bundle could not be loaded.
    #[error("loading the model: {0}")]
    Load(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Internal(String),
}

/// How an error body looks: `{"error": "..."}` (Open Inference Protocol, TF Serving, kiln's API)
/// or MLflow's `{"error_code": "...", "message": "..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    Plain,
    Mlflow,
}

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub style: ErrorStyle,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            style: ErrorStyle::Plain,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn styled(mut self, style: ErrorStyle) -> ApiError {
        self.style = style;
        self
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> ApiError {
        use RegistryError as R;
        let status = match &e {
            ServeError::BadInput(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServeError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::Registry(r) => match r {
                R::NotFound { .. } => StatusCode::NOT_FOUND,
                R::Invalid(_) => StatusCode::BAD_REQUEST,
                R::AlreadyExists { .. } | R::Conflict { .. } | R::Aliased { .. } => {
                    StatusCode::CONFLICT
                }
                R::Locked { .. } => StatusCode::SERVICE_UNAVAILABLE,
                R::Remote { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        ApiError::from(ServeError::Registry(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
            "internal error; the server log has the details".to_string()
        } else {
            tracing::debug!(status = %self.status, error = %self.message, "request refused");
            self.message
        };
        let body = match self.style {
            ErrorStyle::Plain => serde_json::json!({ "error": message }),
            ErrorStyle::Mlflow => serde_json::json!({
                "error_code": mlflow_code(self.status),
                "message": message,
            }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            // Overload and loading both pass within a second or so.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

fn mlflow_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => "BAD_REQUEST",
        StatusCode::NOT_FOUND => "RESOURCE_DOES_NOT_EXIST",
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
        StatusCode::SERVICE_UNAVAILABLE => "TEMPORARILY_UNAVAILABLE",
        _ => "INTERNAL_ERROR",
    }
}
