//! etcd's Auth service — users, roles, key permissions, login — and who each request
//! comes from. Changes are ordered through the log like any write; a login checks the
//! password after a read barrier and answers a token (`token.rs`). Writes are checked
//! against the caller's permissions where they apply (the state machine's `permission.rs`),
//! reads and watches here, before they are served.

use ekmat_api::etcdserverpb as pb;
use ekmat_kv::{AuthRequest, AuthResponse, Caller, Command, KvError, PermissionType};
use tonic::{Request, Response as Reply, Status};

use super::{Services, call_error, convert, unexpected_answer};
use crate::query::{Answer, Query};
use crate::token;

/// Where a client puts its token: etcd's clients use `token`; etcd's JSON gateway passes
/// the `Authorization` header on as `authorization`.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];
/// How long a member token lasts: one corruption-check round and its retries.
const MEMBER_TOKEN_SECS: u64 = 60;

/// The token a request carries, if any.
fn token_in(
    metadata: &tonic::metadata::MetadataMap,
) -> Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    TOKEN_KEYS.iter().find_map(|key| metadata.get(*key))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fresh random bytes to sign tokens with.
fn fresh_secret() -> Result<bytes::Bytes, Status> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| Status::internal(e.to_string()))?;
    Ok(bytes::Bytes::copy_from_slice(&secret))
}

fn refused(e: KvError) -> Status {
    convert::kv_error(&e)
}

impl Services {
    /// Who sent `request`: anonymous while auth is off (tokens are then ignored, as by
    /// etcd) or when no token came; a bad or expired token is refused.
    pub(crate) async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.caller_of(request.metadata()).await
    }

    /// [`Services::caller`] from a request's metadata alone.
    pub(crate) async fn caller_of(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, Status> {
        let Some(token) = token_in(metadata) else {
            return Ok(Caller::Anonymous);
        };
        let token = token
            .to_str()
            .map_err(|_| refused(KvError::InvalidAuthToken))?;
        let judged = token::judge(&self.inner.auth.borrow(), token, now_secs());
        if let Some(judged) = judged {
            return judged.map_err(refused);
        }
        // This member may not have applied yet what the token was issued under (auth
        // turned on, the user made or given a password): look again after a read
        // barrier, which waits until it has.
        let answer = self
            .read(Query::Auth, true)
            .await
            .map_err(|e| call_error(&e))?;
        let Answer::Auth(auth) = answer else {
            return Err(unexpected_answer());
        };
        match token::judge(&auth, token, now_secs()) {
            Some(judged) => judged.map_err(refused),
            None if auth.enabled() => Err(refused(KvError::InvalidAuthToken)),
            None => Ok(Caller::Anonymous),
        }
    }

    /// `request`'s sender, refused unless it may access the keys of a Lock's or
    /// Election's line for `name` (or, with `key`, that one key) for each of `wanted`:
    /// etcd runs these services as clients of its own KV with the caller's token, so the
    /// caller needs the permissions those KV requests need. Checked here before the
    /// service starts (so no session lease is granted for nothing), and again where its
    /// writes apply, which are the caller's.
    pub(super) async fn check_line<T>(
        &self,
        request: &Request<T>,
        name_or_key: &[u8],
        whole_line: bool,
        wanted: &[PermissionType],
    ) -> Result<Caller, Status> {
        let caller = self.caller(request).await?;
        let auth = self.inner.auth.borrow();
        let (key, end) = if whole_line {
            let prefix = super::queue::line_prefix(name_or_key);
            let end = ekmat_kv::prefix_end(&prefix);
            (prefix, end)
        } else {
            (
                bytes::Bytes::copy_from_slice(name_or_key),
                bytes::Bytes::new(),
            )
        };
        wanted
            .iter()
            .try_for_each(|&kind| auth.check_keys(&caller, &key, &end, kind))
            .map_err(refused)?;
        Ok(caller)
    }

    /// Refused unless the request's sender holds the root role (while auth is on): what
    /// etcd asks of membership changes and auth management.
    pub(super) async fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.administrator(request).await?.map_err(refused)
    }

    /// [`Services::check_admin`] for the Maintenance service, refused as etcd 3.4 refuses
    /// there: its auth layer's own error, which reaches clients with code Unknown
    /// (`auth: permission denied`).
    pub(super) async fn check_maintainer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.administrator(request).await?.map_err(|e| {
            let why = e.to_string();
            Status::unknown(format!("auth: {}", why.trim_start_matches("etcdserver: ")))
        })
    }

    /// [`Services::check_maintainer`] for HashKV, which other members may also ask with
    /// a member token ([`token::mint_member`]) for their corruption checks.
    pub(super) async fn check_hash_reader<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let from_member = token_in(request.metadata())
            .and_then(|token| token.to_str().ok())
            .is_some_and(|token| token::is_member(&self.inner.auth.borrow(), token, now_secs()));
        if from_member {
            return Ok(());
        }
        self.check_maintainer(request).await
    }

    /// A token for this member's requests to its peers' HashKV, if auth is on (with it
    /// off, HashKV needs none).
    pub(super) fn member_token(&self) -> Option<String> {
        let auth = self.inner.auth.borrow();
        (auth.enabled() && !auth.token_secret().is_empty()).then(|| self.mint_member(&auth))
    }

    /// This member's token under `auth`, valid for [`MEMBER_TOKEN_SECS`] from now.
    fn mint_member(&self, auth: &ekmat_kv::AuthState) -> String {
        token::mint_member(auth, self.inner.member_id, now_secs() + MEMBER_TOKEN_SECS)
    }

    /// [`Services::member_token`], having the cluster choose a token secret first if auth
    /// is on without one (a store restored from a backup that nobody logged in to yet),
    /// as a login would. `None` if auth is off, or if no secret could be chosen (said).
    pub(super) async fn member_token_choosing(&self) -> Option<String> {
        if let Some(token) = self.member_token() {
            return Some(token);
        }
        if !self.inner.auth.borrow().enabled() {
            return None;
        }
        match self.choose_token_secret().await {
            Ok(auth) => Some(self.mint_member(&auth)),
            Err(e) => {
                tracing::warn!(error = %e.message(), "no token secret for the corruption check");
                None
            }
        }
    }

    /// Whether the request's sender may administer (the inner result), once its token
    /// is judged (the outer one).
    async fn administrator<T>(&self, request: &Request<T>) -> Result<Result<(), KvError>, Status> {
        let caller = self.caller(request).await?;
        Ok(self.inner.auth.borrow().may_administer(&caller))
    }

    /// Order an auth request as `caller`'s and return its answer.
    async fn auth_write(
        &self,
        request: AuthRequest,
        caller: Caller,
    ) -> Result<AuthResponse, Status> {
        match self.write(Command::Auth(request).from_caller(caller)).await {
            Ok(ekmat_kv::Response::Auth(r)) => Ok(r),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }

    /// `request`'s auth change, as its sender's, answered with only a header (what most
    /// of etcd's auth responses hold).
    async fn auth_change<T>(
        &self,
        request: &Request<T>,
        change: AuthRequest,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let caller = self.caller(request).await?;
        let r = self.auth_write(change, caller).await?;
        Ok(Some(self.header(r.header.revision)))
    }

    /// Have the cluster choose a token secret (a store restored from a backup with auth
    /// on has none) and return the auth state with it. Logins racing here each propose
    /// one; the first ordered wins and the rest change nothing.
    async fn choose_token_secret(&self) -> Result<Box<ekmat_kv::AuthState>, Status> {
        let enable = AuthRequest::Enable {
            token_secret: fresh_secret()?,
        };
        self.write_internal(Command::Auth(enable))
            .await
            .map_err(|e| call_error(&e))?;
        match self.read(Query::Auth, true).await {
            Ok(Answer::Auth(auth)) if !auth.token_secret().is_empty() => Ok(auth),
            Ok(_) => Err(unexpected_answer()),
            Err(e) => Err(call_error(&e)),
        }
    }

    /// A hash at the configured cost that no password matches (made once).
    fn unmatchable_hash(&self) -> String {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let cost = self.inner.bcrypt_cost;
        HASH.get_or_init(|| {
            let mut random = [0u8; 32];
            let _ = getrandom::getrandom(&mut random);
            bcrypt::hash(random, cost).unwrap_or_default()
        })
        .clone()
    }

    /// bcrypt `password` at the configured cost, off the async threads. Only an
    /// administrator's request gets this far, so no one else can make a member hash.
    async fn hash_password<T>(
        &self,
        request: &Request<T>,
        password: String,
    ) -> Result<String, Status> {
        self.check_admin(request).await?;
        let cost = self.inner.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))
    }

    /// A new user's stored password: none for `no_password`, a hash a 3.5 client made,
    /// or the password hashed here.
    async fn new_password<T>(
        &self,
        request: &Request<T>,
        password: &str,
        hashed: &str,
        no_password: bool,
    ) -> Result<Option<String>, Status> {
        if no_password {
            return Ok(None);
        }
        if !hashed.is_empty() {
            return Ok(Some(hashed.to_owned()));
        }
        self.hash_password(request, password.to_owned())
            .await
            .map(Some)
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for Services {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Reply<pb::AuthEnableResponse>, Status> {
        let enable = AuthRequest::Enable {
            token_secret: fresh_secret()?,
        };
        let header = self.auth_change(&request, enable).await?;
        Ok(Reply::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Reply<pb::AuthDisableResponse>, Status> {
        let header = self.auth_change(&request, AuthRequest::Disable).await?;
        Ok(Reply::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Reply<pb::AuthStatusResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = self.auth_write(AuthRequest::Status, caller).await?;
        Ok(Reply::new(pb::AuthStatusResponse {
            header: Some(self.header(r.header.revision)),
            enabled: r.enabled,
            auth_revision: r.auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Reply<pb::AuthenticateResponse>, Status> {
        let pb::AuthenticateRequest { name, password } = request.into_inner();
        // After a read barrier, as etcd does: a user just added through any member, or
        // a password just changed, counts.
        let answer = self
            .read(Query::Auth, true)
            .await
            .map_err(|e| call_error(&e))?;
        let Answer::Auth(auth) = answer else {
            return Err(unexpected_answer());
        };
        if !auth.enabled() {
            return Err(refused(KvError::AuthNotEnabled));
        }
        // An unknown user (or one without a password) costs a hash check too, so the
        // time an answer takes does not tell which users exist.
        let (hash, generation) = match auth.credentials(&name) {
            Some((Some(hash), generation)) => (hash.to_owned(), Some(generation)),
            _ => (self.unmatchable_hash(), None),
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let Some(generation) = generation.filter(|_| matches) else {
            return Err(refused(KvError::AuthFailed));
        };
        let auth = if auth.token_secret().is_empty() {
            self.choose_token_secret().await?
        } else {
            auth
        };
        let expires = now_secs().saturating_add(self.inner.auth_token_ttl);
        Ok(Reply::new(pb::AuthenticateResponse {
            header: Some(self.header(self.revision())),
            token: token::mint(&auth, &name, generation, expires),
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Reply<pb::AuthUserAddResponse>, Status> {
        let r = request.get_ref();
        if r.name.is_empty() {
            return Err(refused(KvError::UserEmpty));
        }
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = self
            .new_password(&request, &r.password, &r.hashed_password, no_password)
            .await?;
        let add = AuthRequest::UserAdd {
            name: r.name.clone(),
            password_hash,
        };
        let header = self.auth_change(&request, add).await?;
        Ok(Reply::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Reply<pb::AuthUserGetResponse>, Status> {
        let caller = self.caller(&request).await?;
        let get = AuthRequest::UserGet {
            name: request.into_inner().name,
        };
        let r = self.auth_write(get, caller).await?;
        Ok(Reply::new(pb::AuthUserGetResponse {
            header: Some(self.header(r.header.revision)),
            roles: r.names,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Reply<pb::AuthUserListResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = self.auth_write(AuthRequest::UserList, caller).await?;
        Ok(Reply::new(pb::AuthUserListResponse {
            header: Some(self.header(r.header.revision)),
            users: r.names,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Reply<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .auth_change(&request, AuthRequest::UserDelete { name })
            .await?;
        Ok(Reply::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Reply<pb::AuthUserChangePasswordResponse>, Status> {
        let r = request.get_ref();
        let password_hash = self
            .new_password(&request, &r.password, &r.hashed_password, false)
            .await?
            .unwrap_or_default();
        let change = AuthRequest::UserChangePassword {
            name: r.name.clone(),
            password_hash,
        };
        let header = self.auth_change(&request, change).await?;
        Ok(Reply::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Reply<pb::AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref();
        let grant = AuthRequest::UserGrantRole {
            user: r.user.clone(),
            role: r.role.clone(),
        };
        let header = self.auth_change(&request, grant).await?;
        Ok(Reply::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Reply<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref();
        let revoke = AuthRequest::UserRevokeRole {
            user: r.name.clone(),
            role: r.role.clone(),
        };
        let header = self.auth_change(&request, revoke).await?;
        Ok(Reply::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Reply<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self
            .auth_change(&request, AuthRequest::RoleAdd { name })
            .await?;
        Ok(Reply::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Reply<pb::AuthRoleGetResponse>, Status> {
        let caller = self.caller(&request).await?;
        let get = AuthRequest::RoleGet {
            name: request.into_inner().role,
        };
        let r = self.auth_write(get, caller).await?;
        Ok(Reply::new(pb::AuthRoleGetResponse {
            header: Some(self.header(r.header.revision)),
            perm: r
                .permissions
                .into_iter()
                .map(convert::permission_out)
                .collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Reply<pb::AuthRoleListResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = self.auth_write(AuthRequest::RoleList, caller).await?;
        Ok(Reply::new(pb::AuthRoleListResponse {
            header: Some(self.header(r.header.revision)),
            roles: r.names,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Reply<pb::AuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        let header = self
            .auth_change(&request, AuthRequest::RoleDelete { name })
            .await?;
        Ok(Reply::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Reply<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref();
        let permission =
            convert::permission_in(r.perm.clone().unwrap_or_default()).map_err(|kind| {
                Status::invalid_argument(format!("etcdserver: invalid permission type {kind}"))
            })?;
        let grant = AuthRequest::RoleGrantPermission {
            role: r.name.clone(),
            permission,
        };
        let header = self.auth_change(&request, grant).await?;
        Ok(Reply::new(pb::AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Reply<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref();
        let revoke = AuthRequest::RoleRevokePermission {
            role: r.role.clone(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        };
        let header = self.auth_change(&request, revoke).await?;
        Ok(Reply::new(pb::AuthRoleRevokePermissionResponse { header }))
    }
}
