//! Request extractors: callers (tenant key or operator), JSON bodies with the
//! documented errors (400 malformed, 413 too large, 422 wrong shape), and path and
//! query parameters whose problems are JSON 400s naming the parameter.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use courier_core::errors::FieldErrors;
use courier_core::tenant::{ApiKeyRecord, Scope};
use courier_telemetry::serve::BodyTimeout;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// A caller authenticated by a tenant API key.
pub struct TenantKey(pub ApiKeyRecord);

impl TenantKey {
    /// 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<&ApiKeyRecord, ApiError> {
        if self.0.allows(scope) {
            Ok(&self.0)
        } else {
            let name = serde_json::to_value(scope)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(ApiError::forbidden(format!(
                "this key lacks the '{name}' scope"
            )))
        }
    }
}

impl FromRequestParts<AppState> for TenantKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts).ok_or_else(ApiError::tenant_key_required)?;
        state
            .api_key(key)
            .await?
            .map(TenantKey)
            .ok_or_else(ApiError::tenant_key_required)
    }
}

/// The operator, authenticated by `COURIER_ADMIN_TOKEN`.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if state.is_admin_token(token) => Ok(Admin),
            _ => Err(ApiError::admin_token_required()),
        }
    }
}

/// The raw body, at most `COURIER_MAX_BODY_BYTES`, read within
/// `COURIER_HTTP_BODY_TIMEOUT` of the request's headers (else 408).
pub struct LimitedBody(pub Bytes);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.max_body_bytes;
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        let limited = http_body_util::Limited::new(req.into_body(), limit);
        match http_body_util::BodyExt::collect(limited).await {
            Ok(collected) => Ok(Self(collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(ApiError::payload_too_large(limit))
            }
            Err(e) if BodyTimeout::caused(&*e) => Err(ApiError::request_timeout()),
            Err(_) => Err(ApiError::bad_request("the request body could not be read")),
        }
    }
}

/// Parses JSON: a syntax error is 400, a value of the wrong shape is 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| json_error(&e, "body"))
}

/// Maps a serde_json error to the API's error, naming `field` for shape errors.
pub fn json_error(e: &serde_json::Error, field: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request(format!("the body is not valid JSON: {e}"))
        }
        Category::Data => {
            let mut fields = FieldErrors::default();
            fields.add(field, without_strings(&e.to_string()));
            ApiError::unprocessable("the body does not have the expected shape", &fields)
        }
    }
}

/// A serde message with the string values it quotes (`invalid type: string "…"`)
/// left out: the string may be a secret put in the wrong place, e.g. a header value
/// given where the header map goes, and error bodies never repeat secrets.
fn without_strings(message: &str) -> String {
    const QUOTED: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(QUOTED) {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        // The quoted value is escaped as by `Debug`: it ends at the first `"`
        // that is not escaped.
        let value = &rest[start + QUOTED.len()..];
        let mut escaped = false;
        let end = value.char_indices().find_map(|(i, c)| match c {
            '\\' if !escaped => {
                escaped = true;
                None
            }
            '"' if !escaped => Some(i + 1),
            _ => {
                escaped = false;
                None
            }
        });
        rest = end.map_or("", |end| &value[end..]);
    }
    out.push_str(rest);
    out
}

/// A JSON body of type `T`, size-limited, with the documented errors. As
/// `Option<ApiJson<T>>`, an empty body is `None`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let LimitedBody(bytes) = LimitedBody::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned> axum::extract::OptionalFromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Option<Self>, ApiError> {
        let LimitedBody(bytes) = LimitedBody::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_json(&bytes).map(|v| Some(ApiJson(v)))
    }
}

/// Either caller: the operator or a tenant key (for routes both may use).
pub enum Caller {
    Operator,
    Tenant(ApiKeyRecord),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::credential_required)?;
        if state.is_admin_token(token) {
            return Ok(Caller::Operator);
        }
        state
            .api_key(token)
            .await?
            .map(Caller::Tenant)
            .ok_or_else(ApiError::credential_required)
    }
}

/// Query parameters of type `T`. A value that does not read as its parameter's
/// type is a JSON 400 naming the parameter; bytes that are not UTF-8 once
/// percent-decoded read as U+FFFD, which no parameter accepts as valid.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs)
            .map(ApiQuery)
            .map_err(|e| {
                let mut fields = FieldErrors::default();
                let name = e.path().to_string();
                let name = if name == "." { "query".into() } else { name };
                fields.add(name, without_strings(&e.inner().to_string()));
                ApiError::bad_parameters(&fields)
            })
    }
}

/// Path parameters of type `T`. A parameter that cannot be read (not UTF-8 once
/// percent-decoded, or not of its type) is a JSON 400 naming it, like every other
/// refusal, rather than axum's plain-text answer.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    let mut fields = FieldErrors::default();
    match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                fields.add(key.as_str(), "is not valid UTF-8 once percent-decoded");
            }
            ErrorKind::ParseErrorAtKey {
                key, expected_type, ..
            } => fields.add(key.as_str(), format!("is not a valid {expected_type}")),
            ErrorKind::DeserializeError { key, message, .. } => {
                fields.add(key.as_str(), without_strings(message));
            }
            _ => fields.add("path", e.body_text()),
        },
        other => fields.add("path", other.body_text()),
    }
    ApiError::bad_parameters(&fields)
}

/// The parameter `name` (of the path or the query) read by `parse`; a value it
/// refuses is a JSON 400 naming the parameter.
pub fn param<T, E: std::fmt::Display>(
    name: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(value).map_err(|e| {
        let mut fields = FieldErrors::default();
        fields.add(name, e.to_string());
        ApiError::bad_parameters(&fields)
    })
}

/// `limit` and `offset` of a listing: limit 1–100 (default 20), offset ≥ 0.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
    /// Default 0.
    pub offset: Option<i64>,
}

impl PageQuery {
    /// `(offset, limit)`, or 400 naming the bad parameter.
    pub fn checked(&self) -> Result<(usize, usize), ApiError> {
        let mut fields = FieldErrors::default();
        let limit = match self.limit {
            None => 20,
            Some(n @ 1..=100) => usize::try_from(n).unwrap_or(20),
            Some(_) => {
                fields.add("limit", "must be from 1 to 100");
                0
            }
        };
        let offset = match self.offset.map(usize::try_from) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                fields.add("offset", "must be 0 or more");
                0
            }
        };
        fields
            .into_result((offset, limit))
            .map_err(|f| ApiError::bad_parameters(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_errors_do_not_repeat_the_strings_they_quote() {
        let err = serde_json::from_str::<std::collections::BTreeMap<String, String>>(
            r#""Bearer sk_live_\"quoted\" \\ end""#,
        )
        .unwrap_err();
        let shown = without_strings(&err.to_string());
        assert!(
            shown.starts_with("invalid type: a string, expected a map"),
            "{shown}"
        );
        assert!(!shown.contains("sk_live"), "{shown}");
        assert_eq!(
            without_strings(r#"invalid value: string "a\"b", expected x; string "c""#),
            "invalid value: a string, expected x; a string"
        );
        assert_eq!(
            without_strings("missing field `url`"),
            "missing field `url`"
        );
        assert_eq!(without_strings(r#"string "unterminated"#), "a string");
    }
}
