//! The one error → status mapping of the HTTP server. A request that fails
//! ends in a rejection: an [`ApiError`] (every domain error converts into one
//! here), a refusal of [`auth`](super::auth), [`limits`](super::limits) or
//! [`push`](super::push), or one of warp's own. [`recover`] answers each with
//! its status and a JSON body `{"error": "..."}`, plus `s: "error"` and
//! `errmsg` on the TradingView UDF routes.
//!
//! | error | status |
//! | --- | --- |
//! | bad parameter or body, unreadable body | 400 |
//! | no credential / refused by policy ([`Denied`]) | 401 / 403 |
//! | origin not in `server.cors_origins` | 403 |
//! | unknown symbol, unknown path | 404 |
//! | wrong method | 405 |
//! | body not received in time | 408 |
//! | trades that cannot go into the configured schema | 409 |
//! | no `Content-Length` | 411 |
//! | body or batch too large | 413 |
//! | body not declared as JSON | 415 |
//! | anything unforeseen | 500 |
//! | InfluxDB failed | 502 |
//! | progress store failed, server busy (`Retry-After`), shutting down | 503 |
//! | InfluxDB or a live stream's first bars too slow | 504 |
//!
//! One answer is not made here: request headers that do not arrive in time
//! are a 408 in the same JSON shape, written by [`conn`](super::conn) on the
//! raw connection, since no request ever reaches warp.

use std::convert::Infallible;

use serde::Serialize;
use warp::Reply;
use warp::http::{HeaderValue, StatusCode};

use super::auth::Denied;
use super::conn::BodyTimeout;
use super::limits::Busy;
use super::push;
use crate::datafeed::DatafeedError;
use crate::influx::InfluxError;
use crate::ingest::late::IngestError;
use crate::progress::ProgressError;

/// An error answered as `{"error": "..."}` (plus `s`/`errmsg` on UDF routes),
/// with the status this module gives it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    udf: bool,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            udf: false,
        }
    }

    /// 400 with a message (cut to a sensible length: messages quote the bad
    /// value, which may be megabytes long).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        const MAX: usize = 300;
        if message.len() > MAX {
            let mut cut = MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The same error in the UDF shape.
    pub fn udf(mut self) -> ApiError {
        self.udf = true;
        self
    }

    /// 408: the request body did not arrive by its deadline.
    pub fn body_timeout(t: &BodyTimeout) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("{t}; send it faster or in smaller requests"),
        )
    }

    /// 400: the request body broke off or could not be read.
    pub fn body_unreadable() -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "request body could not be read")
    }

    /// 415: a body that `POST /api/trades` takes, declared as `content_type`
    /// rather than JSON.
    pub fn not_json(content_type: Option<&str>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "POST /api/trades takes Content-Type: application/json, got {}",
                content_type.map_or_else(|| "none".to_string(), |v| format!("{v:?}"))
            ),
        )
    }

    /// 413: `n` trades in one request, more than one write takes.
    pub fn too_many_trades(n: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} trades in one request; at most {}",
                crate::ingest::INGEST_BATCH
            ),
        )
    }

    /// 409: the configured schema cannot hold trades written through the API.
    pub fn unwritable_schema(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("trades cannot be written into this schema: {why}"),
        )
    }

    /// 500: the task writing posted trades failed (panicked or was cancelled).
    pub fn ingest_failed(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {why}"),
        )
    }
}

impl From<InfluxError> for ApiError {
    fn from(e: InfluxError) -> Self {
        let status = match e {
            InfluxError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<ProgressError> for ApiError {
    fn from(e: ProgressError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Influx(e) => e.into(),
            IngestError::Progress(e) => e.into(),
        }
    }
}

impl From<DatafeedError> for ApiError {
    fn from(e: DatafeedError) -> Self {
        match e {
            DatafeedError::UnknownSymbol(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            DatafeedError::BadRequest(m) => ApiError::bad_request(m),
            DatafeedError::Influx(e) => e.into(),
            DatafeedError::Progress(e) => e.into(),
        }
    }
}

impl From<push::StartError> for ApiError {
    fn from(e: push::StartError) -> Self {
        match e {
            push::StartError::Datafeed(e) => e.into(),
            push::StartError::Timeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            push::StartError::Closing => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    s: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errmsg: Option<&'a str>,
}

/// Maps every rejection to a JSON error body and status: the only place that
/// decides how errors look on the wire.
pub async fn recover(err: warp::Rejection) -> Result<warp::reply::Response, Infallible> {
    let mut headers: Vec<(&'static str, HeaderValue)> = Vec::new();
    let (status, message, udf) = if let Some(e) = err.find::<Denied>() {
        if let Some(challenge) = e.challenge {
            headers.push(("www-authenticate", HeaderValue::from_static(challenge)));
        }
        (e.status, e.message.clone(), false)
    } else if let Some(e) = err.find::<ApiError>() {
        (e.status, e.message.clone(), e.udf)
    } else if let Some(e) = err.find::<push::TooManyStreams>() {
        headers.push(("retry-after", HeaderValue::from_static("30")));
        (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), false)
    } else if let Some(busy) = err.find::<Busy>() {
        headers.push(("retry-after", HeaderValue::from_static("1")));
        let what = if busy.heavy {
            "too many long-range queries in progress"
        } else {
            "too many queries in progress"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server busy: {what}; retry shortly"),
            false,
        )
    } else if let Some(e) = err.find::<warp::cors::CorsForbidden>() {
        (
            StatusCode::FORBIDDEN,
            format!(
                "cross-origin request refused ({e}); allowed origins are set in server.cors_origins"
            ),
            false,
        )
    } else if err.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string(), false)
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_string(),
            false,
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "Content-Length header required".to_string(),
            false,
        )
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
            false,
        )
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {e}"),
            false,
        )
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type".to_string(),
            false,
        )
    } else {
        tracing::error!(?err, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_string(),
            false,
        )
    };
    let body = ErrorBody {
        error: &message,
        s: udf.then_some("error"),
        errmsg: udf.then_some(message.as_str()),
    };
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use warp::Filter;
    use warp::http::HeaderMap;

    use super::*;

    /// Status, headers and JSON body of what `filter`, recovered, answers to
    /// `request`.
    async fn answer<F, R>(
        filter: F,
        request: warp::test::RequestBuilder,
    ) -> (StatusCode, HeaderMap, Value)
    where
        F: Filter<Extract = (R,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
        R: Reply,
    {
        let response = request.reply(&filter.recover(recover)).await;
        let body = serde_json::from_slice(response.body()).expect("a JSON body");
        (response.status(), response.headers().clone(), body)
    }

    /// Makes the rejection a request ends in (a rejection is not `Clone`).
    type MakeRejection = fn() -> warp::Rejection;

    /// The answer to a request that ends in `rejection()`.
    async fn answer_to(rejection: MakeRejection) -> (StatusCode, HeaderMap, Value) {
        let filter = warp::any().and_then(move || async move { Err::<String, _>(rejection()) });
        answer(filter, warp::test::request()).await
    }

    fn influx_timeout() -> InfluxError {
        InfluxError::Timeout {
            url: "http://influx:8086".into(),
            secs: 5,
        }
    }

    fn influx_failed() -> InfluxError {
        InfluxError::Query {
            message: "boom".into(),
            query: "SELECT 1".into(),
        }
    }

    fn store_failed() -> ProgressError {
        ProgressError::Db(sqlx::Error::PoolTimedOut)
    }

    /// The plain shape: `{"error": message}` and nothing else.
    fn plain(message: impl std::fmt::Display) -> Value {
        json!({ "error": message.to_string() })
    }

    #[tokio::test]
    async fn influxdb_timing_out_is_a_504_and_failing_otherwise_a_502() {
        let (status, _, body) =
            answer_to(|| warp::reject::custom(ApiError::from(influx_timeout()))).await;
        assert_eq!(
            (status, body),
            (StatusCode::GATEWAY_TIMEOUT, plain(influx_timeout()))
        );
        let (status, _, body) =
            answer_to(|| warp::reject::custom(ApiError::from(influx_failed()))).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_GATEWAY, plain(influx_failed()))
        );
    }

    #[tokio::test]
    async fn a_failing_progress_store_is_a_503() {
        let (status, _, body) =
            answer_to(|| warp::reject::custom(ApiError::from(store_failed()))).await;
        assert_eq!(
            (status, body),
            (StatusCode::SERVICE_UNAVAILABLE, plain(store_failed()))
        );
    }

    #[tokio::test]
    async fn ingest_failures_map_as_the_system_that_failed() {
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(IngestError::Influx(influx_timeout())))
        })
        .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(IngestError::Influx(influx_failed())))
        })
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(IngestError::Progress(store_failed())))
        })
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn an_unknown_symbol_is_a_404_and_a_bad_request_a_400() {
        let (status, _, body) = answer_to(|| {
            warp::reject::custom(ApiError::from(DatafeedError::UnknownSymbol("NOPE".into())))
        })
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, plain("unknown symbol \"NOPE\""))
        );
        let (status, _, body) = answer_to(|| {
            warp::reject::custom(ApiError::from(DatafeedError::BadRequest(
                "bad range".into(),
            )))
        })
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, plain("bad range"))
        );
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(DatafeedError::Influx(influx_timeout())))
        })
        .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(DatafeedError::Progress(store_failed())))
        })
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_live_stream_that_cannot_start_is_a_504_if_slow_and_a_503_if_closing() {
        let (status, _, body) = answer_to(|| {
            warp::reject::custom(ApiError::from(push::StartError::Timeout(
                Duration::from_secs(3),
            )))
        })
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::GATEWAY_TIMEOUT,
                plain("live bars not computed within 3s; InfluxDB may be slow or down")
            )
        );
        let (status, _, body) =
            answer_to(|| warp::reject::custom(ApiError::from(push::StartError::Closing))).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                plain("server shutting down")
            )
        );
        let (status, _, _) = answer_to(|| {
            warp::reject::custom(ApiError::from(push::StartError::Datafeed(
                DatafeedError::UnknownSymbol("NOPE".into()),
            )))
        })
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn udf_errors_carry_s_and_errmsg_beside_error() {
        let (status, _, body) = answer_to(|| {
            warp::reject::custom(ApiError::from(DatafeedError::UnknownSymbol("NOPE".into())).udf())
        })
        .await;
        let message = "unknown symbol \"NOPE\"";
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"error": message, "s": "error", "errmsg": message})
        );
    }

    #[tokio::test]
    async fn errors_of_the_trades_endpoint_have_their_own_statuses() {
        let cases: [(MakeRejection, StatusCode, &str); 6] = [
            (
                || warp::reject::custom(ApiError::too_many_trades(crate::ingest::INGEST_BATCH + 1)),
                StatusCode::PAYLOAD_TOO_LARGE,
                "trades in one request; at most",
            ),
            (
                || warp::reject::custom(ApiError::unwritable_schema("side is a boolean")),
                StatusCode::CONFLICT,
                "trades cannot be written into this schema: side is a boolean",
            ),
            (
                || warp::reject::custom(ApiError::ingest_failed("panicked")),
                StatusCode::INTERNAL_SERVER_ERROR,
                "ingest task failed: panicked",
            ),
            (
                || warp::reject::custom(ApiError::not_json(Some("text/plain"))),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "POST /api/trades takes Content-Type: application/json, got \"text/plain\"",
            ),
            (
                || {
                    warp::reject::custom(ApiError::body_timeout(&BodyTimeout(Duration::from_secs(
                        10,
                    ))))
                },
                StatusCode::REQUEST_TIMEOUT,
                "request body not received within 10s; send it faster or in smaller requests",
            ),
            (
                || warp::reject::custom(ApiError::body_unreadable()),
                StatusCode::BAD_REQUEST,
                "request body could not be read",
            ),
        ];
        for (rejection, expected, message) in cases {
            let (status, _, body) = answer_to(rejection).await;
            assert_eq!(status, expected, "{body}");
            let error = body["error"].as_str().expect("error is a string");
            assert!(error.contains(message), "{error}");
            assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
        }
    }

    #[test]
    fn a_bad_request_quotes_at_most_300_bytes_cut_on_a_character() {
        let e = ApiError::bad_request("é".repeat(400));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.message, format!("{}…", "é".repeat(150)));
        let short = ApiError::bad_request("x".repeat(300));
        assert_eq!(short.message, "x".repeat(300));
    }

    #[tokio::test]
    async fn a_refused_credential_keeps_its_status_and_challenge() {
        let (status, headers, body) = answer_to(|| {
            warp::reject::custom(Denied {
                status: StatusCode::UNAUTHORIZED,
                message: "send a token".into(),
                challenge: Some("Bearer"),
            })
        })
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::UNAUTHORIZED, plain("send a token"))
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
        let (status, headers, _) = answer_to(|| {
            warp::reject::custom(Denied {
                status: StatusCode::FORBIDDEN,
                message: "proxied".into(),
                challenge: None,
            })
        })
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(headers.get("www-authenticate").is_none());
    }

    #[tokio::test]
    async fn a_busy_server_is_a_503_asking_to_retry_in_a_second() {
        let (status, headers, body) =
            answer_to(|| warp::reject::custom(Busy { heavy: false })).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                plain("server busy: too many queries in progress; retry shortly")
            )
        );
        assert_eq!(headers["retry-after"], "1");
        let (_, _, body) = answer_to(|| warp::reject::custom(Busy { heavy: true })).await;
        assert_eq!(
            body,
            plain("server busy: too many long-range queries in progress; retry shortly")
        );
    }

    #[tokio::test]
    async fn too_many_live_streams_is_a_503_asking_to_retry_in_30_seconds() {
        let (status, headers, body) =
            answer_to(|| warp::reject::custom(push::TooManyStreams(8))).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                plain(push::TooManyStreams(8))
            )
        );
        assert_eq!(headers["retry-after"], "30");
    }

    #[tokio::test]
    async fn a_rejection_nobody_maps_is_a_500_that_says_nothing() {
        #[derive(Debug)]
        struct Unforeseen;
        impl warp::reject::Reject for Unforeseen {}
        let (status, _, body) = answer_to(|| warp::reject::custom(Unforeseen)).await;
        assert_eq!(
            (status, body),
            (StatusCode::INTERNAL_SERVER_ERROR, plain("internal error"))
        );
    }

    #[tokio::test]
    async fn warps_own_rejections_get_their_statuses_and_a_json_body() {
        let (status, _, body) = answer_to(warp::reject::not_found).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, plain("no such endpoint"))
        );

        let get = warp::path("x").and(warp::get()).map(|| "x");
        let (status, _, body) = answer(get, warp::test::request().method("POST").path("/x")).await;
        assert_eq!(
            (status, body),
            (StatusCode::METHOD_NOT_ALLOWED, plain("method not allowed"))
        );

        let limited = warp::body::content_length_limit(4).map(|| "x");
        let (status, _, body) = answer(limited, warp::test::request().body("too long")).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                plain("request body too large")
            )
        );
        let (status, _, body) = answer(limited, warp::test::request()).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::LENGTH_REQUIRED,
                plain("Content-Length header required")
            )
        );

        #[derive(serde::Deserialize)]
        struct Query {
            #[allow(dead_code)]
            n: u32,
        }
        let query = warp::query::<Query>().map(|_| "x");
        let (status, _, body) = answer(query, warp::test::request().path("/?n=x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid query string: "),
            "{body}"
        );

        let json_body = warp::body::json::<Value>().map(|_| "x");
        let (status, _, body) = answer(
            json_body,
            warp::test::request()
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                plain("unsupported media type")
            )
        );

        let cors = warp::any()
            .map(|| "x")
            .with(warp::cors().allow_origin("https://allowed.example"));
        let (status, _, body) = answer(
            cors,
            warp::test::request().header("origin", "https://other.example"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("cross-origin request refused"),
            "{body}"
        );
    }
}
