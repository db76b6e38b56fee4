//! Who may profile: closed until an authorizer is configured.

use std::fmt;
use std::marker::PhantomData;

use http::header::HeaderName;
use http::request::Parts;
use subtle::ConstantTimeEq;

/// Decides whether a request that carries the profiling trigger may be profiled.
///
/// Implemented for every `Fn(&http::request::Parts) -> bool`, and by [`DenyAll`] (the
/// default), [`SharedSecret`] and [`RequireExtension`]. A request that is not authorized is
/// passed to the application untouched, as if the profiler were not there.
pub trait Authorize: Send + Sync + 'static {
    /// True if this request may be profiled.
    fn authorize(&self, parts: &Parts) -> bool;
}

impl<F> Authorize for F
where
    F: Fn(&Parts) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, parts: &Parts) -> bool {
        self(parts)
    }
}

/// The default authorizer: nobody may profile.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl Authorize for DenyAll {
    fn authorize(&self, _parts: &Parts) -> bool {
        false
    }
}

/// Authorizes requests whose header (by default `x-vigil-secret`) carries a
/// shared secret, compared in constant time.
///
/// The comparison takes the same time for every value of the same length as the secret; a
/// value of another length is rejected at once, so the secret's length is not hidden. Use a
/// long random secret.
#[derive(Clone)]
pub struct SharedSecret {
    header: HeaderName,
    secret: Box<[u8]>,
}

impl SharedSecret {
    /// Default header that carries the secret: `x-vigil-secret`.
    pub(crate) const DEFAULT_HEADER: &'static str = "x-vigil-secret";

    /// Accepts requests whose secret header equals `secret`.
    ///
    /// # Panics
    ///
    /// If `secret` is empty.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        assert!(
            !secret.is_empty(),
            "SharedSecret: the secret must not be empty"
        );
        Self {
            header: HeaderName::from_static(Self::DEFAULT_HEADER),
            secret: secret.into(),
        }
    }

    /// The header that carries the secret. Default: `x-vigil-secret`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSecret")
            .field("header", &self.header)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl Authorize for SharedSecret {
    fn authorize(&self, parts: &Parts) -> bool {
        let mut values = parts.headers.get_all(&self.header).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => constant_time_eq(value.as_bytes(), &self.secret),
            // Absent, or repeated: a repeated secret header is ambiguous, refuse it.
            _ => false,
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    // `subtle` answers false at once for different lengths, and compares equal lengths
    // without branching on the bytes.
    bool::from(given.ct_eq(expected))
}

/// Authorizes requests that carry an extension of type `T`, which the application's own
/// authentication middleware inserts for administrators. That middleware must run before the
/// profiler (be layered outside it).
pub struct RequireExtension<T> {
    _marker: PhantomData<fn() -> T>,
}

impl<T> RequireExtension<T> {
    /// Accepts requests whose extensions contain a `T`.
    pub fn new() -> Self {
        Self {
            _marker: PhantomData,
        }
    }
}

impl<T> Default for RequireExtension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for RequireExtension<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for RequireExtension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireExtension")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: Send + Sync + 'static> Authorize for RequireExtension<T> {
    fn authorize(&self, parts: &Parts) -> bool {
        parts.extensions.get::<T>().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::get("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn shared_secret_needs_exactly_the_secret_once() {
        let auth = SharedSecret::new("s3cret-token");
        assert!(auth.authorize(&parts(&[("x-vigil-secret", "s3cret-token")])));
        assert!(!auth.authorize(&parts(&[("x-vigil-secret", "s3cret-tokeN")])));
        assert!(!auth.authorize(&parts(&[("x-vigil-secret", "s3cret")])));
        assert!(!auth.authorize(&parts(&[])));
        assert!(!auth.authorize(&parts(&[
            ("x-vigil-secret", "s3cret-token"),
            ("x-vigil-secret", "s3cret-token")
        ])));
        let custom = SharedSecret::new("abc").header(HeaderName::from_static("x-admin"));
        assert!(custom.authorize(&parts(&[("x-admin", "abc")])));
        assert!(!custom.authorize(&parts(&[("x-vigil-secret", "abc")])));
        assert!(!format!("{custom:?}").contains("abc"));
    }

    #[test]
    fn extension_and_closures_and_the_default() {
        #[derive(Clone)]
        struct Admin;
        let mut with = parts(&[]);
        with.extensions.insert(Admin);
        assert!(RequireExtension::<Admin>::new().authorize(&with));
        assert!(!RequireExtension::<Admin>::new().authorize(&parts(&[])));
        assert!(!DenyAll.authorize(&with));
        let closure = |p: &Parts| p.headers.contains_key("x-ok");
        assert!(closure.authorize(&parts(&[("x-ok", "1")])));
    }
}
