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
    /// A Redis operation failed (counted by the metrics of the request).
    redis_failed: bool,
    /// `Retry-After` seconds, for `rate_limited`.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            details: json!({}),
            redis_failed: false,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// The error's `details`, as the body shows them.
    pub fn details(&self) -> &Value {
        &self.details
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 for path or query parameters that cannot be used, each named in
    /// `details` with its problem.
    pub fn bad_parameters(fields: &FieldErrors) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid parameters: {fields}"),
        )
        .with_details(json!(fields))
    }

    /// 401 on a tenant route: the message says which credential the route takes, the
    /// same whatever was sent, so that it tells nothing of whether a key exists.
    pub fn tenant_key_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs a tenant API key (Authorization: Bearer ck_...), as issued \
             with the tenant or by POST /v1/tenants/{id}/keys; the operator's admin token \
             is not one",
        )
    }

    /// 401 on an operator route (see [`Self::tenant_key_required`]).
    pub fn admin_token_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs the operator's admin token (COURIER_ADMIN_TOKEN) as \
             Authorization: Bearer <token>; tenant API keys are not accepted here",
        )
    }

    /// 401 on a route that either credential may use.
    pub fn credential_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs a tenant API key (Authorization: Bearer ck_...) or the \
             operator's admin token (COURIER_ADMIN_TOKEN)",
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

    /// 408: the body did not arrive within `COURIER_HTTP_BODY_TIMEOUT`.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time; send it again, faster",
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

    /// 429: over the tenant's ingest rate; enough tokens after `retry_after_secs`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            .with_details(json!({ "retryAfterSeconds": retry_after_secs }));
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// 431: more request headers, or larger ones, than the gateway accepts.
    pub fn headers_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            message,
        )
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
        let mut error = Self::dependency("storage", &err);
        error.redis_failed = true;
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "type": self.kind, "message": self.message, "details": self.details }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.redis_failed {
            response
                .extensions_mut()
                .insert(crate::observe::RedisFailed);
        }
        response
    }
}

/// The error body of every failure (design §8), for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `request_timeout`,
    /// `conflict`, `payload_too_large`, `headers_too_large`, `unprocessable`,
    /// `rate_limited`, `unavailable`.
    #[schema(example = "not_found")]
    r#type: String,
    #[schema(example = "webhook wh_123 not found")]
    message: String,
    /// Structured details: per-field (or per-parameter) problems for
    /// `unprocessable` (and `bad_request`); for an ingest `unavailable`, `events`
    /// (every event of the request as `{"id", "status"}`, the status `accepted`,
    /// `notAccepted` or `unknown`) and `acceptedEventIds`.
    details: serde_json::Map<String, Value>,
}
