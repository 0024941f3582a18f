//! One request of the edge: found fresh → HIT; stale within `stale-while-revalidate` → STALE
//! and a background revalidation; otherwise revalidated or fetched (coalesced with concurrent
//! misses of the same object) → REVALIDATED or MISS, or STALE within `stale-if-error` when the
//! origin fails; not storable → BYPASS. Every answer carries `X-Cache` and, from a stored object,
//! `Age`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use basalt_edge::conditional::{self, Answer, Validators};
use basalt_edge::freshness::{self, Lifetime, State};
use basalt_edge::range::{self, RangeAnswer};
use basalt_edge::store::{Lookup, StoredObject};
use basalt_edge::vary;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::origin::{self, Fetched, OriginError};
use super::{Edge, EdgeStats};

/// What a flight brings back: an origin's answer as an object (stored or not), or why there is
/// none. Cheap to clone: every waiter of the flight gets one.
pub type Outcome = Result<Arc<Landed>, OriginError>;

/// An origin's answer, landed.
#[derive(Debug)]
pub struct Landed {
    pub object: Arc<StoredObject>,
    /// Whether the store kept it (a follower of a flight uses only a kept answer: one that may
    /// be shared).
    pub stored: bool,
    /// The origin answered 304 to a revalidation.
    pub revalidated: bool,
    /// The request headers it varies on, and the variant of the request that fetched it.
    pub vary: Vec<HeaderName>,
    pub variant: Option<Vec<u8>>,
}

/// The `X-Cache` value of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XCache {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl XCache {
    fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            XCache::Hit => "HIT",
            XCache::Miss => "MISS",
            XCache::Stale => "STALE",
            XCache::Revalidated => "REVALIDATED",
            XCache::Bypass => "BYPASS",
        })
    }
}

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Answers one request.
pub async fn handle<B>(edge: &Arc<Edge>, request: Request<B>) -> Response<Full<Bytes>> {
    let (parts, _body) = request.into_parts();
    let method = parts.method;
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the edge serves GET and HEAD\n",
            XCache::Bypass,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if !path.starts_with('/') {
        return plain(
            StatusCode::BAD_REQUEST,
            "the request target must be a path\n",
            XCache::Bypass,
        );
    }
    let Some((index, authority)) = edge.routes.find(&path) else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("no origin serves {path}\n"),
            XCache::Bypass,
        );
    };
    let route = Route {
        index,
        authority: authority.clone(),
    };
    let headers = parts.headers;
    if headers.contains_key(header::AUTHORIZATION) {
        // Authenticated requests go to the origin, one by one, and are never stored.
        EdgeStats::count(&edge.stats.bypass);
        return match fetch(edge, &route, &path, origin::forwarded(&headers)).await {
            Ok(fetched) => pass(fetched, XCache::Bypass),
            Err(e) => failure(&e),
        };
    }

    let now = SystemTime::now();
    match edge.store.lookup(&path, &headers) {
        Lookup::Found(object) => match object.lifetime.state(object.response_time, now) {
            State::Fresh => {
                EdgeStats::count(&edge.stats.hits);
                answer(&object, XCache::Hit, &method, &headers, now)
            }
            State::Stale {
                while_revalidating: true,
                ..
            } => {
                EdgeStats::count(&edge.stats.stale);
                let (edge2, path2, headers2, stale) =
                    (Arc::clone(edge), path.clone(), headers.clone(), Arc::clone(&object));
                tokio::spawn(async move {
                    let _ = refresh(&edge2, &route, &path2, &headers2, Some(stale)).await;
                });
                answer(&object, XCache::Stale, &method, &headers, now)
            }
            State::Stale { on_error, .. } => {
                let outcome = refresh(edge, &route, &path, &headers, Some(Arc::clone(&object))).await;
                let now = SystemTime::now();
                match outcome {
                    Ok(landed) if on_error && is_origin_failure(landed.object.status) => {
                        EdgeStats::count(&edge.stats.stale);
                        answer(&object, XCache::Stale, &method, &headers, now)
                    }
                    Ok(landed) => answer_landed(edge, &landed, &method, &headers, now),
                    Err(_) if on_error => {
                        EdgeStats::count(&edge.stats.stale);
                        answer(&object, XCache::Stale, &method, &headers, now)
                    }
                    Err(e) => failure(&e),
                }
            }
        },
        Lookup::Missing => match refresh(edge, &route, &path, &headers, None).await {
            Ok(landed) => answer_landed(edge, &landed, &method, &headers, SystemTime::now()),
            Err(e) => failure(&e),
        },
        Lookup::Unkeyable => {
            EdgeStats::count(&edge.stats.bypass);
            match fetch(edge, &route, &path, origin::forwarded(&headers)).await {
                Ok(fetched) => pass(fetched, XCache::Bypass),
                Err(e) => failure(&e),
            }
        }
    }
}

/// The origin serving a path.
#[derive(Debug, Clone)]
struct Route {
    index: usize,
    authority: Authority,
}

/// The statuses that count as the origin failing, for `stale-if-error` (RFC 5861 §4).
fn is_origin_failure(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

fn answer_landed(
    edge: &Edge,
    landed: &Landed,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
) -> Response<Full<Bytes>> {
    let x_cache = if landed.revalidated {
        EdgeStats::count(&edge.stats.revalidated);
        XCache::Revalidated
    } else if landed.stored {
        EdgeStats::count(&edge.stats.misses);
        XCache::Miss
    } else {
        EdgeStats::count(&edge.stats.bypass);
        XCache::Bypass
    };
    answer(&landed.object, x_cache, method, request, now)
}

/// Revalidates `stale` (or fetches anew), in one flight with the concurrent requests for the
/// same object. A follower uses the flight's answer only when it was stored and is its variant
/// too (an answer not stored may be private to the request that fetched it); otherwise it fetches
/// on its own. Errors are shared: one timeout, not one per waiter.
async fn refresh(
    edge: &Arc<Edge>,
    route: &Route,
    path: &str,
    request: &HeaderMap,
    stale: Option<Arc<StoredObject>>,
) -> Outcome {
    let key = (path.to_owned(), edge.store.variant(path, request).unwrap_or_default());
    let (outcome, led) = edge
        .flights
        .join(key, fetch_and_store(edge, route, path, request, stale.clone()))
        .await;
    if led {
        return outcome;
    }
    match &outcome {
        Ok(landed) if !landed.stored || vary::secondary_key(&landed.vary, request) != landed.variant => {
            fetch_and_store(edge, route, path, request, stale).await
        }
        _ => outcome,
    }
}

/// One fetch (conditional when there is a stale object) and what the store makes of it.
async fn fetch_and_store(
    edge: &Arc<Edge>,
    route: &Route,
    path: &str,
    request: &HeaderMap,
    stale: Option<Arc<StoredObject>>,
) -> Outcome {
    let ticket = edge.store.begin_fetch();
    let mut headers = origin::forwarded(request);
    if let Some(stale) = &stale {
        headers.extend(conditional::revalidation_headers(&stale.headers));
    }
    let fetched = fetch(edge, route, path, headers).await?;
    if fetched.status == StatusCode::NOT_MODIFIED {
        let Some(stale) = stale else {
            EdgeStats::count(&edge.stats.origin_errors);
            return Err(OriginError::Garbage {
                origin: route.authority.to_string(),
                reason: "304 to a request that was not conditional".into(),
            });
        };
        let mut merged = stale.headers.clone();
        if conditional::merge_not_modified(&mut merged, &fetched.headers).is_err() {
            // A 304 about another representation: ask for the whole object, unconditionally.
            return Box::pin(fetch_and_store(edge, route, path, request, None)).await;
        }
        return Ok(Arc::new(land(
            edge,
            ticket,
            path,
            request,
            Fetched {
                status: stale.status,
                headers: merged,
                body: stale.body.clone(),
                ..fetched
            },
            true,
        )));
    }
    Ok(Arc::new(land(edge, ticket, path, request, fetched, false)))
}

/// Decides on an origin's answer with the caching rules and stores it if they allow.
fn land(
    edge: &Edge,
    ticket: basalt_edge::store::FetchTicket,
    path: &str,
    request: &HeaderMap,
    fetched: Fetched,
    revalidated: bool,
) -> Landed {
    let decision = freshness::decide(
        &Method::GET,
        request,
        fetched.status,
        &fetched.headers,
        fetched.request_time,
        fetched.response_time,
        &edge.policy,
    );
    match decision {
        Ok(storable) => {
            let variant = vary::secondary_key(&storable.vary, request);
            let object = Arc::new(StoredObject {
                status: fetched.status,
                headers: fetched.headers,
                body: fetched.body,
                lifetime: storable.lifetime,
                response_time: fetched.response_time,
                tags: storable.tags,
            });
            let stored = match edge
                .store
                .insert(ticket, path, storable.vary.clone(), request, Arc::clone(&object))
            {
                Ok(()) => true,
                Err(why) => {
                    tracing::debug!(path, %why, "edge: answer served, not stored");
                    false
                }
            };
            Landed {
                object,
                stored,
                revalidated,
                vary: storable.vary,
                variant,
            }
        }
        Err(why) => {
            tracing::debug!(path, %why, "edge: answer not storable");
            Landed {
                object: Arc::new(StoredObject {
                    status: fetched.status,
                    headers: fetched.headers,
                    body: fetched.body,
                    lifetime: Lifetime {
                        fresh_for: Duration::ZERO,
                        initial_age: Duration::ZERO,
                        stale_while_revalidate: Duration::ZERO,
                        stale_if_error: Duration::ZERO,
                    },
                    response_time: fetched.response_time,
                    tags: Vec::new(),
                }),
                stored: false,
                revalidated,
                vary: Vec::new(),
                variant: None,
            }
        }
    }
}

async fn fetch(edge: &Edge, route: &Route, path: &str, headers: HeaderMap) -> Result<Fetched, OriginError> {
    EdgeStats::count(&edge.stats.origin_fetches);
    edge.origins
        .fetch(route.index, &route.authority, path, headers)
        .await
        .inspect_err(|e| {
            EdgeStats::count(&edge.stats.origin_errors);
            tracing::warn!(error = %e, "edge: origin fetch failed");
        })
}

/// An answer from an object: 304 for a matching conditional request, 206 or 416 for a range of
/// a 200, the object otherwise; with `Age` and `X-Cache`.
fn answer(
    object: &StoredObject,
    x_cache: XCache,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
) -> Response<Full<Bytes>> {
    let age = object.lifetime.age(object.response_time, now).as_secs();
    let ok = object.status == StatusCode::OK;
    if ok
        && conditional::evaluate(method, request, &Validators::of(&object.headers, object.response_time))
            == Answer::NotModified
    {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        // RFC 9110 §15.4.5: the headers a 200 would carry that describe the cache and validators.
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for value in object.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        decorate(response.headers_mut(), age, x_cache);
        return response;
    }
    let len = object.body.len() as u64;
    let range = if ok {
        range::evaluate(method, request, len, &object.headers)
    } else {
        RangeAnswer::Full
    };
    let (status, body, content_range) = match range {
        RangeAnswer::Full => (object.status, object.body.clone(), None),
        RangeAnswer::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            // In bounds: range::evaluate returns start <= end < len.
            object.body.slice(start as usize..=end as usize),
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        RangeAnswer::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Bytes::new(),
            Some(format!("bytes */{len}")),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = object.headers.clone();
    if let Some(content_range) = content_range.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(header::CONTENT_RANGE, content_range);
    }
    if ok {
        response
            .headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    decorate(response.headers_mut(), age, x_cache);
    response
}

fn decorate(headers: &mut HeaderMap, age_secs: u64, x_cache: XCache) {
    headers.insert(header::AGE, HeaderValue::from(age_secs));
    headers.insert(X_CACHE, x_cache.value());
}

/// An origin's answer passed on as it came (not stored).
fn pass(fetched: Fetched, x_cache: XCache) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(fetched.body));
    *response.status_mut() = fetched.status;
    *response.headers_mut() = fetched.headers;
    response.headers_mut().insert(X_CACHE, x_cache.value());
    response
}

fn failure(error: &OriginError) -> Response<Full<Bytes>> {
    plain(error.status(), &format!("{error}\n"), XCache::Miss)
}

fn plain(status: StatusCode, text: &str, x_cache: XCache) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(X_CACHE, x_cache.value());
    response
}
