//! The chart page, embedded in the binary at build time, so `ohlcd run` serves
//! it from any directory, on any machine. `server.web_dir` overrides it with a
//! directory on disk for people who customise the page.

use warp::Filter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};

/// `index.html`.
const INDEX: &[u8] = include_bytes!("../../web/index.html");
/// `app.js` (an ES module).
const APP_JS: &[u8] = include_bytes!("../../web/app.js");
/// `style.css`.
const STYLE: &[u8] = include_bytes!("../../web/style.css");

/// lightweight-charts' standalone build, from `web/node_modules` (see build.rs).
#[cfg(embedded_chart_lib)]
const CHART_LIB: &[u8] = include_bytes!(
    "../../web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js"
);
/// Built without `web/node_modules`: the page reports how to fix it.
#[cfg(not(embedded_chart_lib))]
const CHART_LIB: &[u8] = b"console.error('ohlcd was built without web/node_modules: run `npm ci` in web/ and rebuild, or set server.web_dir to a checkout of web/');";

fn asset(body: &'static [u8], content_type: &'static str) -> warp::reply::Response {
    let mut response = warp::reply::Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
    // The assets change only with the binary; revalidate each load.
    headers.insert(CACHE_CONTROL, "no-cache".parse().expect("valid header"));
    response
}

/// The embedded page: `GET /`, `/static/app.js`, `/static/style.css`,
/// `/lib/lightweight-charts.js`.
pub fn embedded() -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone
{
    let index = warp::path::end().map(|| asset(INDEX, "text/html; charset=utf-8"));
    let app =
        warp::path!("static" / "app.js").map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let style = warp::path!("static" / "style.css").map(|| asset(STYLE, "text/css; charset=utf-8"));
    let lib = warp::path!("lib" / "lightweight-charts.js")
        .map(|| asset(CHART_LIB, "text/javascript; charset=utf-8"));
    // Path before method, as in every route: an unknown path must be a 404,
    // not this filter's 405.
    index
        .or(app)
        .unify()
        .or(style)
        .unify()
        .or(lib)
        .unify()
        .and(warp::get())
}
