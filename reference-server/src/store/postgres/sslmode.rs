//! `sslmode` and `sslrootcert` in a PostgreSQL connection string, with
//! libpq's meanings. tokio-postgres only knows `disable`, `prefer` and
//! `require` (and no `sslrootcert`), so [`split`] takes both out of the
//! string, which tokio-postgres then parses as before, and says what they
//! asked for. Both forms are read, as tokio-postgres reads them:
//!
//! - a URL: `postgres://user:pw@host/db?sslmode=verify-full&sslrootcert=/ca.pem`
//!   (percent-encoded keys and values);
//! - key=value: `host=db user=edge sslmode=verify-ca sslrootcert='/my ca.pem'`
//!   (values bare or single-quoted, `\` escapes the next character).
//!
//! No sockets here; `tls.rs` acts on the result.

use std::fmt;
use std::path::PathBuf;

/// How much TLS a connection insists on (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain; also plain if the TLS
    /// handshake fails. libpq's default, and ours.
    #[default]
    Prefer,
    /// TLS or no connection. The certificate is not checked, unless a CA
    /// file is given: then it is checked as with `verify-ca` (libpq's rule).
    Require,
    /// TLS, and the certificate chains to a trusted CA; any host name.
    VerifyCa,
    /// TLS, the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 5] =
        ["disable", "prefer", "require", "verify-ca", "verify-full"];

    pub fn parse(text: &str) -> Result<SslMode, SslModeError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(SslModeError::UnknownMode(other.to_string())),
        }
    }

    /// The mode tokio-postgres is told: it negotiates TLS, and this crate's
    /// connector (`tls.rs`) decides what the certificate must prove.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        };
        f.write_str(name)
    }
}

/// What the connection string said about TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA(s) to trust instead of the public
    /// roots.
    pub root_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SslModeError {
    #[error(
        "sslmode={0} is not supported: use disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownMode(String),
    #[error("sslrootcert is empty: give the path of a PEM file of CA certificates")]
    EmptyRootCert,
    #[error("the connection string is malformed: {0}")]
    Malformed(&'static str),
}

/// The connection string without `sslmode` and `sslrootcert`, and what they
/// said (the last one wins when a key repeats, as in libpq). Everything
/// else is kept byte for byte.
pub fn split(conn: &str) -> Result<(String, TlsSettings), SslModeError> {
    let mut settings = TlsSettings::default();
    let mut take = |key: &str, value: &str| -> Result<bool, SslModeError> {
        match key {
            "sslmode" => settings.mode = SslMode::parse(value)?,
            "sslrootcert" if value.is_empty() => return Err(SslModeError::EmptyRootCert),
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = match url_query(conn) {
        Some((base, query)) => {
            let mut kept = Vec::new();
            for pair in query.split('&') {
                let taken = match pair.split_once('=') {
                    Some((key, value)) => match (percent_decode(key), percent_decode(value)) {
                        (Some(key), Some(value)) => take(&key, &value)?,
                        _ => false,
                    },
                    None => false,
                };
                if !taken {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        None if is_url(conn) => conn.to_string(),
        None => {
            let mut out = String::with_capacity(conn.len());
            let mut from = 0;
            for param in key_values(conn)? {
                if take(param.key, &param.value)? {
                    out.push_str(&conn[from..param.start]);
                    from = param.end;
                }
            }
            out.push_str(&conn[from..]);
            out
        }
    };
    Ok((rest, settings))
}

fn is_url(conn: &str) -> bool {
    conn.starts_with("postgres://") || conn.starts_with("postgresql://")
}

/// A URL's part before `?` and its query, found as tokio-postgres finds
/// them: the first `?` after the credentials (which end at the first `@`).
fn url_query(conn: &str) -> Option<(&str, &str)> {
    if !is_url(conn) {
        return None;
    }
    let after_credentials = conn.find('@').map_or(0, |at| at + 1);
    let at = after_credentials + conn[after_credentials..].find('?')?;
    Some((&conn[..at], &conn[at + 1..]))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h)? * 16 + hex(l)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One `key = value` of a key=value string: where it starts and ends (byte
/// offsets, surrounding blanks excluded) and its unescaped value.
struct Param<'a> {
    key: &'a str,
    value: String,
    start: usize,
    end: usize,
}

/// Reads a key=value string with tokio-postgres's grammar.
fn key_values(conn: &str) -> Result<Vec<Param<'_>>, SslModeError> {
    let mut params = Vec::new();
    let mut it = conn.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Ok(params);
        };
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = it.peek().map_or(conn.len(), |&(i, _)| i);
        let key = &conn[start..key_end];
        if key.is_empty() {
            return Err(SslModeError::Malformed("a `=` without a key before it"));
        }
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            return Err(SslModeError::Malformed("a key without `=` and a value"));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let end = loop {
            match it.next() {
                Some((i, '\'')) if quoted => break i + 1,
                Some((i, c)) if !quoted && c.is_whitespace() => break i,
                Some((_, '\\')) => value.extend(it.next().map(|(_, c)| c)),
                Some((_, c)) => value.push(c),
                None if quoted => {
                    return Err(SslModeError::Malformed("a quoted value is not closed"))
                }
                None => break conn.len(),
            }
        };
        if !quoted && value.is_empty() {
            return Err(SslModeError::Malformed("a key without a value"));
        }
        params.push(Param {
            key,
            value,
            start,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn settings(mode: SslMode, root_cert: Option<&str>) -> TlsSettings {
        TlsSettings {
            mode,
            root_cert: root_cert.map(PathBuf::from),
        }
    }

    #[test]
    fn url_modes_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "postgres://edge:p%40ss@db:5432/edge?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fmy%20ca.pem&options=-c%20search_path%3Ds",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://edge:p%40ss@db:5432/edge?application_name=x&options=-c%20search_path%3Ds"
        );
        assert_eq!(tls, settings(SslMode::VerifyFull, Some("/etc/my ca.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss"[..]));
    }

    #[test]
    fn every_mode_reads_and_the_query_goes_when_empty() {
        for name in SslMode::NAMES {
            let (rest, tls) = split(&format!("postgresql://h/db?sslmode={name}")).unwrap();
            assert_eq!(rest, "postgresql://h/db");
            assert_eq!(tls.mode.to_string(), name);
        }
        assert_eq!(
            split("postgres://h/db").unwrap(),
            ("postgres://h/db".into(), TlsSettings::default())
        );
        assert_eq!(TlsSettings::default().mode, SslMode::Prefer);
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, tls) = split("postgres://u:a?b@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(tls.mode, SslMode::Require);
    }

    #[test]
    fn unknown_modes_are_refused_with_the_ones_that_exist() {
        let e = split("postgres://h/db?sslmode=allow").unwrap_err();
        assert_eq!(e, SslModeError::UnknownMode("allow".into()));
        assert!(e.to_string().contains("verify-ca"), "{e}");
        assert_eq!(
            split("postgres://h/db?sslrootcert=").unwrap_err(),
            SslModeError::EmptyRootCert
        );
    }

    #[test]
    fn key_value_strings_lose_only_the_tls_keys() {
        let (rest, tls) =
            split("host=db  sslmode = verify-ca user=edge sslrootcert='/my ca\\'s.pem' password=x")
                .unwrap();
        assert_eq!(rest, "host=db   user=edge  password=x");
        assert_eq!(tls, settings(SslMode::VerifyCa, Some("/my ca's.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_user(), Some("edge"));
        assert_eq!(
            split("host=db sslmode=require sslmode=disable")
                .unwrap()
                .1
                .mode,
            SslMode::Disable
        );
        assert!(matches!(
            split("host=db sslrootcert='/x"),
            Err(SslModeError::Malformed(_))
        ));
        assert!(matches!(split("host"), Err(SslModeError::Malformed(_))));
    }

    /// A key=value string of the given pairs, values quoted when they need it.
    fn key_value_string(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| {
                let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
                format!("{k}='{escaped}'")
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest! {
        #[test]
        fn never_panics(conn in ".{0,80}") {
            let _ = split(&conn);
            let _ = split(&format!("postgres://{conn}"));
        }

        #[test]
        fn key_value_round_trip(
            pairs in prop::collection::vec(("[a-z_]{1,10}", ".{0,12}"), 0..6),
            mode in prop::sample::select(SslMode::NAMES.to_vec()),
            root in "[^\u{0}]{1,20}",
            at in 0usize..6,
        ) {
            let pairs: Vec<_> = pairs
                .into_iter()
                .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
                .collect();
            let mut with = pairs.clone();
            let at = at.min(with.len());
            with.insert(at, ("sslmode".into(), mode.to_string()));
            with.push(("sslrootcert".into(), root.clone()));
            let (rest, tls) = split(&key_value_string(&with)).unwrap();
            prop_assert_eq!(tls.mode.to_string(), mode);
            prop_assert_eq!(tls.root_cert, Some(PathBuf::from(&root)));
            let kept: Vec<_> = key_values(&rest)
                .unwrap()
                .into_iter()
                .map(|p| (p.key.to_string(), p.value))
                .collect();
            prop_assert_eq!(kept, pairs);
        }

        #[test]
        fn url_round_trip(
            pairs in prop::collection::vec(("[a-z_]{1,10}", "[a-zA-Z0-9%._-]{0,12}"), 0..6),
            mode in prop::sample::select(SslMode::NAMES.to_vec()),
            at in 0usize..6,
        ) {
            let pairs: Vec<_> = pairs
                .into_iter()
                .filter(|(k, _)| k != "sslmode" && k != "sslrootcert")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let mut with = pairs.clone();
            with.insert(at.min(with.len()), format!("sslmode={mode}"));
            let (rest, tls) = split(&format!("postgres://u:p@h/db?{}", with.join("&"))).unwrap();
            prop_assert_eq!(tls.mode.to_string(), mode);
            let expected = if pairs.is_empty() {
                "postgres://u:p@h/db".to_string()
            } else {
                format!("postgres://u:p@h/db?{}", pairs.join("&"))
            };
            prop_assert_eq!(rest, expected);
        }
    }
}
