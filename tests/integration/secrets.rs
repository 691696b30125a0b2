//! Credentials written into a configured URL never show: not in the public
//! health answer, an error body, the log at its most verbose, a command's
//! error line, `--help` or a configuration error.

use std::process::Stdio;
use std::time::Duration;

use ohlcd::progress::Backend;

use crate::helpers::{TestApp, daemon, free_port};

const INFLUX_SECRET: &str = "leakPASS123influx";
const PG_SECRET: &str = "leakPASS456pg";

/// Runs `ohlcd` with `args` and `env` on top of the app's environment;
/// returns everything it printed.
async fn ohlcd_output(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = app.ohlcd();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn credentials_planted_in_every_configured_url_show_nowhere() {
    let mut app = TestApp::spawn_on_store(Backend::Postgres).await;
    let influx_url = app
        .server
        .url
        .replace("http://", &format!("http://leakuser:{INFLUX_SECRET}@"));
    let pg_url = app.settings.progress.database_url.replace(
        "postgres://postgres@",
        &format!("postgres://postgres:{PG_SECRET}@"),
    );
    assert!(influx_url.contains(INFLUX_SECRET) && pg_url.contains(PG_SECRET));
    let env = [
        ("OHLCD_INFLUX__URL", influx_url.as_str()),
        ("OHLCD_PROGRESS__DATABASE_URL", pg_url.as_str()),
        ("OHLCD_LOG", "trace"),
    ];
    let mut seen: Vec<(String, String)> = Vec::new();

    // A daemon at its most verbose, while InfluxDB answers, hangs and is gone.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut d = daemon(&app, &format!("127.0.0.1:{port}"), &env);
    d.wait_healthy(&url).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let history =
        format!("{url}/udf/history?symbol=BTCUSD&resolution=60&from=1704067200&to=1704153600");
    let mut fetch = async |what: &str, path: &str| {
        let r = http.get(path).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        seen.push((format!("{what} ({status})"), body.clone()));
        (status, body)
    };
    assert_eq!(fetch("healthz", &format!("{url}/healthz")).await.0, 200);
    app.server.freeze();
    let (status, body) = fetch("healthz, InfluxDB frozen", &format!("{url}/healthz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&app.server.url),
        "the public health answer says down, not where: {body}"
    );
    assert_eq!(fetch("history, InfluxDB frozen", &history).await.0, 504);
    app.server.thaw();
    app.server.stop();
    assert_eq!(
        fetch("healthz, InfluxDB gone", &format!("{url}/healthz"))
            .await
            .0,
        503
    );
    assert_eq!(fetch("history, InfluxDB gone", &history).await.0, 502);
    // A tick fails meanwhile and logs why.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains("cannot reach InfluxDB"),
        "the failing tick is logged:\n{log}"
    );
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    seen.push((
        "daemon log".into(),
        std::fs::read_to_string(&d.log).unwrap(),
    ));

    // Commands: a failing backfill, help, configuration errors.
    let out = ohlcd_output(&app, &["backfill"], &env).await;
    assert!(out.contains("cannot reach InfluxDB"), "{out}");
    seen.push(("backfill, InfluxDB gone".into(), out));
    for args in [&["--help"][..], &["backfill", "--help"], &["run", "--help"]] {
        seen.push((format!("{args:?}"), ohlcd_output(&app, args, &env).await));
    }
    let bad_scheme = format!("ftp://leakuser:{INFLUX_SECRET}@127.0.0.1:1");
    let out = ohlcd_output(&app, &["backfill"], &[("OHLCD_INFLUX__URL", &bad_scheme)]).await;
    assert!(out.contains("influx.url must start with http://"), "{out}");
    seen.push(("influx.url of another scheme".into(), out));
    let no_pg = format!("postgres://postgres:{PG_SECRET}@127.0.0.1:1/nothing");
    let out = ohlcd_output(
        &app,
        &["progress"],
        &[("OHLCD_PROGRESS__DATABASE_URL", &no_pg)],
    )
    .await;
    assert!(out.contains("127.0.0.1:1"), "{out}");
    seen.push(("progress store unreachable".into(), out));

    for (what, text) in &seen {
        for secret in [INFLUX_SECRET, PG_SECRET] {
            assert!(!text.contains(secret), "{what} shows a credential:\n{text}");
        }
    }
}
