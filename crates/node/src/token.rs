//! Auth tokens: what a client that logged in sends with each request (gRPC metadata
//! `token`, as etcd's clients send it, or the JSON gateway's `Authorization` header).
//!
//! A token names a user and that user's generation, and expires; it is signed with the
//! secret the replicated auth state holds (HMAC-SHA256), so every member checks it alone,
//! without a log entry per login (etcd's "simple" tokens take one). A new password, a
//! deleted user or auth turned off and on again makes older tokens fail.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ekmat_kv::{AuthState, Caller, KvError};
use ring::hmac;

/// A token for `name` at `generation`, valid until `expires` (seconds since the epoch).
pub fn mint(auth: &AuthState, name: &str, generation: u64, expires: u64) -> String {
    let claims = format!("{}.{generation}.{expires}", B64.encode(name));
    let tag = hmac::sign(&key(auth), claims.as_bytes());
    format!("{claims}.{}", B64.encode(tag.as_ref()))
}

/// A token with which member `member_id` asks another for its hash (Maintenance.HashKV,
/// which otherwise needs root), valid until `expires`. It names no user (no user can
/// have an empty name), so it stands for nobody anywhere else: a member's own
/// comparison needs no root credentials, and an intercepted one grants only hashes.
pub fn mint_member(auth: &AuthState, member_id: u64, expires: u64) -> String {
    mint(auth, "", member_id, expires)
}

/// Whether `token` is a member's ([`mint_member`]), valid at `now` under `auth`.
pub fn is_member(auth: &AuthState, token: &str, now: u64) -> bool {
    claims(token).is_some_and(|c| {
        c.name.is_empty()
            && now < c.expires
            && !auth.token_secret().is_empty()
            && hmac::verify(&key(auth), c.signed.as_bytes(), &c.tag).is_ok()
    })
}

/// What a token says, before its signature is checked.
struct Claims<'a> {
    /// What the signature covers.
    signed: &'a str,
    tag: Vec<u8>,
    name: String,
    generation: u64,
    expires: u64,
}

fn claims(token: &str) -> Option<Claims<'_>> {
    let (signed, tag) = token.rsplit_once('.')?;
    let mut parts = signed.split('.');
    let (Some(name), Some(generation), Some(expires), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(Claims {
        signed,
        tag: B64.decode(tag).ok()?,
        name: String::from_utf8(B64.decode(name).ok()?).ok()?,
        generation: generation.parse().ok()?,
        expires: expires.parse().ok()?,
    })
}

/// Who `token` speaks for at `now` (seconds since the epoch), under `auth` (members
/// call [`judge`], which parses the token once and may defer).
#[cfg(test)]
fn verify(auth: &AuthState, token: &str, now: u64) -> Result<Caller, KvError> {
    let c = claims(token).ok_or(KvError::InvalidAuthToken)?;
    verify_claims(auth, c, now)
}

/// [`verify`] of a token already parsed.
fn verify_claims(auth: &AuthState, c: Claims<'_>, now: u64) -> Result<Caller, KvError> {
    let invalid = KvError::InvalidAuthToken;
    if auth.token_secret().is_empty() {
        return Err(invalid); // nothing was signed with no secret
    }
    hmac::verify(&key(auth), c.signed.as_bytes(), &c.tag).map_err(|_| invalid.clone())?;
    if now >= c.expires || !auth.is_current(&c.name, c.generation) {
        return Err(invalid);
    }
    Ok(Caller::User {
        name: c.name,
        generation: c.generation,
    })
}

/// Who a request carrying `token` comes from, judged under `auth` (a member's applied
/// state), or none if that state may be older than the token: it names a user this
/// state does not know, or an older generation of them (auth enabled, the user made
/// or given a password since). A member judges again once it has caught up.
/// While auth is off, tokens are ignored, as etcd ignores them.
pub fn judge(auth: &AuthState, token: &str, now: u64) -> Option<Result<Caller, KvError>> {
    let Some(c) = claims(token) else {
        return Some(if auth.enabled() {
            Err(KvError::InvalidAuthToken)
        } else {
            Ok(Caller::Anonymous)
        });
    };
    match auth.credentials(&c.name) {
        Some((_, generation)) if generation >= c.generation => {}
        _ => return None,
    }
    if !auth.enabled() {
        return Some(Ok(Caller::Anonymous));
    }
    Some(verify_claims(auth, c, now))
}

fn key(auth: &AuthState) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, auth.token_secret())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ekmat_core::RequestId;
    use ekmat_kv::{AuthRequest, Command, KvStore};

    fn apply(kv: &mut KvStore, command: Command) {
        let index = kv.applied_index() + 1;
        let bytes = ekmat_kv::Envelope::new(1, command).encode();
        kv.apply(index, RequestId::default(), &bytes);
    }

    fn store(secret: &'static [u8]) -> KvStore {
        let mut kv = KvStore::new();
        for request in [
            AuthRequest::UserAdd {
                name: "root".into(),
                password_hash: None,
            },
            AuthRequest::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
            AuthRequest::Enable {
                token_secret: bytes::Bytes::from_static(secret),
            },
        ] {
            apply(&mut kv, Command::Auth(request));
        }
        assert!(kv.auth().enabled());
        kv
    }

    #[test]
    fn a_member_that_may_be_behind_a_token_says_so_instead_of_refusing_it() {
        let kv = store(b"secret");
        let (_, generation) = kv.auth().credentials("root").unwrap();
        let newer = mint(kv.auth(), "root", generation + 1, 100);
        assert_eq!(judge(kv.auth(), &newer, 1), None, "a newer generation");
        let stranger = mint(kv.auth(), "nobody", 1, 100);
        assert_eq!(
            judge(kv.auth(), &stranger, 1),
            None,
            "a user not known here"
        );
        let current = mint(kv.auth(), "root", generation, 100);
        assert!(matches!(judge(kv.auth(), &current, 1), Some(Ok(_))));
        assert_eq!(
            judge(kv.auth(), "junk", 1),
            Some(Err(KvError::InvalidAuthToken))
        );
        assert_eq!(
            judge(&AuthState::default(), "junk", 1),
            Some(Ok(Caller::Anonymous))
        );
    }

    #[test]
    fn a_member_token_lets_a_member_read_hashes_and_stands_for_no_user() {
        let kv = store(b"secret");
        let token = mint_member(kv.auth(), 7, 100);
        assert!(is_member(kv.auth(), &token, 99));
        assert!(!is_member(kv.auth(), &token, 100), "expired");
        assert!(
            !is_member(store(b"another").auth(), &token, 99),
            "signed with another secret"
        );
        let forged = token.replacen(".100.", ".900.", 1);
        assert_ne!(forged, token);
        assert!(
            !is_member(kv.auth(), &forged, 99),
            "a later expiry, unsigned"
        );
        let (_, generation) = kv.auth().credentials("root").unwrap();
        let root = mint(kv.auth(), "root", generation, 100);
        assert!(
            !is_member(kv.auth(), &root, 99),
            "a user's token is no member's"
        );
        assert!(!is_member(&AuthState::default(), &token, 99), "no secret");
        // Anywhere else it names a user no member knows: refused after a read barrier.
        assert_eq!(judge(kv.auth(), &token, 99), None);
        assert_eq!(
            verify(kv.auth(), &token, 99),
            Err(KvError::InvalidAuthToken)
        );
    }

    #[test]
    fn a_token_speaks_for_its_user_until_it_expires_or_the_user_changes() {
        let mut kv = store(b"one secret");
        let (_, generation) = kv.auth().credentials("root").unwrap();
        let token = mint(kv.auth(), "root", generation, 100);
        let root = Caller::User {
            name: "root".into(),
            generation,
        };
        assert_eq!(verify(kv.auth(), &token, 99), Ok(root));
        assert_eq!(
            verify(kv.auth(), &token, 100),
            Err(KvError::InvalidAuthToken)
        );
        let other = store(b"another secret");
        assert_eq!(
            verify(other.auth(), &token, 99),
            Err(KvError::InvalidAuthToken),
            "signed with another secret"
        );
        let forged = token.replacen(&generation.to_string(), "77", 1);
        assert_eq!(
            verify(kv.auth(), &forged, 99),
            Err(KvError::InvalidAuthToken)
        );
        assert_eq!(
            verify(kv.auth(), "garbage", 99),
            Err(KvError::InvalidAuthToken)
        );
        apply(
            &mut kv,
            Command::Auth(AuthRequest::UserChangePassword {
                name: "root".into(),
                password_hash: "h".into(),
            }),
        );
        assert_eq!(
            verify(kv.auth(), &token, 99),
            Err(KvError::InvalidAuthToken),
            "a new password ends older tokens"
        );
        let (_, generation) = kv.auth().credentials("root").unwrap();
        let token = mint(kv.auth(), "root", generation, 100);
        for request in [
            AuthRequest::Disable,
            AuthRequest::Enable {
                token_secret: bytes::Bytes::from_static(b"one secret"),
            },
        ] {
            apply(&mut kv, Command::Auth(request));
        }
        assert_eq!(
            verify(kv.auth(), &token, 99),
            Err(KvError::InvalidAuthToken),
            "enabling auth again ends older tokens, even with the same secret"
        );
    }
}
