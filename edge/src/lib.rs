//! The edge cache's HTTP caching rules (RFC 9111, RFC 9110's conditional and range requests,
//! RFC 5861's stale extensions), as pure functions of headers and times.
//!
//! Owns: reading the response headers that decide caching ([`cache_control`], [`freshness`],
//! [`vary`], [`tags`]), the age and freshness of a stored response at a given time
//! ([`freshness::Lifetime`]), the answer a request gets from a stored object ([`conditional`]: 304
//! or the body; [`range`]: 206, 416 or the whole body), the node's in-memory object store under a
//! byte budget with purges by URL, prefix and tag ([`store`]), and the limits of all of these
//! ([`limits`]). May not touch: sockets, files, the wall clock (every function is given `now`),
//! Raft or the state store. The server crate's edge listener does the I/O: it asks these rules,
//! fetches the origin, and applies the purges that Raft and the regions' feed replicate.
//!
//! Policy, where the RFCs leave a choice (docs/data-types/edge-cache.md):
//! - a shared cache: `private` responses and responses setting cookies are never stored;
//! - request `Cache-Control` is ignored (as nginx and Varnish do by default), so a client cannot
//!   make every request reach the origin;
//! - a response is stored only with explicit freshness (`s-maxage`, `max-age`, `Expires`), a
//!   heuristic one (a tenth of its `Last-Modified` age, capped), `no-cache` (stored, revalidated on
//!   every use), or as a negative answer (404, 410) for a configured time;
//! - `must-revalidate` and `proxy-revalidate` forbid serving it stale; `s-maxage` does too
//!   unless the response also allows `stale-while-revalidate` or `stale-if-error` explicitly.

pub mod cache_control;
pub mod conditional;
pub mod freshness;
pub mod limits;
pub mod range;
pub mod store;
pub mod tags;
pub mod vary;

/// What the unit tests of every module share.
#[cfg(test)]
pub(crate) mod test_support {
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A header map from `(name, value)` pairs, in order (a name given twice makes two lines).
    pub(crate) fn headers<V: AsRef<str>>(pairs: &[(&str, V)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a test header name"),
                HeaderValue::from_str(value.as_ref()).expect("a test header value"),
            );
        }
        map
    }
}
