//! The API's error type and its JSON body (design §8).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use courier_core::errors::FieldErrors;
use serde_json::{json, Value};

/// An error answer: status, `type`, a message for humans and structured details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            details: json!({}),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid key is required: Authorization: Bearer <key>",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
        .with_details(json!({ "limitBytes": limit }))
    }

    pub fn unprocessable(message: impl Into<String>, fields: &FieldErrors) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
            .with_details(json!(fields))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A dependency failed: logged in full, answered without internals.
    pub fn dependency(what: &str, err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "{what} failed");
        Self::unavailable(format!("{what} is unavailable; retry later"))
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<courier_store::StoreError> for ApiError {
    fn from(err: courier_store::StoreError) -> Self {
        Self::dependency("storage", &err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "type": self.kind, "message": self.message, "details": self.details }
        });
        (self.status, Json(body)).into_response()
    }
}

/// The error body of every failure (design §8), for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unprocessable`, `rate_limited`, `unavailable`.
    #[schema(example = "not_found")]
    r#type: String,
    #[schema(example = "webhook wh_123 not found")]
    message: String,
    /// Structured details: per-field problems for `unprocessable`, `acceptedEventIds`
    /// for an ingest `unavailable`.
    details: serde_json::Map<String, Value>,
}
