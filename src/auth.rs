//! Tokens signed by the video-call platform. Join tokens admit a participant to one call;
//! the algorithm is pinned by configuration and `exp` is required, so an unsigned, re-signed or
//! expired token is refused before any WebSocket upgrade.

use crate::config::AuthConfig;
use callpay_protocol::{Participant, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused. Deliberately coarse toward clients: the reason is logged, not sent.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("no token")]
    Missing,
    /// Bad signature, wrong algorithm, expired, malformed, or claims missing.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token for a different call.
    #[error("token is for another call")]
    WrongCall,
    /// The auth settings themselves are unusable.
    #[error("auth configuration: {0}")]
    Config(String),
}

/// The `typ` claim of a join token. Join and admin tokens are signed with the same platform
/// key, so each carries its kind and each verifier refuses the other kind.
pub const JOIN_TYP: &str = "callpay-join";
/// The `typ` claim of an admin token.
pub const ADMIN_TYP: &str = "callpay-admin";

/// Claims of a join token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinClaims {
    /// Always [`JOIN_TYP`].
    pub typ: String,
    /// Participant id.
    pub sub: String,
    /// The call it admits to.
    pub call_id: String,
    /// The clinic running the call.
    pub clinic_id: String,
    /// Clinician or patient.
    pub role: Role,
    /// Display name.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl JoinClaims {
    /// The participant these claims describe.
    pub fn participant(&self) -> Participant {
        Participant { id: self.sub.clone(), name: self.name.clone(), role: self.role }
    }
}

/// Platform roles, from the admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    /// Organisation admin: scoped by `org_id`.
    OrgAdmin,
    /// Clinic (team) admin: scoped by `clinic_ids`.
    TeamAdmin,
    /// Clinician: scoped by `clinic_ids`.
    TeamMember,
    /// The platform's service desk.
    PlatformOperator,
}

impl AdminRole {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrgAdmin => "org_admin",
            Self::TeamAdmin => "team_admin",
            Self::TeamMember => "team_member",
            Self::PlatformOperator => "platform_operator",
        }
    }
}

/// Claims of a platform admin token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminClaims {
    /// Always [`ADMIN_TYP`].
    pub typ: String,
    /// Admin's user id.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: AdminRole,
    /// The organisation (org admins).
    #[serde(default)]
    pub org_id: Option<String>,
    /// The clinics (team admins and members).
    #[serde(default)]
    pub clinic_ids: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Verifies platform tokens with the configured key and algorithm.
pub struct Verifier {
    /// The current key first, then the one being retired (during a rotation).
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// Builds a verifier from settings.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let config = |e: jsonwebtoken::errors::Error| AuthError::Config(e.to_string());
        let (alg, keys) = match cfg.algorithm.as_str() {
            "HS256" => {
                let secrets = std::iter::once(&cfg.secret).chain(cfg.previous_secret.as_ref());
                (Algorithm::HS256, secrets.map(|s| DecodingKey::from_secret(s.expose().as_bytes())).collect())
            }
            "EdDSA" | "RS256" => {
                let pems = std::iter::once(pem(cfg)?).chain(cfg.previous_public_key_pem.as_deref());
                let (alg, parse): (_, fn(&[u8]) -> _) = if cfg.algorithm == "EdDSA" {
                    (Algorithm::EdDSA, DecodingKey::from_ed_pem)
                } else {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem)
                };
                (alg, pems.map(|p| parse(p.as_bytes()).map_err(config)).collect::<Result<Vec<_>, _>>()?)
            }
            other => return Err(AuthError::Config(format!("unsupported algorithm {other}"))),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        // A token is not valid before its `nbf`; `iat` in the future is checked in `verify`.
        validation.validate_nbf = true;
        validation.validate_aud = cfg.audience.is_some();
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { keys, validation })
    }

    /// Verifies a token and decodes its claims: signature, algorithm, `exp`, `nbf`, an `iat`
    /// that is not in the future (each with [`LEEWAY_SECS`]), and no empty string claim (an
    /// empty scope must never be read as "any").
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        // The current key, then (during a rotation) the retiring one. Only a signature that
        // does not match moves on to the next key; an expired or malformed token is refused as
        // it is.
        let mut decoded = None;
        for key in &self.keys {
            let attempt = jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation);
            let try_next = matches!(&attempt, Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature);
            decoded = Some(attempt);
            if !try_next {
                break;
            }
        }
        let claims = decoded
            .expect("a verifier has at least one key")
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if claims.get("iat").and_then(serde_json::Value::as_u64).is_some_and(|iat| iat > now_secs() + LEEWAY_SECS) {
            return Err(AuthError::Invalid("issued in the future".into()));
        }
        if let Some(empty) = empty_claim(&claims) {
            return Err(AuthError::Invalid(format!("claim {empty} is empty")));
        }
        serde_json::from_value(claims).map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies a join token for `call_id`.
    pub fn join(&self, token: &str, call_id: &str) -> Result<JoinClaims, AuthError> {
        let claims: JoinClaims = self.verify(token)?;
        if claims.typ != JOIN_TYP {
            return Err(AuthError::Invalid(format!("typ {:?} is not a join token", claims.typ)));
        }
        if claims.call_id != call_id {
            return Err(AuthError::WrongCall);
        }
        Ok(claims)
    }
}

impl Verifier {
    /// Verifies an admin token.
    pub fn admin(&self, token: &str) -> Result<AdminClaims, AuthError> {
        let claims: AdminClaims = self.verify(token)?;
        if claims.typ != ADMIN_TYP {
            return Err(AuthError::Invalid(format!("typ {:?} is not an admin token", claims.typ)));
        }
        Ok(claims)
    }
}

/// The name of a claim that is an empty string (or a list holding one), if any.
fn empty_claim(claims: &serde_json::Value) -> Option<String> {
    let obj = claims.as_object()?;
    obj.iter().find_map(|(k, v)| {
        let empty = match v {
            serde_json::Value::String(s) => s.trim().is_empty(),
            serde_json::Value::Array(items) => items.iter().any(|i| i.as_str().is_some_and(|s| s.trim().is_empty())),
            _ => false,
        };
        empty.then(|| k.clone())
    })
}

fn pem(cfg: &AuthConfig) -> Result<&str, AuthError> {
    cfg.public_key_pem.as_deref().ok_or_else(|| AuthError::Config("public_key_pem is required".into()))
}

/// Signs HS256 tokens: what the platform does; used by the demo and tests.
pub fn sign_hs256<T: Serialize>(secret: &str, claims: &T) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("HS256 signing cannot fail")
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(&AuthConfig { secret: Secret::new(SECRET), ..AuthConfig::default() }).unwrap()
    }

    fn claims(exp: u64) -> JoinClaims {
        JoinClaims {
            typ: JOIN_TYP.into(),
            sub: "u1".into(),
            call_id: "call_1".into(),
            clinic_id: "c1".into(),
            role: Role::Patient,
            name: "Sam".into(),
            exp,
        }
    }

    #[test]
    fn accepts_valid_and_rejects_forged_expired_wrong_call_and_none_alg() {
        let v = verifier();
        let good = sign_hs256(SECRET, &claims(now_secs() + 600));
        assert_eq!(v.join(&good, "call_1").unwrap().sub, "u1");
        assert!(matches!(v.join(&good, "call_2"), Err(AuthError::WrongCall)));
        let forged = sign_hs256("another-secret-another-secret-xx", &claims(now_secs() + 600));
        assert!(matches!(v.join(&forged, "call_1"), Err(AuthError::Invalid(_))));
        let expired = sign_hs256(SECRET, &claims(now_secs() - 3600));
        assert!(matches!(v.join(&expired, "call_1"), Err(AuthError::Invalid(_))));
        // alg=none with the same claims: header {"alg":"none"}.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", good.split('.').nth(1).unwrap());
        assert!(v.join(&none, "call_1").is_err());
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
            call_id: &'a str,
        }
        let no_exp = sign_hs256(SECRET, &NoExp { sub: "u1", call_id: "call_1" });
        assert!(v.join(&no_exp, "call_1").is_err());
        assert!(v.join("not-a-jwt", "call_1").is_err());
    }

    // A throwaway Ed25519 key pair made for this test with `openssl genpkey -algorithm ed25519`.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIM7YlpeWst6o75bbGrUk0qfKzrrzfGV1Ep8hwjyb2cN6\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAXT1iYZ3ZmjMSvLFjMpWdWCBLKUikbxSRoIxckOHM25A=\n-----END PUBLIC KEY-----\n";

    /// A second Ed25519 pair (generated with `openssl genpkey -algorithm ed25519`), for rotation.
    const ED2_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIIOKYIyh9mZ8XLDIoDh+ZQFmC0orta1zx04WYiA8X2Hm\n-----END PRIVATE KEY-----\n";
    const ED2_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAbTnu/MbOmTFqc+/oOHVcqVY/KIRgWtGQDNfTRMXLFLg=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn during_a_rotation_tokens_signed_with_the_retiring_key_still_verify() {
        const OLD: &str = "old-platform-secret-0123456789abcdef";
        const OTHER: &str = "some-other-secret-0123456789abcdefg";
        let fresh = || claims(now_secs() + 600);
        let only_new = verifier();
        assert!(only_new.join(&sign_hs256(OLD, &fresh()), "call_1").is_err(), "without the previous key, refused");
        let rotating = Verifier::new(&AuthConfig {
            secret: Secret::new(SECRET),
            previous_secret: Some(Secret::new(OLD)),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(rotating.join(&sign_hs256(SECRET, &fresh()), "call_1").unwrap().sub, "u1");
        assert_eq!(rotating.join(&sign_hs256(OLD, &fresh()), "call_1").unwrap().sub, "u1");
        assert!(rotating.join(&sign_hs256(OTHER, &fresh()), "call_1").is_err(), "a third key is still forged");
        let expired_old = sign_hs256(OLD, &claims(now_secs() - 3600));
        assert!(rotating.join(&expired_old, "call_1").is_err(), "the old key does not revive expired tokens");

        let ed = |private: &str| {
            let key = EncodingKey::from_ed_pem(private.as_bytes()).unwrap();
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &fresh(), &key).unwrap()
        };
        let rotating_ed = Verifier::new(&AuthConfig {
            algorithm: "EdDSA".into(),
            public_key_pem: Some(ED2_PUBLIC.into()),
            previous_public_key_pem: Some(ED_PUBLIC.into()),
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(rotating_ed.join(&ed(ED2_PRIVATE), "call_1").is_ok());
        assert!(rotating_ed.join(&ed(ED_PRIVATE), "call_1").is_ok(), "the retiring key still verifies");
        let new_only =
            AuthConfig { algorithm: "EdDSA".into(), public_key_pem: Some(ED2_PUBLIC.into()), ..AuthConfig::default() };
        assert!(Verifier::new(&new_only).unwrap().join(&ed(ED_PRIVATE), "call_1").is_err());
    }

    #[test]
    fn eddsa_is_pinned_when_configured() {
        let cfg =
            AuthConfig { algorithm: "EdDSA".into(), public_key_pem: Some(ED_PUBLIC.into()), ..AuthConfig::default() };
        let v = Verifier::new(&cfg).unwrap();
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims(now_secs() + 600), &key).unwrap();
        assert_eq!(v.join(&token, "call_1").unwrap().role, Role::Patient);
        // An HS256 token, even one signed with the public key's bytes as the secret, is refused.
        let confused = sign_hs256(ED_PUBLIC, &claims(now_secs() + 600));
        assert!(v.join(&confused, "call_1").is_err());
        assert!(Verifier::new(&AuthConfig { algorithm: "EdDSA".into(), ..AuthConfig::default() }).is_err());
    }
}
