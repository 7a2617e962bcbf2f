//! Extractors shared by every handler: axum's own, with their rejections answered as
//! [`ApiError`] JSON, and the one way a bearer token is read.

use super::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A JSON body (request) or JSON answer (response).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::Json::<T>::from_request(req, state).await?.0))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The query string, deserialised.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::extract::Query::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// Path parameters, deserialised.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::extract::Path::<T>::from_request_parts(parts, state).await?.0))
    }
}

/// The raw body, within the router's body limit.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Self(axum::body::Bytes::from_request(req, state).await?))
    }
}

/// A bearer token, from `Authorization: Bearer …`. Only a WebSocket upgrade may carry it as
/// `?token=` instead, because browsers cannot set headers on a WebSocket; anywhere else a token
/// in the URL would end up in logs and browser history, so it is not looked for.
pub struct Bearer(pub String);

impl Bearer {
    fn from_parts(parts: &Parts) -> Option<String> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let websocket = parts
            .headers
            .get(axum::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let query = || {
            let q = parts.uri.query()?;
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        };
        header.or_else(|| if websocket { query() } else { None }).filter(|t| !t.is_empty())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::from_parts(parts).map(Self).ok_or_else(|| {
            ApiError::unauthorized("A token is required: Authorization: Bearer … (or ?token=… on a WebSocket upgrade).")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn bearer_reads_the_header_and_the_query_only_on_an_upgrade() {
        let h = parts("/x?token=q", &[("authorization", "Bearer  h ")]);
        assert_eq!(Bearer::from_parts(&h).as_deref(), Some("h"));
        assert_eq!(Bearer::from_parts(&parts("/x?token=q", &[])), None, "no query tokens on plain requests");
        let ws = parts("/x?a=1&token=q%2B", &[("upgrade", "WebSocket")]);
        assert_eq!(Bearer::from_parts(&ws).as_deref(), Some("q+"));
        assert_eq!(Bearer::from_parts(&parts("/x", &[("authorization", "Bearer ")])), None);
        assert_eq!(Bearer::from_parts(&parts("/x", &[("authorization", "Basic abc")])), None);
    }
}
