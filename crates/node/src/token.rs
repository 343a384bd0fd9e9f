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

/// Who `token` speaks for at `now` (seconds since the epoch), under `auth`.
pub fn verify(auth: &AuthState, token: &str, now: u64) -> Result<Caller, KvError> {
    let invalid = KvError::InvalidAuthToken;
    let (claims, tag) = token.rsplit_once('.').ok_or(invalid.clone())?;
    let tag = B64.decode(tag).map_err(|_| invalid.clone())?;
    hmac::verify(&key(auth), claims.as_bytes(), &tag).map_err(|_| invalid.clone())?;
    let mut parts = claims.split('.');
    let (Some(name), Some(generation), Some(expires), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid);
    };
    let name = B64
        .decode(name)
        .ok()
        .and_then(|n| String::from_utf8(n).ok())
        .ok_or(invalid.clone())?;
    let generation: u64 = generation.parse().map_err(|_| invalid.clone())?;
    let expires: u64 = expires.parse().map_err(|_| invalid.clone())?;
    if now >= expires || !auth.is_current(&name, generation) {
        return Err(invalid);
    }
    Ok(Caller::User { name, generation })
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
    }
}
