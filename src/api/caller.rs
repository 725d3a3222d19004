//! Who is asking: what the token check learned about a request, read by the
//! handlers that limit their answers to a tenant's devices.
//!
//! The token check (when tokens are configured) puts a [`Caller`] into the
//! request's extensions for every request it lets through. Without tokens
//! there is no caller, and every answer covers every device, as before
//! tokens existed.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The holder of a token that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, as logs and metrics show it (never the token).
    pub name: Arc<str>,
    /// The tenant whose devices alone this caller may see; `None`: all.
    pub tenant: Option<Arc<str>>,
}

/// Which devices a request may see: an extractor for the handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every device (no tokens configured, or a token without a
    /// tenant); `Some(t)`: only the devices of tenant `t`.
    pub tenant: Option<Arc<str>>,
}

impl Scope {
    /// Whether a device of `tenant` (`None`: a device without one) is
    /// visible to this request.
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        match &self.tenant {
            None => true,
            Some(mine) => tenant == Some(&**mine),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Scope {
            tenant: parts
                .extensions
                .get::<Caller>()
                .and_then(|c| c.tenant.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_scope_sees_only_its_own_devices() {
        let all = Scope::default();
        assert!(all.sees(None) && all.sees(Some("acme")));
        let acme = Scope {
            tenant: Some("acme".into()),
        };
        assert!(acme.sees(Some("acme")));
        assert!(!acme.sees(Some("globex")));
        assert!(!acme.sees(None), "a tenant does not see untenanted devices");
    }
}
