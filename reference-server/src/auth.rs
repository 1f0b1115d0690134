//! WS-AUTH-*: who may open a socket, sync, ack, or use the control API.
//!
//! Pure functions over strings and the clock, so they can be property-tested
//! without sockets. Every secret comparison is constant-time, and no error
//! here ever carries a token.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::TokenKinds;

type HmacSha256 = Hmac<Sha256>;

/// WS-AUTH-5: an HMAC token is valid for 24 h from its timestamp.
pub const TOKEN_LIFETIME_S: i64 = 24 * 3600;
/// WS-AUTH-5: at most 5 min of clock skew into the future.
pub const TOKEN_MAX_SKEW_S: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer token")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer TOKEN`")]
    Malformed,
    #[error("invalid token")]
    Invalid,
    #[error("token expired or not yet valid")]
    Expired,
    #[error("token belongs to another agent")]
    OtherAgent,
}

/// How a request authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The shared secret: the agent is whoever the request names.
    SharedSecret,
    /// A per-agent HMAC token for this agent id.
    Agent(String),
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Compares two secrets in time independent of where they differ and of
/// their lengths (both are hashed first).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// Checks edge secrets and agent tokens.
#[derive(Clone)]
pub struct Authenticator {
    edge_secret: String,
    kinds: TokenKinds,
}

impl Authenticator {
    pub fn new(edge_secret: String, kinds: TokenKinds) -> Self {
        Authenticator { edge_secret, kinds }
    }

    /// WS-AUTH-5: the shared secret or an HMAC token; `agent_id`, when given,
    /// must be the token's agent.
    pub fn authenticate(
        &self,
        token: &str,
        agent_id: Option<&str>,
        now_s: i64,
    ) -> Result<Identity, AuthError> {
        if self.kinds != TokenKinds::Hmac && secrets_equal(token, &self.edge_secret) {
            return Ok(Identity::SharedSecret);
        }
        if self.kinds == TokenKinds::Shared {
            return Err(AuthError::Invalid);
        }
        let claims = verify_hmac_token(&self.edge_secret, token, now_s)?;
        match agent_id {
            Some(id) if id != claims.edge_agent_id => Err(AuthError::OtherAgent),
            _ => Ok(Identity::Agent(claims.edge_agent_id)),
        }
    }

    pub fn mint(&self, edge_agent_id: &str, user_phone: &str, now_s: i64) -> String {
        mint_hmac_token(&self.edge_secret, edge_agent_id, user_phone, now_s)
    }
}

/// What a valid HMAC token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub edge_agent_id: String,
    pub user_phone: String,
    pub issued_at: i64,
}

fn signature(secret: &str, message: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

/// WS-AUTH-5: `base64("{id}:{phone}:{ts}:{hex(HMAC-SHA256(secret, "{id}:{phone}:{ts}"))}")`.
pub fn mint_hmac_token(secret: &str, edge_agent_id: &str, user_phone: &str, now_s: i64) -> String {
    let message = format!("{edge_agent_id}:{user_phone}:{now_s}");
    let mac = hex::encode(signature(secret, &message).finalize().into_bytes());
    STANDARD.encode(format!("{message}:{mac}"))
}

/// Decodes and checks an HMAC token: signature (constant-time), then age.
pub fn verify_hmac_token(secret: &str, token: &str, now_s: i64) -> Result<TokenClaims, AuthError> {
    let raw = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(token).ok())
        .ok_or(AuthError::Invalid)?;
    let text = String::from_utf8(raw).map_err(|_| AuthError::Invalid)?;
    let (message, mac_hex) = text.rsplit_once(':').ok_or(AuthError::Invalid)?;
    let mut parts = message.splitn(3, ':');
    let (Some(id), Some(phone), Some(ts)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Invalid);
    };
    let mac = hex::decode(mac_hex).map_err(|_| AuthError::Invalid)?;
    signature(secret, message)
        .verify_slice(&mac)
        .map_err(|_| AuthError::Invalid)?;
    let issued_at: i64 = ts.parse().map_err(|_| AuthError::Invalid)?;
    if issued_at > now_s + TOKEN_MAX_SKEW_S || now_s - issued_at > TOKEN_LIFETIME_S {
        return Err(AuthError::Expired);
    }
    Ok(TokenClaims {
        edge_agent_id: id.to_string(),
        user_phone: phone.to_string(),
        issued_at,
    })
}

/// WS-AUTH-3: an id is `[A-Za-z0-9_.-]{1,128}`.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// WS-AUTH-3: a phone number is `+?[0-9]{3,20}`.
pub fn valid_phone(phone: &str) -> bool {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    (3..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// WS-HTTP-3: the same phone always registers to the same id.
pub fn agent_id_for_phone(phone: &str) -> String {
    format!("edge_{}", phone.trim_start_matches('+'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_780_000_000;

    fn auth(kinds: TokenKinds) -> Authenticator {
        Authenticator::new("s3cret".into(), kinds)
    }

    #[test]
    fn ws_auth_5_shared_secret_and_hmac_token_both_open_by_default() {
        let a = auth(TokenKinds::Both);
        assert_eq!(
            a.authenticate("s3cret", Some("a1"), NOW),
            Ok(Identity::SharedSecret)
        );
        let token = a.mint("a1", "+15550001", NOW);
        assert_eq!(
            a.authenticate(&token, Some("a1"), NOW),
            Ok(Identity::Agent("a1".into()))
        );
    }

    #[test]
    fn ws_auth_5_token_of_another_agent_is_refused() {
        let a = auth(TokenKinds::Both);
        let token = a.mint("a1", "+15550001", NOW);
        assert_eq!(
            a.authenticate(&token, Some("a2"), NOW),
            Err(AuthError::OtherAgent)
        );
    }

    #[test]
    fn ws_auth_5_token_lifetime_and_skew() {
        let a = auth(TokenKinds::Both);
        let token = a.mint("a1", "1555", NOW);
        assert!(a.authenticate(&token, None, NOW + TOKEN_LIFETIME_S).is_ok());
        assert_eq!(
            a.authenticate(&token, None, NOW + TOKEN_LIFETIME_S + 1),
            Err(AuthError::Expired)
        );
        assert!(a.authenticate(&token, None, NOW - TOKEN_MAX_SKEW_S).is_ok());
        assert_eq!(
            a.authenticate(&token, None, NOW - TOKEN_MAX_SKEW_S - 1),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn ws_auth_5_restricting_token_kinds() {
        let token = auth(TokenKinds::Both).mint("a1", "1555", NOW);
        assert_eq!(
            auth(TokenKinds::Shared).authenticate(&token, None, NOW),
            Err(AuthError::Invalid)
        );
        assert!(auth(TokenKinds::Hmac)
            .authenticate("s3cret", None, NOW)
            .is_err());
    }

    #[test]
    fn token_signed_with_another_secret_is_invalid() {
        let token = mint_hmac_token("other", "a1", "1555", NOW);
        assert_eq!(
            auth(TokenKinds::Both).authenticate(&token, None, NOW),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer")), Err(AuthError::Malformed));
    }

    #[test]
    fn ids_and_phones() {
        assert!(valid_agent_id("edge_13106781670"));
        assert!(valid_agent_id(&"a".repeat(128)));
        assert!(!valid_agent_id(&"a".repeat(129)));
        assert!(!valid_agent_id(""));
        assert!(!valid_agent_id("a b"));
        assert!(valid_phone("+13105551234"));
        assert!(!valid_phone("12"));
        assert!(!valid_phone("+1-310"));
        assert_eq!(agent_id_for_phone("+13105551234"), "edge_13105551234");
    }

    proptest! {
        /// Arbitrary text never authenticates and never panics.
        #[test]
        fn arbitrary_tokens_are_refused(token in ".{0,200}") {
            prop_assume!(token != "s3cret");
            prop_assert!(auth(TokenKinds::Both).authenticate(&token, None, NOW).is_err());
        }

        /// Any minted token round-trips to its claims.
        #[test]
        fn minted_tokens_verify(id in "[A-Za-z0-9_.-]{1,128}", phone in "\\+?[0-9]{3,20}", ts in 0i64..4_000_000_000) {
            let token = mint_hmac_token("k", &id, &phone, ts);
            let claims = verify_hmac_token("k", &token, ts).unwrap();
            prop_assert_eq!(claims, TokenClaims { edge_agent_id: id, user_phone: phone, issued_at: ts });
        }
    }
}
