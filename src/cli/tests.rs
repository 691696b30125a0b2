use super::*;

#[tokio::test]
async fn a_failed_open_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("p.db");
    let err = ProgressStore::connect(&path.display().to_string())
        .await
        .unwrap_err();
    let line = error_line(&anyhow::Error::from(err));
    assert!(line.contains("missing-dir"), "{line}");
    assert_eq!(
        line.matches("unable to open database file").count(),
        1,
        "{line}"
    );
}

#[test]
fn context_and_a_cause_not_in_it_are_both_on_the_line() {
    let err = anyhow::Error::from(std::io::Error::other("address in use"))
        .context("cannot listen on 127.0.0.1:1 (server.listen)");
    assert_eq!(
        error_line(&err),
        "cannot listen on 127.0.0.1:1 (server.listen): address in use"
    );
}

#[tokio::test]
async fn an_unreachable_influxdb_keeps_its_cause_chain_and_says_it_once() {
    let source = reqwest::get("http://127.0.0.1:1/").await.unwrap_err();
    let err = InfluxError::Unreachable {
        url: "http://127.0.0.1:1".into(),
        source,
    };
    assert!(std::error::Error::source(&err).is_some(), "chain kept");
    let line = error_line(&anyhow::Error::from(err));
    assert!(
        line.starts_with("cannot reach InfluxDB at http://127.0.0.1:1 (")
            && line.ends_with("is influxd running and influx.url right?"),
        "{line}"
    );
    assert_eq!(line.to_lowercase().matches("refused").count(), 1, "{line}");
}
