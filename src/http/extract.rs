//! Extractors shared by every handler: axum's own, with their rejections answered as
//! [`ApiError`] JSON, and the one way a bearer token is read.

use super::ApiError;
use crate::app::AppState;
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

/// A bearer token, from `Authorization: Bearer …`. A WebSocket upgrade may carry it in
/// `Sec-WebSocket-Protocol` instead (`callpay.bearer.<token>`), because browsers cannot set other
/// headers on a WebSocket. A token in the URL (`?token=`) ends up in proxy logs and browser
/// history: it is read only on upgrades and only where `server.query_token` allows it.
pub struct Bearer(pub String);

impl Bearer {
    fn from_parts(parts: &Parts, query_allowed: bool) -> Option<String> {
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
        let subprotocol = || {
            let offered = parts.headers.get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL);
            offered
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| p.trim().strip_prefix(callpay_protocol::BEARER_PROTOCOL_PREFIX))
                .map(str::to_owned)
        };
        let query = || {
            let q = parts.uri.query()?;
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        };
        header
            .or_else(|| if websocket { subprotocol() } else { None })
            .or_else(|| if websocket && query_allowed { query() } else { None })
            .filter(|t| !t.is_empty())
    }
}

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Self::from_parts(parts, app.config.server.query_token).map(Self).ok_or_else(|| {
            ApiError::unauthorized(
                "A token is required: Authorization: Bearer …, or on a WebSocket upgrade the subprotocol callpay.bearer.<token>.",
            )
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
    fn bearer_reads_the_header_then_the_subprotocol_and_the_query_only_where_allowed() {
        let h = parts("/x?token=q", &[("authorization", "Bearer  h ")]);
        assert_eq!(Bearer::from_parts(&h, true).as_deref(), Some("h"));
        assert_eq!(Bearer::from_parts(&parts("/x?token=q", &[]), true), None, "no query tokens on plain requests");
        let offered = callpay_protocol::offered_protocols("s.t-u_v");
        let sub = parts("/x", &[("upgrade", "websocket"), ("sec-websocket-protocol", &offered)]);
        assert_eq!(Bearer::from_parts(&sub, false).as_deref(), Some("s.t-u_v"));
        let sub_plain = parts("/x", &[("sec-websocket-protocol", &offered)]);
        assert_eq!(Bearer::from_parts(&sub_plain, false), None, "subprotocols mean nothing off an upgrade");
        let ws = parts("/x?a=1&token=q%2B", &[("upgrade", "WebSocket")]);
        assert_eq!(Bearer::from_parts(&ws, true).as_deref(), Some("q+"));
        assert_eq!(Bearer::from_parts(&ws, false), None, "the query form is off unless server.query_token");
        assert_eq!(Bearer::from_parts(&parts("/x", &[("authorization", "Bearer ")]), true), None);
        assert_eq!(Bearer::from_parts(&parts("/x", &[("authorization", "Basic abc")]), true), None);
    }
}
