//! Whether a response may be stored, for how long it is fresh, and what may be done with it once
//! stale (RFC 9111 §3, §4.2; RFC 5861).
//!
//! [`decide`] reads an origin's response once, when it arrives; the [`Lifetime`] it returns is
//! kept with the object, and [`Lifetime::state`] answers at any later time whether the object is
//! fresh, and if stale whether it may still be served while it is revalidated or while the origin
//! fails. Nothing here reads the clock: the request and response times and `now` are given.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{header, HeaderMap, Method, StatusCode};

use crate::cache_control::{self, delta_seconds, ResponseCacheControl};
use crate::limits::HEURISTIC_FRESHNESS_SECS_MAX;
use crate::tags::{self, TagError};
use crate::vary::{self, Vary};

/// The cache's own settings that decide storing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePolicy {
    /// How long a 404 or 410 without explicit freshness is kept (zero: not stored).
    pub negative_ttl: Duration,
}

impl Default for StorePolicy {
    fn default() -> Self {
        Self {
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// Why a response is passed through without being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    #[error("only answers to GET are stored")]
    Method,
    #[error("the request carries Authorization and the answer is not public, s-maxage or must-revalidate")]
    Authorization,
    #[error("the request says Cache-Control: no-store")]
    RequestNoStore,
    #[error("its tags cannot be kept: {0}")]
    Tags(#[from] TagError),
    #[error("Cache-Control: no-store")]
    NoStore,
    #[error("Cache-Control: private (a shared cache stores none of it)")]
    Private,
    #[error("it sets a cookie")]
    SetsCookie,
    #[error("Vary: * (no request can be matched to it)")]
    VaryAny,
    #[error("it varies on more request headers than the cache keys on")]
    VaryTooWide,
    #[error("status {0} is not stored")]
    Status(u16),
    #[error("no freshness: no max-age, s-maxage, Expires or Last-Modified")]
    NoFreshness,
    #[error("Cache-Control: no-cache with no validator (ETag or Last-Modified) to revalidate by")]
    NoValidator,
}

/// How long a stored response stays fresh and what is allowed once it is stale. Computed once,
/// when the response arrives; kept with the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The freshness lifetime (RFC 9111 §4.2.1).
    pub fresh_for: Duration,
    /// The response's age when it arrived (corrected initial age, RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// How long past freshness it may be served while a revalidation runs (RFC 5861 §3).
    pub stale_while_revalidate: Duration,
    /// How long past freshness it may be served when the origin fails (RFC 5861 §4).
    pub stale_if_error: Duration,
}

/// What a stored object may be used for at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Served as is.
    Fresh,
    /// Must be revalidated (or fetched again) before use; `while_revalidating`: it may be served
    /// now while a revalidation runs in the background; `on_error`: it may be served if the
    /// origin fails or times out.
    Stale { while_revalidating: bool, on_error: bool },
}

impl Lifetime {
    /// The object's age at `now` (RFC 9111 §4.2.3: initial age plus the time resident here), for
    /// the `Age` header and for freshness. A clock that went back counts no resident time.
    pub fn age(&self, response_time: SystemTime, now: SystemTime) -> Duration {
        let resident = now.duration_since(response_time).unwrap_or(Duration::ZERO);
        self.initial_age.saturating_add(resident)
    }

    /// Fresh or stale at `now`, and if stale what is allowed.
    pub fn state(&self, response_time: SystemTime, now: SystemTime) -> State {
        let age = self.age(response_time, now);
        if age < self.fresh_for {
            return State::Fresh;
        }
        let stale_by = age - self.fresh_for;
        State::Stale {
            while_revalidating: stale_by < self.stale_while_revalidate,
            on_error: stale_by < self.stale_if_error,
        }
    }
}

/// What [`decide`] keeps of a response it stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    pub lifetime: Lifetime,
    /// Its purge tags ([`tags::parse`]).
    pub tags: Vec<Vec<u8>>,
    /// The request headers it varies on ([`vary::parse`]).
    pub vary: Vec<HeaderName>,
}

/// Decides whether the origin's response to a request may be stored, and for how long. The
/// request is the one sent to the origin (method and headers); `request_time` is when it was
/// sent, `response_time` when the response head arrived. Every rule that refuses storing is here,
/// tags included, so a caller cannot store what a purge by tag could miss.
///
/// After a 304 from the origin ([`crate::conditional::merge_not_modified`]), call this again on
/// the merged headers: the 304 may have changed freshness, `Vary`, tags, or forbidden storing.
pub fn decide(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    policy: &StorePolicy,
) -> Result<Storable, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    let request_no_store = request
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|line| cache_control::parse_response([line.as_bytes()]).no_store);
    if request_no_store {
        return Err(NotStored::RequestNoStore);
    }
    let cc = cache_control::parse_response(headers.get_all(header::CACHE_CONTROL).iter().map(|v| v.as_bytes()));
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    // RFC 9111 §3.5: an answer to an authenticated request is shared only when it says so.
    if request.contains_key(header::AUTHORIZATION) && !(cc.public || cc.s_maxage_secs.is_some() || cc.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetsCookie);
    }
    let vary = match vary::parse(headers) {
        Vary::Any => return Err(NotStored::VaryAny),
        Vary::TooWide => return Err(NotStored::VaryTooWide),
        Vary::Headers(names) => names,
    };
    let tags = tags::parse(headers)?;
    let code = status.as_u16();
    let heuristic_ok = matches!(code, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501);
    if !heuristic_ok && !matches!(code, 302 | 307) {
        return Err(NotStored::Status(code));
    }

    let date = http_date(headers, header::DATE).and_then(Result::ok);
    // RFC 9111 §4.2.3: without a Date, the response time stands in for it.
    let date = date.unwrap_or(response_time);
    // RFC 9111 §5.1: the first member of a list counts; an unreadable one is ignored.
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .next()
                .map(|first| first.trim_ascii().to_vec())
        })
        .and_then(delta_seconds)
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = response_time.duration_since(date).unwrap_or(Duration::ZERO);
    let response_delay = response_time.duration_since(request_time).unwrap_or(Duration::ZERO);
    let initial_age = apparent_age.max(age_value.saturating_add(response_delay));

    let explicit = explicit_freshness(&cc, headers, date);
    let fresh_for = if cc.no_cache {
        if !headers.contains_key(header::ETAG) && !headers.contains_key(header::LAST_MODIFIED) {
            return Err(NotStored::NoValidator);
        }
        Duration::ZERO
    } else if let Some(explicit) = explicit {
        explicit
    } else if matches!(code, 404 | 410) && !policy.negative_ttl.is_zero() {
        // Negative caching: counted from arrival, whatever age the answer came with.
        policy.negative_ttl.saturating_add(initial_age)
    } else if let (true, Some(Ok(last_modified))) = (heuristic_ok, http_date(headers, header::LAST_MODIFIED)) {
        let since = date.duration_since(last_modified).unwrap_or(Duration::ZERO);
        (since / 10).min(Duration::from_secs(HEURISTIC_FRESHNESS_SECS_MAX))
    } else {
        return Err(NotStored::NoFreshness);
    };

    let (stale_while_revalidate, stale_if_error) = stale_allowances(&cc);
    Ok(Storable {
        lifetime: Lifetime {
            fresh_for,
            initial_age,
            stale_while_revalidate,
            stale_if_error,
        },
        tags,
        vary,
    })
}

/// `s-maxage`, then `max-age`, then `Expires` − `Date` (RFC 9111 §4.2.1). Invalid freshness
/// information, and an invalid `Expires` (such as `0`), mean already expired.
fn explicit_freshness(cc: &ResponseCacheControl, headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    if cc.invalid_freshness {
        return Some(Duration::ZERO);
    }
    if let Some(secs) = cc.s_maxage_secs.or(cc.max_age_secs) {
        return Some(Duration::from_secs(secs));
    }
    match http_date(headers, header::EXPIRES)? {
        Ok(expires) => Some(expires.duration_since(date).unwrap_or(Duration::ZERO)),
        Err(()) => Some(Duration::ZERO),
    }
}

/// What may be served stale: nothing under `must-revalidate` or `proxy-revalidate` (or
/// `no-cache`), and nothing the response does not grant by a stale extension. A deliberate
/// deviation: RFC 9111 §5.2.2.10 says `s-maxage` implies `proxy-revalidate`, which would make
/// the common `s-maxage=60, stale-while-revalidate=30` mean no stale serving at all; like the
/// CDNs that honour it, we take the explicit extension as the more specific permission. Without
/// an extension nothing is served stale, so `s-maxage` alone behaves as the RFC says.
fn stale_allowances(cc: &ResponseCacheControl) -> (Duration, Duration) {
    if cc.must_revalidate || cc.proxy_revalidate || cc.no_cache {
        return (Duration::ZERO, Duration::ZERO);
    }
    let secs = |v: Option<u64>| Duration::from_secs(v.unwrap_or(0));
    (secs(cc.stale_while_revalidate_secs), secs(cc.stale_if_error_secs))
}

/// The header as an HTTP date: `None` when absent, `Err` when present but not a date (or given
/// twice).
pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<Result<SystemTime, ()>> {
    let mut values = headers.get_all(&name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(
        first
            .to_str()
            .map_err(drop)
            .and_then(|text| httpdate::parse_http_date(text.trim()).map_err(drop)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn decide_at(status: u16, pairs: &[(&str, &str)], sent: u64, arrived: u64) -> Result<Lifetime, NotStored> {
        decide(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::from_u16(status).expect("status"),
            &headers(pairs),
            at(sent),
            at(arrived),
            &StorePolicy::default(),
        )
        .map(|storable| storable.lifetime)
    }

    #[test]
    fn max_age_counts_from_the_age_the_response_arrived_with() {
        let life = decide_at(
            200,
            &[("cache-control", "max-age=60"), ("date", &date(100)), ("age", "10")],
            100,
            102,
        )
        .expect("stored");
        assert_eq!(life.fresh_for, Duration::from_secs(60));
        // Age 10 plus the 2 s the request took (the Date is no older than that).
        assert_eq!(life.initial_age, Duration::from_secs(12));
        assert_eq!(life.age(at(102), at(150)), Duration::from_secs(60));
        assert_eq!(life.state(at(102), at(149)), State::Fresh);
        assert_eq!(
            life.state(at(102), at(150)),
            State::Stale {
                while_revalidating: false,
                on_error: false
            }
        );
    }

    #[test]
    fn a_date_in_the_past_is_apparent_age() {
        let life = decide_at(200, &[("cache-control", "max-age=60"), ("date", &date(50))], 100, 100).expect("stored");
        assert_eq!(life.initial_age, Duration::from_secs(50));
        // A Date in the future (a fast origin clock) is no negative age.
        let life = decide_at(200, &[("cache-control", "max-age=60"), ("date", &date(500))], 100, 100).expect("stored");
        assert_eq!(life.initial_age, Duration::ZERO);
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let both = [
            ("cache-control", "max-age=10, s-maxage=100"),
            ("expires", &date(1000) as &str),
        ];
        assert_eq!(
            decide_at(200, &both, 0, 0).expect("stored").fresh_for,
            Duration::from_secs(100)
        );
        let max_age = [
            ("cache-control", "max-age=10"),
            ("date", &date(0) as &str),
            ("expires", &date(1000)),
        ];
        assert_eq!(
            decide_at(200, &max_age, 0, 0).expect("stored").fresh_for,
            Duration::from_secs(10)
        );
        let expires = [("date", &date(0) as &str), ("expires", &date(1000))];
        assert_eq!(
            decide_at(200, &expires, 0, 0).expect("stored").fresh_for,
            Duration::from_secs(1000)
        );
        // An invalid Expires, such as 0, is in the past.
        assert_eq!(
            decide_at(200, &[("expires", "0")], 0, 0).expect("stored").fresh_for,
            Duration::ZERO
        );
        // Invalid freshness information beats everything: stale on arrival.
        let invalid = [("cache-control", "max-age=ten"), ("expires", &date(1000) as &str)];
        assert_eq!(
            decide_at(200, &invalid, 0, 0).expect("stored").fresh_for,
            Duration::ZERO
        );
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        type Case<'a> = (u16, &'a [(&'a str, &'a str)], NotStored);
        let cases: [Case; 8] = [
            (200, &[("cache-control", "no-store, max-age=60")], NotStored::NoStore),
            (200, &[("cache-control", "private, max-age=60")], NotStored::Private),
            (
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                NotStored::SetsCookie,
            ),
            (
                200,
                &[("cache-control", "max-age=60"), ("vary", "*")],
                NotStored::VaryAny,
            ),
            (500, &[("cache-control", "max-age=60")], NotStored::Status(500)),
            (206, &[("cache-control", "max-age=60")], NotStored::Status(206)),
            (200, &[], NotStored::NoFreshness),
            (200, &[("cache-control", "no-cache")], NotStored::NoValidator),
        ];
        for (status, pairs, why) in cases {
            assert_eq!(decide_at(status, pairs, 0, 0), Err(why), "{status} {pairs:?}");
        }
        // A redirect that may be cached only with explicit freshness.
        assert_eq!(
            decide_at(302, &[("last-modified", &date(0))], 0, 0),
            Err(NotStored::NoFreshness)
        );
        assert!(decide_at(302, &[("cache-control", "max-age=5")], 0, 0).is_ok());
    }

    #[test]
    fn no_cache_is_stored_but_revalidated_on_every_use_and_never_served_stale() {
        let life = decide_at(
            200,
            &[("cache-control", "no-cache, stale-if-error=60"), ("etag", "\"v1\"")],
            0,
            0,
        )
        .expect("stored");
        assert_eq!(life.fresh_for, Duration::ZERO);
        assert_eq!(
            life.state(at(0), at(0)),
            State::Stale {
                while_revalidating: false,
                on_error: false
            }
        );
    }

    #[test]
    fn negative_answers_are_kept_for_the_configured_time_unless_they_say_otherwise() {
        let life = decide_at(404, &[], 0, 0).expect("stored");
        assert_eq!(life.fresh_for, StorePolicy::default().negative_ttl);
        assert_eq!(
            decide_at(410, &[("cache-control", "max-age=3")], 0, 0)
                .expect("stored")
                .fresh_for,
            Duration::from_secs(3)
        );
        let off = decide(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            at(0),
            at(0),
            &StorePolicy {
                negative_ttl: Duration::ZERO,
            },
        );
        assert_eq!(off, Err(NotStored::NoFreshness));
        // Negative answers still obey the origin, and their age counts from arrival.
        assert_eq!(
            decide_at(404, &[("cache-control", "no-store")], 0, 0),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            decide_at(404, &[("cache-control", "private")], 0, 0),
            Err(NotStored::Private)
        );
        let aged = decide_at(404, &[("age", "100")], 0, 0).expect("stored");
        assert_eq!(aged.state(at(0), at(9)), State::Fresh);
        assert_ne!(aged.state(at(0), at(10)), State::Fresh);
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_last_modified_age_capped() {
        let pairs = [("date", &date(1000) as &str), ("last-modified", &date(0))];
        assert_eq!(
            decide_at(200, &pairs, 1000, 1000).expect("stored").fresh_for,
            Duration::from_secs(100)
        );
        let old = [("date", &date(10_000_000) as &str), ("last-modified", &date(0))];
        assert_eq!(
            decide_at(200, &old, 10_000_000, 10_000_000).expect("stored").fresh_for,
            Duration::from_secs(HEURISTIC_FRESHNESS_SECS_MAX)
        );
    }

    #[test]
    fn stale_extensions_and_what_forbids_them() {
        let life = decide_at(
            200,
            &[(
                "cache-control",
                "max-age=10, stale-while-revalidate=20, stale-if-error=100",
            )],
            0,
            0,
        )
        .expect("stored");
        assert_eq!(life.state(at(0), at(9)), State::Fresh);
        assert_eq!(
            life.state(at(0), at(25)),
            State::Stale {
                while_revalidating: true,
                on_error: true
            }
        );
        assert_eq!(
            life.state(at(0), at(30)),
            State::Stale {
                while_revalidating: false,
                on_error: true
            }
        );
        assert_eq!(
            life.state(at(0), at(110)),
            State::Stale {
                while_revalidating: false,
                on_error: false
            }
        );
        for forbidding in ["must-revalidate", "proxy-revalidate"] {
            let cc = format!("max-age=10, stale-while-revalidate=20, stale-if-error=100, {forbidding}");
            let life = decide_at(200, &[("cache-control", &cc)], 0, 0).expect("stored");
            assert_eq!(
                (life.stale_while_revalidate, life.stale_if_error),
                (Duration::ZERO, Duration::ZERO)
            );
        }
        // s-maxage alone allows no stale serving; with an explicit extension it keeps it.
        let alone = decide_at(200, &[("cache-control", "s-maxage=60")], 0, 0).expect("stored");
        assert_eq!(
            (alone.stale_while_revalidate, alone.stale_if_error),
            (Duration::ZERO, Duration::ZERO)
        );
        let life = decide_at(
            200,
            &[("cache-control", "s-maxage=60, stale-while-revalidate=30")],
            0,
            0,
        )
        .expect("stored");
        assert_eq!(life.stale_while_revalidate, Duration::from_secs(30));
    }

    #[test]
    fn the_first_member_of_an_age_list_counts() {
        let life = decide_at(200, &[("cache-control", "max-age=60"), ("age", "10, 20")], 0, 0).expect("stored");
        assert_eq!(life.initial_age, Duration::from_secs(10));
        let junk = decide_at(200, &[("cache-control", "max-age=60"), ("age", "soon")], 0, 0).expect("stored");
        assert_eq!(junk.initial_age, Duration::ZERO);
    }

    #[test]
    fn the_request_can_forbid_storing() {
        let response = headers(&[("cache-control", "max-age=60")]);
        let ask = |method: Method, request: &[(&str, &str)], response: &HeaderMap| {
            decide(
                &method,
                &headers(request),
                StatusCode::OK,
                response,
                at(0),
                at(0),
                &StorePolicy::default(),
            )
            .map(|s| s.lifetime.fresh_for)
        };
        assert_eq!(ask(Method::HEAD, &[], &response), Err(NotStored::Method));
        assert_eq!(ask(Method::POST, &[], &response), Err(NotStored::Method));
        assert_eq!(
            ask(Method::GET, &[("cache-control", "no-store")], &response),
            Err(NotStored::RequestNoStore)
        );
        assert_eq!(
            ask(Method::GET, &[("authorization", "Bearer x")], &response),
            Err(NotStored::Authorization)
        );
        for sharing in ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"] {
            let shared = headers(&[("cache-control", sharing)]);
            assert!(
                ask(Method::GET, &[("authorization", "Bearer x")], &shared).is_ok(),
                "{sharing}"
            );
        }
        // Request max-age and no-cache are ignored (a client cannot force origin fetches).
        assert!(ask(Method::GET, &[("cache-control", "no-cache, max-age=0")], &response).is_ok());
    }

    #[test]
    fn tags_and_vary_are_kept_and_their_limits_refuse_storing() {
        let response = headers(&[
            ("cache-control", "max-age=60"),
            ("cache-tag", "A,b"),
            ("vary", "Accept-Encoding"),
        ]);
        let storable = decide(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &response,
            at(0),
            at(0),
            &StorePolicy::default(),
        )
        .expect("stored");
        assert_eq!(storable.tags, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(storable.vary, vec![header::ACCEPT_ENCODING]);
        let long = "t".repeat(crate::limits::TAG_BYTES_MAX + 1);
        assert!(matches!(
            decide_at(200, &[("cache-control", "max-age=60"), ("surrogate-key", &long)], 0, 0),
            Err(NotStored::Tags(TagError::TagTooLong { .. }))
        ));
        assert_eq!(
            decide_at(200, &[("cache-control", "max-age=60"), ("vary", "a b")], 0, 0),
            Err(NotStored::VaryTooWide)
        );
    }

    #[test]
    fn a_clock_that_goes_back_adds_no_age() {
        let life = decide_at(200, &[("cache-control", "max-age=10")], 100, 100).expect("stored");
        assert_eq!(life.age(at(100), at(50)), Duration::ZERO);
        assert_eq!(life.state(at(100), at(50)), State::Fresh);
    }

    #[test]
    fn a_doubled_or_unreadable_date_header_is_refused_as_a_date() {
        assert_eq!(
            http_date(&headers(&[("date", "yesterday")]), header::DATE),
            Some(Err(()))
        );
        let twice = headers(&[("date", &date(0)), ("date", &date(1))]);
        assert_eq!(http_date(&twice, header::DATE), Some(Err(())));
        assert_eq!(http_date(&HeaderMap::new(), header::DATE), None);
    }

    proptest! {
        /// Age never decreases as time passes, and a fresh object turns stale exactly once.
        #[test]
        fn age_grows_and_freshness_ends_once(max_age in 0u64..10_000, age in 0u64..10_000, delay in 0u64..100,
                                             t1 in 0u64..50_000, dt in 0u64..50_000) {
            let cc = format!("max-age={max_age}");
            let age_text = age.to_string();
            let life = decide_at(200, &[("cache-control", &cc), ("age", &age_text)], 0, delay).expect("stored");
            let arrived = at(delay);
            let (a1, a2) = (life.age(arrived, at(delay + t1)), life.age(arrived, at(delay + t1 + dt)));
            prop_assert!(a2 >= a1);
            if life.state(arrived, at(delay + t1)) != State::Fresh {
                prop_assert_ne!(life.state(arrived, at(delay + t1 + dt)), State::Fresh);
            }
            prop_assert_eq!(life.state(arrived, at(delay + t1)) == State::Fresh, age + delay + t1 < max_age);
        }
    }
}
