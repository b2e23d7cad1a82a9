//! The web app's one error type: each variant is a refusal with a status and
//! a message for the visitor; internal failures are logged, never shown.

use askama::Template;
use axum::{
    Json,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

use crate::catalog;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The form or query was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The form's CSRF token is missing or wrong.
    #[error("{0}")]
    Forbidden(String),
    /// The body was larger than accepted.
    #[error("{0}")]
    TooLarge(String),
    /// The page does not exist.
    #[error("there is no page at {0}")]
    NoPage(String),
    /// An item id named in a page path does not exist.
    #[error("no such item: {0:?}; the items are {items}", items = catalog::ids().collect::<Vec<_>>().join(", "))]
    NoItem(String),
    /// An item id named in an API path does not exist.
    #[error("no such item: {0:?}; the items are {items}", items = catalog::ids().collect::<Vec<_>>().join(", "))]
    NoItemJson(String),
    /// A template failed to render.
    #[error("a page failed to render")]
    Render(#[from] askama::Error),
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    heading: &'a str,
    message: &'a str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, heading) = match &self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "That did not work"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "That was too much"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "That form has expired"),
            AppError::NoPage(_) | AppError::NoItem(_) => (StatusCode::NOT_FOUND, "Not found"),
            AppError::NoItemJson(_) => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({ "error": message })),
                )
                    .into_response();
            }
            AppError::Render(error) => {
                tracing::error!(%error, "template failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
            }
        };
        let page = ErrorPage {
            heading,
            message: &message,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, message).into_response(),
        }
    }
}
