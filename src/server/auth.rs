//! Who may write and who may read.
//!
//! Writing (`POST /api/trades`) needs `Authorization: Bearer <server.ingest_token>`.
//! Without a configured token, writing is open only while the server listens on
//! loopback and the request did not come through a proxy; on any other address
//! it is refused with a 403 that says how to enable it (secure by default).
//! Reading is public unless `server.read_token` is set. Tokens are compared in
//! constant time and never appear in logs or error messages.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use subtle::ConstantTimeEq;
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, StatusCode};

use crate::config::{Secret, ServerSettings};

/// Whether a listen address only accepts connections from this host.
pub fn is_loopback(ip: IpAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too; 0.0.0.0 and `::` are every interface.
    ip.to_canonical().is_loopback()
}

/// How writing requests are treated, decided once from the listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// A token is configured: writing needs it.
    Token,
    /// No token, loopback listen address: open to local (unproxied) clients.
    OpenOnLoopback,
    /// No token, reachable from the network: writing is refused.
    Refused,
}

impl WritePolicy {
    /// The policy for a server listening on `listen` with or without an ingest token.
    pub fn decide(listen: IpAddr, token_set: bool) -> WritePolicy {
        if token_set {
            WritePolicy::Token
        } else if is_loopback(listen) {
            WritePolicy::OpenOnLoopback
        } else {
            WritePolicy::Refused
        }
    }
}

/// The credentials and policies of one server.
#[derive(Clone)]
pub struct Access {
    inner: Arc<AccessInner>,
}

struct AccessInner {
    listen: SocketAddr,
    write: WritePolicy,
    ingest: Secret,
    read: Secret,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret's Debug is redacted; spelled out so no field can slip through.
        f.debug_struct("Access")
            .field("listen", &self.inner.listen)
            .field("write", &self.inner.write)
            .field("read_token_set", &self.inner.read.is_set())
            .finish()
    }
}

/// A request refused for lack of the right credential (401) or by policy (403).
#[derive(Debug)]
pub struct Denied {
    /// 401 or 403.
    pub status: StatusCode,
    /// What to do about it; never contains a credential.
    pub message: String,
    /// `WWW-Authenticate` challenge for a 401.
    pub challenge: Option<&'static str>,
}

impl warp::reject::Reject for Denied {}

/// Headers a proxy adds: their presence means the client is not on this host,
/// whatever address the connection comes from.
const PROXY_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

impl Access {
    /// Access rules for a server bound to `listen` with `settings`' tokens.
    pub fn new(settings: &ServerSettings, listen: SocketAddr) -> Access {
        Access {
            inner: Arc::new(AccessInner {
                listen,
                write: WritePolicy::decide(listen.ip(), settings.ingest_token.is_set()),
                ingest: settings.ingest_token.clone(),
                read: settings.read_token.clone(),
            }),
        }
    }

    /// How writing is treated.
    pub fn write_policy(&self) -> WritePolicy {
        self.inner.write
    }

    /// Whether reading needs a token.
    pub fn read_protected(&self) -> bool {
        self.inner.read.is_set()
    }

    /// Logs, once at start-up, who may write and read (never the tokens).
    pub fn log_startup(&self) {
        let listen = self.inner.listen;
        match self.inner.write {
            WritePolicy::Token => tracing::info!(
                %listen,
                "POST /api/trades requires Authorization: Bearer <server.ingest_token>"
            ),
            WritePolicy::OpenOnLoopback => tracing::info!(
                %listen,
                "POST /api/trades is open without a token because the server listens on loopback only; requests relayed by a proxy are refused (set server.ingest_token to accept them)"
            ),
            WritePolicy::Refused => tracing::warn!(
                %listen,
                "writing is refused: the server listens on {listen}, which is not loopback, and no server.ingest_token is set; set OHLCD_SERVER__INGEST_TOKEN or server.ingest_token_file to accept POST /api/trades"
            ),
        }
        if self.read_protected() {
            tracing::info!(
                "reading requires server.read_token (Bearer or Basic auth); /healthz stays public"
            );
        } else {
            tracing::info!("reading is public (no server.read_token)");
        }
    }

    /// Checks a writing request's headers.
    pub fn check_write(&self, headers: &HeaderMap) -> Result<(), Denied> {
        match self.inner.write {
            WritePolicy::Token => {
                if bearer(headers).is_some_and(|t| matches(t, &self.inner.ingest)) {
                    Ok(())
                } else {
                    Err(Denied {
                        status: StatusCode::UNAUTHORIZED,
                        message: "missing or wrong ingest token: send Authorization: Bearer <server.ingest_token>".into(),
                        challenge: Some("Bearer realm=\"ohlcd\""),
                    })
                }
            }
            WritePolicy::OpenOnLoopback => {
                match PROXY_HEADERS.iter().find(|h| headers.contains_key(**h)) {
                    None => Ok(()),
                    Some(h) => Err(Denied {
                        status: StatusCode::FORBIDDEN,
                        message: format!(
                            "writing is disabled for requests relayed by a proxy ({h} header) while no server.ingest_token is set; set OHLCD_SERVER__INGEST_TOKEN or server.ingest_token_file and send Authorization: Bearer <token>"
                        ),
                        challenge: None,
                    }),
                }
            }
            WritePolicy::Refused => Err(Denied {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "writing is disabled: ohlcd listens on {}, which is not loopback, and no server.ingest_token is set; set OHLCD_SERVER__INGEST_TOKEN or server.ingest_token_file and send Authorization: Bearer <token>",
                    self.inner.listen
                ),
                challenge: None,
            }),
        }
    }

    /// Checks a reading request's headers: Bearer or Basic-auth password equal
    /// to the read token (or the ingest token, which may read too).
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), Denied> {
        let read = &self.inner.read;
        if !read.is_set() {
            return Ok(());
        }
        let ok = match presented(headers) {
            // Both compared, no early exit: timing says nothing about which matched.
            Some(given) => {
                (matches(&given, read) as u8 | matches(&given, &self.inner.ingest) as u8) == 1
            }
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Denied {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong read token: send Authorization: Bearer <server.read_token>, or Basic auth with the token as password".into(),
                challenge: Some("Basic realm=\"ohlcd\", charset=\"UTF-8\""),
            })
        }
    }
}

/// Constant-time equality with a configured secret (an unset one matches nothing).
fn matches(given: &[u8], expected: &Secret) -> bool {
    // `ct_eq` on slices of different lengths returns false at once: the length
    // of a token is not secret, its bytes are.
    expected.is_set() && bool::from(given.ct_eq(expected.expose().as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(warp::http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = split_scheme(value)?;
    scheme.eq_ignore_ascii_case(b"bearer").then(|| trim(rest))
}

/// The token presented for reading: a Bearer token or a Basic-auth password.
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value: &HeaderValue = headers.get(warp::http::header::AUTHORIZATION)?;
    let (scheme, rest) = split_scheme(value.as_bytes())?;
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Some(trim(rest).to_vec())
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(trim(rest))
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// Passes writing requests that `access` allows; rejects the rest with [`Denied`].
pub fn write(access: Access) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let r = access.check_write(&headers).map_err(warp::reject::custom);
            async move { r }
        })
        .untuple_one()
}

/// Passes reading requests that `access` allows; rejects the rest with [`Denied`].
pub fn read(access: Access) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::headers_cloned()
        .and_then(move |headers: HeaderMap| {
            let r = access.check_read(&headers).map_err(warp::reject::custom);
            async move { r }
        })
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_addresses_are_recognised_and_wildcards_are_not() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback(addr(ip)), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.1.10",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(!is_loopback(addr(ip)), "{ip}");
        }
    }

    #[test]
    fn writing_is_refused_off_loopback_without_a_token() {
        assert_eq!(
            WritePolicy::decide(addr("0.0.0.0"), false),
            WritePolicy::Refused
        );
        assert_eq!(WritePolicy::decide(addr("::"), false), WritePolicy::Refused);
        assert_eq!(
            WritePolicy::decide(addr("10.1.2.3"), false),
            WritePolicy::Refused
        );
        assert_eq!(
            WritePolicy::decide(addr("127.0.0.2"), false),
            WritePolicy::OpenOnLoopback
        );
        assert_eq!(
            WritePolicy::decide(addr("0.0.0.0"), true),
            WritePolicy::Token
        );
        assert_eq!(
            WritePolicy::decide(addr("127.0.0.1"), true),
            WritePolicy::Token
        );
    }

    fn access(listen: &str, ingest: &str, read: &str) -> Access {
        let mut s = crate::config::Settings::load_with_env(None, Vec::new())
            .unwrap()
            .server;
        s.ingest_token = Secret::new(ingest);
        s.read_token = Secret::new(read);
        Access::new(&s, listen.parse().unwrap())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const INGEST: &str = "ingest-0123456789abcdef";
    const READ: &str = "read-0123456789abcdef";

    #[test]
    fn the_ingest_token_is_checked_as_a_bearer_token() {
        let a = access("0.0.0.0:80", INGEST, "");
        let ok = format!("Bearer {INGEST}");
        assert!(a.check_write(&headers(&[("authorization", &ok)])).is_ok());
        assert!(
            a.check_write(&headers(&[(
                "authorization",
                &format!("bearer  {INGEST} ")
            )]))
            .is_ok()
        );
        for bad in [
            String::new(),
            format!("Bearer {INGEST}x"),
            format!("Bearer {}", &INGEST[1..]),
            format!("Basic {INGEST}"),
            INGEST.to_string(),
            "Bearer ".to_string(),
        ] {
            let e = a
                .check_write(&headers(&[("authorization", &bad)]))
                .unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad}");
            assert!(!e.message.contains(INGEST));
        }
        assert_eq!(
            a.check_write(&HeaderMap::new()).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn without_a_token_loopback_writes_unless_proxied_and_other_addresses_refuse() {
        let local = access("127.0.0.1:8080", "", "");
        assert!(local.check_write(&HeaderMap::new()).is_ok());
        let proxied = local
            .check_write(&headers(&[("x-forwarded-for", "203.0.113.9")]))
            .unwrap_err();
        assert_eq!(proxied.status, StatusCode::FORBIDDEN);
        let open = access("0.0.0.0:8080", "", "");
        let e = open.check_write(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            e.message.contains("OHLCD_SERVER__INGEST_TOKEN"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_read_token_is_accepted_as_bearer_or_basic_password() {
        let a = access("0.0.0.0:80", INGEST, READ);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for good in [
            format!("Bearer {READ}"),
            format!("Bearer {INGEST}"),
            format!("Basic {}", b64(&format!("anyone:{READ}"))),
            format!("Basic {}", b64(&format!(":{READ}"))),
        ] {
            assert!(
                a.check_read(&headers(&[("authorization", &good)])).is_ok(),
                "{good}"
            );
        }
        for bad in [
            format!("Bearer {READ}0"),
            format!("Basic {}", b64(READ)),
            format!("Basic {}", b64(&format!("{READ}:x"))),
            "Basic !!!".to_string(),
        ] {
            let e = a
                .check_read(&headers(&[("authorization", &bad)]))
                .unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad}");
            assert!(e.challenge.unwrap().starts_with("Basic"));
        }
        assert!(
            access("0.0.0.0:80", INGEST, "")
                .check_read(&HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let a = access("0.0.0.0:80", INGEST, READ);
        let shown = format!("{a:?}");
        assert!(!shown.contains(INGEST) && !shown.contains(READ), "{shown}");
    }
}
