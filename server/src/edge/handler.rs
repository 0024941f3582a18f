//! One request of the edge: found fresh → HIT; stale within `stale-while-revalidate` → STALE
//! and a background revalidation; otherwise revalidated or fetched (coalesced with concurrent
//! misses of the same object) → REVALIDATED or MISS, or STALE within `stale-if-error` when the
//! origin fails; not storable → BYPASS; too large to store (over `STORED_OBJECT_BYTES_MAX`) →
//! streamed through from the origin, never buffered whole, BYPASS. Every answer carries
//! `X-Cache` and, from a stored object, `Age`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use basalt_edge::conditional::{self, Answer, Validators};
use basalt_edge::freshness::{self, Lifetime, State};
use basalt_edge::range::{self, RangeAnswer};
use basalt_edge::store::{FetchTicket, Lookup, NotInserted, StoredObject};
use basalt_edge::vary;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use super::flight::FlightKey;
use super::origin::{self, Fetched, OriginError, StreamedBody};
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
    /// An origin failure (500/502/503/504) that may go to every waiter of its variant: it sets no
    /// cookie and is not `private` or `no-store`.
    pub shareable_failure: bool,
    /// The purges seen when its fetch began: a waiter does not take a stored answer a later purge
    /// covers.
    pub ticket: FetchTicket,
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

/// The body of an edge answer: whole (from the store, or a small origin answer), or streamed
/// through from the origin.
pub type EdgeBody = Either<Full<Bytes>, StreamedBody>;

/// A request whose answer is too large to store: it is streamed through from the origin.
struct StreamThrough {
    route: Route,
    method: Method,
    path: String,
    headers: HeaderMap,
    /// Already counted as BYPASS (an authenticated or unkeyable request).
    counted: bool,
}

/// Answers one request.
pub async fn handle<B>(edge: &Arc<Edge>, request: Request<B>) -> Response<EdgeBody> {
    match respond(edge, request).await {
        Ok(response) => response.map(Either::Left),
        Err(through) => stream_through(edge, *through).await,
    }
}

/// Streams the origin's answer to `through` to the client (BYPASS).
async fn stream_through(edge: &Edge, through: StreamThrough) -> Response<EdgeBody> {
    if !through.counted {
        EdgeStats::count(&edge.stats.bypass);
    }
    let headers = origin::forwarded_streaming(&through.headers);
    match edge
        .origins
        .fetch_streaming(
            &edge.stream_connections,
            through.route.index,
            &through.route.authority,
            through.method,
            &through.path,
            headers,
        )
        .await
    {
        Ok(response) => {
            EdgeStats::count(&edge.stats.origin_fetches);
            let mut response = response.map(Either::Right);
            response.headers_mut().insert(X_CACHE, XCache::Bypass.value());
            response
        }
        // Not sent: the origin did nothing wrong (the budget counts and logs the refusal).
        Err(e @ OriginError::NoConnectionLeft { .. }) => {
            let mut response = plain(e.status(), &format!("{e}\n"), XCache::Bypass);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response.map(Either::Left)
        }
        Err(e) => {
            EdgeStats::count(&edge.stats.origin_fetches);
            EdgeStats::count(&edge.stats.origin_errors);
            tracing::warn!(error = %e, "edge: origin fetch failed");
            failure(&e).map(Either::Left)
        }
    }
}

/// A failed fetch's answer, or, when the origin's answer was only too large to store, the
/// request to stream through instead. A fetch made to store (`keyed`) marks the path too large
/// for a while, so later requests stream at once instead of each starting a fetch to store; an
/// authenticated or unkeyable request's answer (private to it) does not.
fn failed(
    edge: &Edge,
    keyed: bool,
    error: OriginError,
    route: &Route,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, Box<StreamThrough>> {
    match error {
        OriginError::TooLarge { .. } => {
            if keyed {
                edge.mark_too_large(path);
            }
            Err(Box::new(StreamThrough {
                route: route.clone(),
                method: method.clone(),
                path: path.to_owned(),
                headers: headers.clone(),
                counted: !keyed,
            }))
        }
        other => Ok(failure(&other)),
    }
}

/// Answers one request from the store or through it; `Err` for an answer to stream through.
async fn respond<B>(edge: &Arc<Edge>, request: Request<B>) -> Result<Response<Full<Bytes>>, Box<StreamThrough>> {
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
        return Ok(response);
    }
    if carries_body(&parts.headers) {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "a GET or HEAD may not carry a body\n",
            XCache::Bypass,
        ));
    }
    // Headers the client's Connection names are for this hop only: never keyed, never forwarded.
    let headers = origin::without_hop_by_hop(parts.headers);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if !path.starts_with('/') {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "the request target must be a path\n",
            XCache::Bypass,
        ));
    }
    if has_dot_segment(&path) || has_encoded_separator(&path) {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "the path may not hold . or .. segments, backslashes or encoded slashes\n",
            XCache::Bypass,
        ));
    }
    let Some((index, authority)) = edge.routes.find(&path) else {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            &format!("no origin serves {path}\n"),
            XCache::Bypass,
        ));
    };
    let route = Route {
        index,
        authority: authority.clone(),
    };
    if headers.contains_key(header::AUTHORIZATION) {
        // Authenticated requests go to the origin, one by one, and are never stored.
        EdgeStats::count(&edge.stats.bypass);
        if edge.is_too_large(&path) {
            return Err(Box::new(StreamThrough {
                route,
                method,
                path,
                headers,
                counted: true,
            }));
        }
        return match fetch(edge, &route, &path, origin::forwarded(&headers)).await {
            Ok(fetched) => Ok(pass(fetched, XCache::Bypass)),
            Err(e) => failed(edge, false, e, &route, &method, &path, &headers),
        };
    }

    // Taken before the lookup: a purge after it refuses what a revalidation of the object found
    // would store again.
    let ticket = edge.store.begin_fetch();
    let now = SystemTime::now();
    match edge.store.lookup(&path, &headers) {
        Lookup::Found(object) => match object.lifetime.state(object.response_time, now) {
            State::Fresh => {
                EdgeStats::count(&edge.stats.hits);
                Ok(answer(&object, XCache::Hit, &method, &headers, now))
            }
            State::Stale {
                while_revalidating: true,
                ..
            } => {
                EdgeStats::count(&edge.stats.stale);
                // One revalidation at a time: requests while it runs do not start more.
                let key = flight_key(edge, &path, &headers);
                if !edge.flights.contains(&key) {
                    let task = refresh(
                        Arc::clone(edge),
                        route,
                        path.clone(),
                        headers.clone(),
                        Some(Arc::clone(&object)),
                        ticket,
                    );
                    let (edge, headers) = (Arc::clone(edge), headers.clone());
                    tokio::spawn(async move {
                        if let Err(OriginError::TooLarge { .. }) = task.await {
                            // The object outgrew the store: the small copy must not be served
                            // again, and the path streams from now on.
                            edge.store.remove(&path, &headers);
                            edge.mark_too_large(&path);
                        }
                    });
                }
                Ok(answer(&object, XCache::Stale, &method, &headers, now))
            }
            State::Stale { .. } => {
                let outcome = refresh(
                    Arc::clone(edge),
                    route.clone(),
                    path.clone(),
                    headers.clone(),
                    Some(Arc::clone(&object)),
                    ticket,
                )
                .await;
                // The allowance is judged when the answer is known: the fetch took time.
                let now = SystemTime::now();
                let on_error = matches!(
                    object.lifetime.state(object.response_time, now),
                    State::Stale { on_error: true, .. }
                );
                match outcome {
                    Ok(landed) if on_error && is_origin_failure(landed.object.status) => {
                        EdgeStats::count(&edge.stats.stale);
                        Ok(answer(&object, XCache::Stale, &method, &headers, now))
                    }
                    Ok(landed) => Ok(answer_landed(edge, &landed, &method, &headers, now)),
                    Err(e @ OriginError::TooLarge { .. }) => {
                        // The origin's object outgrew the store: the small copy must go too.
                        edge.store.remove(&path, &headers);
                        failed(edge, true, e, &route, &method, &path, &headers)
                    }
                    Err(_) if on_error => {
                        EdgeStats::count(&edge.stats.stale);
                        Ok(answer(&object, XCache::Stale, &method, &headers, now))
                    }
                    Err(e) => Ok(failure(&e)),
                }
            }
        },
        Lookup::Missing if edge.is_too_large(&path) => Err(Box::new(StreamThrough {
            route,
            method,
            path,
            headers,
            counted: false,
        })),
        Lookup::Missing => match refresh(
            Arc::clone(edge),
            route.clone(),
            path.clone(),
            headers.clone(),
            None,
            ticket,
        )
        .await
        {
            Ok(landed) => Ok(answer_landed(edge, &landed, &method, &headers, SystemTime::now())),
            Err(e) => failed(edge, true, e, &route, &method, &path, &headers),
        },
        Lookup::Unkeyable => {
            EdgeStats::count(&edge.stats.bypass);
            if edge.is_too_large(&path) {
                return Err(Box::new(StreamThrough {
                    route,
                    method,
                    path,
                    headers,
                    counted: true,
                }));
            }
            match fetch(edge, &route, &path, origin::forwarded(&headers)).await {
                Ok(fetched) => Ok(pass(fetched, XCache::Bypass)),
                Err(e) => failed(edge, false, e, &route, &method, &path, &headers),
            }
        }
    }
}

/// A GET or HEAD announcing a body: refused, since the edge forwards none and a body left in the
/// connection would be read as the next request.
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// Whether the path (before its query) holds a `.` or `..` segment, raw or percent-encoded: such
/// a path could leave the prefix that chose its origin once the origin normalises it.
fn has_dot_segment(path_and_query: &str) -> bool {
    // Without allocating: this runs on every request.
    fn dot(s: &[u8]) -> bool {
        s == b"." || s.eq_ignore_ascii_case(b"%2e")
    }
    let path = path_and_query.split('?').next().unwrap_or_default();
    // A path parameter (`..;jsessionid=x`, as Tomcat and Spring read it) ends the segment.
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default().as_bytes())
        .any(|s| {
            dot(s)
                || match s.len() {
                    2 => s == b"..",
                    4 => (dot(&s[..1]) && dot(&s[1..])) || (dot(&s[..3]) && dot(&s[3..])),
                    6 => dot(&s[..3]) && dot(&s[3..]),
                    _ => false,
                }
        })
}

/// Whether the path (before its query) holds a backslash or an encoded `/` or `\`: an origin that
/// decodes or converts them could see segments (`..%2f`) the dot check did not.
fn has_encoded_separator(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or_default().as_bytes();
    path.contains(&b'\\')
        || path
            .windows(3)
            .any(|w| w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c")))
}

/// The origin serving a path.
#[derive(Debug, Clone)]
struct Route {
    index: usize,
    authority: Authority,
}

/// The statuses that count as the origin failing, for `stale-if-error` (RFC 5861 §4); shared with
/// every waiter of a flight (they carry no private data, and a failing origin should not be asked
/// once per waiter).
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

/// The flight of a request: its path and its variant as far as the store knows the path's Vary.
fn flight_key(edge: &Edge, path: &str, request: &HeaderMap) -> FlightKey {
    (path.to_owned(), edge.store.variant(path, request).unwrap_or_default())
}

/// Revalidates `stale` (or fetches anew), in one flight with the concurrent requests for the
/// same object. A waiter uses the flight's answer when it was stored and is its variant too, or
/// when the origin failed; an answer not stored may be private to the request that fetched it,
/// so then the waiter fetches its own. A waiter of another variant joins a second flight, keyed
/// by the Vary the first one taught the store.
async fn refresh(
    edge: Arc<Edge>,
    route: Route,
    path: String,
    request: HeaderMap,
    stale: Option<Arc<StoredObject>>,
    ticket: FetchTicket,
) -> Outcome {
    for attempt in 0..2 {
        let key = flight_key(&edge, &path, &request);
        let work = fetch_and_store(
            Arc::clone(&edge),
            route.clone(),
            path.clone(),
            request.clone(),
            stale.clone(),
            ticket,
        );
        let (outcome, started) = edge.flights.join(key, work).await;
        let outcome = outcome.map_err(|lost| OriginError::Lost(lost.0)).and_then(|o| o);
        if started {
            return outcome;
        }
        match &outcome {
            Err(_) => return outcome,
            Ok(landed) if landed.shareable_failure && vary::secondary_key(&landed.vary, &request) == landed.variant => {
                return outcome
            }
            Ok(landed) if landed.stored => {
                let tags = &landed.object.tags;
                if edge.store.purged_since(landed.ticket, &path, tags) {
                    break; // a purge since that fetch began covers it: fetch anew
                }
                if vary::secondary_key(&landed.vary, &request) == landed.variant {
                    return outcome;
                }
                // Another variant: the store now knows the Vary, so a second flight coalesces the
                // requests of this variant.
                if attempt == 0 {
                    continue;
                }
            }
            Ok(_) => {}
        }
        break;
    }
    fetch_and_store(edge, route, path, request, stale, ticket).await
}

/// One fetch (conditional when there is a stale object) and what the store makes of it.
async fn fetch_and_store(
    edge: Arc<Edge>,
    route: Route,
    path: String,
    request: HeaderMap,
    stale: Option<Arc<StoredObject>>,
    ticket: FetchTicket,
) -> Outcome {
    let mut headers = origin::forwarded(&request);
    if let Some(stale) = &stale {
        headers.extend(conditional::revalidation_headers(&stale.headers));
    }
    let fetched = fetch(&edge, &route, &path, headers).await?;
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
            // A 304 about another representation: ask for the whole object, unconditionally
            // (once: a 304 to that is garbage, above).
            return Box::pin(fetch_and_store(edge, route, path, request, None, ticket)).await;
        }
        return Ok(Arc::new(land(
            &edge,
            ticket,
            &path,
            &request,
            Fetched {
                status: stale.status,
                headers: merged,
                body: stale.body.clone(),
                ..fetched
            },
            true,
        )));
    }
    let landed = land(&edge, ticket, &path, &request, fetched, false);
    if stale.is_some() && !landed.stored && !is_origin_failure(landed.object.status) {
        // The origin no longer lets this variant be stored (403, no-store, private, ...): the
        // stale copy must not be served again, not even within stale-while-revalidate.
        edge.store.remove(&path, &request);
    }
    Ok(Arc::new(landed))
}

/// Decides on an origin's answer with the caching rules and stores it if they allow.
fn land(
    edge: &Edge,
    ticket: FetchTicket,
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
                    if let NotInserted::TooLarge { .. } = why {
                        // Its body fit the fetch's limit, but not the store's with its headers:
                        // later requests stream it rather than each buffer it again.
                        edge.mark_too_large(path);
                    }
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
                shareable_failure: false,
                ticket,
            }
        }
        Err(why) => {
            tracing::debug!(path, %why, "edge: answer not storable");
            let cc = basalt_edge::cache_control::parse_response(
                fetched
                    .headers
                    .get_all(header::CACHE_CONTROL)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
            let vary_names = match vary::parse(&fetched.headers) {
                vary::Vary::Headers(names) => Some(names),
                vary::Vary::Any | vary::Vary::TooWide => None,
            };
            let shareable_failure = is_origin_failure(fetched.status)
                && !fetched.headers.contains_key(header::SET_COOKIE)
                && !cc.private
                && !cc.no_store
                && vary_names.is_some();
            let vary_names = vary_names.unwrap_or_default();
            let variant = vary::secondary_key(&vary_names, request);
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
                vary: vary_names,
                variant,
                shareable_failure,
                ticket,
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
            // Too large to store is not the origin's failure: the answer is streamed instead.
            if !matches!(e, OriginError::TooLarge { .. }) {
                EdgeStats::count(&edge.stats.origin_errors);
                tracing::warn!(error = %e, "edge: origin fetch failed");
            }
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
    // Validators (a date to parse) only for a conditional request: hits are the hot path.
    let conditional = request.contains_key(header::IF_NONE_MATCH) || request.contains_key(header::IF_MODIFIED_SINCE);
    if ok
        && conditional
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
    let range = if ok && request.contains_key(header::RANGE) {
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

#[cfg(test)]
mod tests {
    use super::{has_dot_segment, has_encoded_separator};

    #[test]
    fn dot_segments_are_found_raw_and_encoded() {
        for climbing in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/%2e%2E/b",
            "/a/.%2e/b",
            "/a/%2E./b",
            "/a/%2e",
            "/a/..?x=1",
        ] {
            assert!(has_dot_segment(climbing), "{climbing}");
        }
        for plain in [
            "/a/b",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/?x=/../",
            "/a/%2e%2e%2e",
            "/a/.well-known/x",
        ] {
            assert!(!has_dot_segment(plain), "{plain}");
        }
        // Segments an origin would split or strip: refused by the separator check.
        for hidden in ["/a/..%2fadmin", "/a/..%5Cadmin", "/a/..\\admin", "/a/%2F"] {
            assert!(has_encoded_separator(hidden), "{hidden}");
        }
        assert!(!has_encoded_separator("/a/b?x=%2f"));
    }
}
