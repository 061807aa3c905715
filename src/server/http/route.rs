//! Where a request goes, from its head alone (no I/O, no node): the node's pages, a stream
//! as progressive Ogg, HLS, or an Icecast source. Pure, so any head can be checked (and
//! fuzzed) for what it would do.

use super::head::{Method, RequestHead};
use crate::egress::hls;
use crate::proto;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// CORS preflight (any path).
    Options,
    /// `/`: the node's page.
    Page,
    /// `/streams`: the streams as JSON.
    Streams,
    /// A playlist, init segment, segment or part.
    Hls(hls::Resource),
    /// `/STREAM.ogg`: a progressive Ogg stream (`?latency=low`: every frame at once).
    Ogg {
        name: String,
        low_latency: bool,
    },
    /// `PUT /STREAM` or `SOURCE /STREAM`: an Icecast source (the name is checked later, after
    /// its credentials, so a stranger learns nothing from it).
    Source {
        name: String,
    },
    /// Malformed (400), with why.
    Bad(String),
    NotFound,
    MethodNotAllowed,
}

/// The route of a request.
pub fn route(head: &RequestHead) -> Route {
    let path = head.path.as_str();
    match head.method {
        Method::Options => Route::Options,
        Method::Put | Method::Source => Route::Source {
            name: path.strip_prefix('/').unwrap_or(path).to_string(),
        },
        Method::Get | Method::Head => match path {
            "/" => Route::Page,
            "/streams" => Route::Streams,
            _ => match hls::parse(path, head.query.as_deref()) {
                Some(Ok(r)) => Route::Hls(r),
                Some(Err(e)) => Route::Bad(e.to_string()),
                None => match path.strip_prefix('/').and_then(|p| p.strip_suffix(".ogg")) {
                    Some(name) => match proto::check_path(name) {
                        Ok(()) => Route::Ogg {
                            name: name.to_string(),
                            low_latency: head
                                .query
                                .as_deref()
                                .is_some_and(|q| q.split('&').any(|kv| kv == "latency=low")),
                        },
                        Err(e) => Route::Bad(format!("bad stream name: {e}")),
                    },
                    None => Route::NotFound,
                },
            },
        },
        Method::Other => Route::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::head::parse;

    fn r(req: &str) -> Route {
        let (head, _) = parse(req.as_bytes()).unwrap().unwrap();
        route(&head)
    }

    #[test]
    fn requests_go_where_their_heads_say() {
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::Page);
        assert_eq!(r("HEAD /streams HTTP/1.1\r\n\r\n"), Route::Streams);
        assert_eq!(
            r("GET /a/b.ogg?latency=low HTTP/1.1\r\n\r\n"),
            Route::Ogg {
                name: "a/b".into(),
                low_latency: true
            }
        );
        assert!(matches!(r("GET /a.m3u8 HTTP/1.1\r\n\r\n"), Route::Hls(_)));
        assert_eq!(
            r("PUT /live HTTP/1.1\r\n\r\n"),
            Route::Source {
                name: "live".into()
            }
        );
        assert_eq!(
            r("PUT http://h HTTP/1.1\r\n\r\n"),
            Route::Source { name: "".into() }
        );
        assert_eq!(r("OPTIONS * HTTP/1.1\r\n\r\n"), Route::Options);
        assert_eq!(r("DELETE / HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert!(matches!(r("GET /.ogg HTTP/1.1\r\n\r\n"), Route::Bad(_)));
        assert!(matches!(r("GET /../x.ogg HTTP/1.1\r\n\r\n"), Route::Bad(_)));
        assert!(matches!(
            r("GET /x.hls/1/zz.m4s HTTP/1.1\r\n\r\n"),
            Route::Bad(_)
        ));
    }
}
