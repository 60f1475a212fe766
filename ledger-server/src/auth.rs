//! API keys and roles: keys are `lk_{id}_{secret}` with 32 random bytes from ring's
//! SystemRandom; only a SHA-256 of the secret is stored, compared in constant time. The
//! `Principal` extractor authenticates every `/v1` call and carries the key's scope.

use crate::app::AppState;
use crate::error::ApiError;
use crate::registry::{ApiKeyRecord, Role};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// Longest Authorization header value looked at.
const AUTHORIZATION_LEN_MAX: usize = 256;

/// A freshly made key: the text (shown once) and the record to store.
pub struct NewKey {
    pub text: String,
    pub record: ApiKeyRecord,
}

fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

pub fn new_key(
    name: String,
    role: Role,
    district: Option<String>,
    provider: Option<String>,
    created_at: String,
) -> Result<NewKey, ApiError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| ApiError::internal("system random failed"))?;
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        text: format!("lk_{id}_{secret}"),
        record: ApiKeyRecord {
            id,
            name,
            role,
            district,
            provider,
            secret_hash: hash_secret(&secret),
            created_at,
        },
    })
}

/// Who is calling, and within what scope.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
    pub district: Option<String>,
    pub provider: Option<String>,
}

impl Principal {
    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {:?} may not do this",
                self.role
            )))
        }
    }

    /// City staff and auditors see every district; district staff only their own.
    pub fn sees_district(&self, district: &str) -> bool {
        match self.role {
            Role::CityAdmin | Role::Auditor | Role::Hotline => true,
            Role::DistrictStaff => self.district.as_deref() == Some(district),
            Role::Provider => false,
        }
    }

    /// 403 unless the caller is city_admin or staff of `district`.
    pub fn require_district_staff(&self, district: &str) -> Result<(), ApiError> {
        match self.role {
            Role::CityAdmin => Ok(()),
            Role::DistrictStaff if self.district.as_deref() == Some(district) => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "only staff of district {district} or the city may do this"
            ))),
        }
    }
}

/// Checks a presented key against the registry.
pub fn authenticate(state: &AppState, presented: &str) -> Option<Principal> {
    let rest = presented.strip_prefix("lk_")?;
    let (id, secret) = rest.split_once('_')?;
    let data = state.registry.read();
    let record = data.keys.get(id)?;
    let presented_hash = hash_secret(secret);
    // Both are 64-character hex strings; compare without early exit.
    let equal = presented_hash.len() == record.secret_hash.len()
        && presented_hash
            .bytes()
            .zip(record.secret_hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    equal.then(|| Principal {
        key_id: record.id.clone(),
        role: record.role,
        district: record.district.clone(),
        provider: record.provider.clone(),
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Principal, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(ApiError::unauthorized)?;
        if header.len() > AUTHORIZATION_LEN_MAX {
            return Err(ApiError::unauthorized());
        }
        let text = header.to_str().map_err(|_| ApiError::unauthorized())?;
        let key = text
            .strip_prefix("Bearer ")
            .ok_or_else(ApiError::unauthorized)?;
        authenticate(state, key.trim()).ok_or_else(ApiError::unauthorized)
    }
}
