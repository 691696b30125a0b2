use super::*;

fn status(status: u16, message: &str) -> InfluxError {
    InfluxError::Status {
        status,
        what: "query",
        message: message.to_string(),
    }
}

#[test]
fn only_errors_that_may_pass_are_transient() {
    assert!(status(500, "internal error").is_transient());
    assert!(status(502, "bad gateway").is_transient());
    assert!(status(503, "").is_transient());
    assert!(status(429, "slow down").is_transient());
    assert!(InfluxError::Stream("reset".into()).is_transient());
    assert!(
        InfluxError::Timeout {
            url: String::new(),
            secs: 1
        }
        .is_transient()
    );
    // Asked again, these are answered the same way.
    assert!(!status(400, "incoming write was empty").is_transient());
    assert!(!status(404, "not found").is_transient());
    assert!(!status(409, "already exists").is_transient());
    assert!(!status(501, "").is_transient());
    assert!(
        !status(
            500,
            "Error while planning query: This feature is not implemented: CREATE DATABASE"
        )
        .is_transient()
    );
    assert!(
        !status(
            500,
            "query error: error while planning query: Error during planning: table 'public.iox.trades' not found"
        )
        .is_transient()
    );
}

#[test]
fn the_generation_comes_from_the_ping_headers() {
    assert_eq!(Generation::from_ping("1.6.7~rc0", ""), Generation::V1);
    assert_eq!(Generation::from_ping("1.8.10", "OSS"), Generation::V1);
    assert_eq!(
        Generation::from_ping("1.11.8-c1.11.8", "ENT"),
        Generation::V1
    );
    assert_eq!(Generation::from_ping("v2.7.11", "OSS"), Generation::V2);
    assert_eq!(Generation::from_ping("2.7.11", "OSS"), Generation::V2);
    assert_eq!(
        Generation::from_ping("3.7.0-nightly", "Core"),
        Generation::V3
    );
    assert_eq!(
        Generation::from_ping("3.10.0", "Enterprise"),
        Generation::V3
    );
    assert_eq!(Generation::from_ping("unknown", ""), Generation::V1);
}

#[test]
fn a_2x_version_header_is_2x_however_many_parts_it_has() {
    for version in ["2", "2.0", "2.7.1", "v2", "v2.0.9"] {
        assert_eq!(
            Generation::from_ping(version, "OSS"),
            Generation::V2,
            "{version}"
        );
        assert_eq!(
            Generation::from_ping(version, ""),
            Generation::V2,
            "{version}"
        );
    }
    // Not 2.x: versions that merely start with the digit 2.
    assert_eq!(Generation::from_ping("20.1", ""), Generation::V1);
    assert_eq!(Generation::from_ping("3", ""), Generation::V3);
}

#[test]
fn only_1x_is_told_to_create_the_database_with_create_database() {
    let mut s = crate::config::Settings::load_with_env(None, Vec::new()).unwrap();
    s.influx.database = "candles".into();
    let mut client = InfluxClient::new(&s.influx).unwrap();
    let said = |c: &InfluxClient| c.database_not_found().to_string();
    assert!(
        said(&client).contains("CREATE DATABASE candles"),
        "{}",
        said(&client)
    );
    client.set_generation(Generation::V3);
    let v3 = said(&client);
    assert!(!v3.contains("CREATE DATABASE"), "{v3}");
    assert!(v3.contains("/api/v3/configure/database"), "{v3}");
    client.set_generation(Generation::V2);
    let v2 = said(&client);
    assert!(
        !v2.contains("CREATE DATABASE") && v2.contains("dbrp"),
        "{v2}"
    );
}

#[test]
fn a_failed_write_is_reported_by_every_clone_until_a_write_succeeds() {
    let settings = crate::config::Settings::load_with_env(None, Vec::new()).unwrap();
    let client = InfluxClient::new(&settings.influx).unwrap();
    let serving = client.fail_fast(2, 0);
    assert_eq!(serving.recent_write_failure(), None);
    client
        .write_failure
        .record::<()>(&Err(status(500, "no space left on device")));
    let said = serving.recent_write_failure().unwrap();
    assert!(said.contains("no space left on device"), "{said}");
    // Refused data says nothing about the server.
    client
        .write_failure
        .record::<()>(&Err(status(400, "bad line")));
    assert!(serving.recent_write_failure().is_some());
    client.write_failure.record(&Ok(()));
    assert_eq!(serving.recent_write_failure(), None);
    client
        .write_failure
        .record::<()>(&Err(status(400, "bad line")));
    assert_eq!(serving.recent_write_failure(), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    assert!(backoff_delay(1) >= Duration::from_millis(200));
    assert!(backoff_delay(1) <= Duration::from_millis(300));
    assert!(backoff_delay(30) <= Duration::from_millis(7_500));
    for attempt in 1..10 {
        assert!(backoff_delay(attempt) <= max_backoff(attempt));
    }
}

#[test]
fn the_worst_case_is_every_attempt_timing_out_plus_the_backoffs() {
    let settings = crate::config::Settings::load_with_env(None, Vec::new()).unwrap();
    // Defaults: 4 attempts of 60 s, backoffs of at most 0.3, 0.6 and 1.2 s.
    let client = InfluxClient::new(&settings.influx).unwrap();
    assert_eq!(client.worst_case(), Duration::from_millis(242_100));
}

#[test]
fn credentials_in_the_url_become_basic_auth_and_leave_no_trace() {
    let (url, userinfo) = split_userinfo("http://leakuser:leak%40PASS123@127.0.0.1:8086/");
    assert_eq!(url, "http://127.0.0.1:8086/");
    assert_eq!(
        userinfo,
        Some(("leakuser".to_string(), "leak@PASS123".to_string()))
    );
    assert_eq!(
        split_userinfo("http://127.0.0.1:8086"),
        ("http://127.0.0.1:8086".to_string(), None)
    );
    let mut settings = crate::config::Settings::load_with_env(None, Vec::<(String, String)>::new())
        .unwrap()
        .influx;
    settings.url = "http://leakuser:leakPASS123@127.0.0.1:8086".into();
    let client = InfluxClient::new(&settings).unwrap();
    let shown = format!("{client:?} {}", client.url());
    assert!(!shown.contains("leakPASS123"), "{shown}");
    assert!(matches!(client.auth, Auth::Basic { ref password, .. } if password == "leakPASS123"));
    settings.token = crate::config::Secret::new("tok-en-secret-0001");
    let shown = format!("{:?} {settings:?}", InfluxClient::new(&settings).unwrap());
    assert!(
        !shown.contains("tok-en-secret-0001") && !shown.contains("leakPASS123"),
        "{shown}"
    );
}
