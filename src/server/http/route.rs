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
    /// A progressive stream in its codec's own format (`?latency=low`: every frame at
    /// once): `/STREAM.ogg` (Opus), `/STREAM.mp3`, `/STREAM.aac`, or `/STREAM` (whatever
    /// the stream is, as an Icecast mount is named; only a stream the node knows of).
    Listen {
        name: String,
        low_latency: bool,
        /// The codec the name's extension asks for (None: any).
        codec: Option<u64>,
    },
    /// `GET /admin/metadata?...`: an Icecast source's title update (its query).
    Metadata {
        query: String,
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
            "/admin/metadata" | "/admin/metadata.xsl" => Route::Metadata {
                query: head.query.clone().unwrap_or_default(),
            },
            _ => match hls::parse(path, head.query.as_deref()) {
                Some(Ok(r)) => Route::Hls(r),
                Some(Err(e)) => Route::Bad(e.to_string()),
                None => listen_route(path, head.query.as_deref()),
            },
        },
        Method::Other => Route::MethodNotAllowed,
    }
}

/// A listener's route: the stream and the codec its extension names.
fn listen_route(path: &str, query: Option<&str>) -> Route {
    let Some(p) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    let (name, codec) = [
        (".ogg", proto::CODEC_OPUS),
        (".mp3", proto::CODEC_MP3),
        (".aac", proto::CODEC_AAC),
    ]
    .iter()
    .find_map(|(ext, c)| p.strip_suffix(ext).map(|n| (n, Some(*c))))
    .unwrap_or((p, None));
    match proto::check_path(name) {
        Ok(()) => Route::Listen {
            name: name.to_string(),
            low_latency: query.is_some_and(|q| q.split('&').any(|kv| kv == "latency=low")),
            codec,
        },
        Err(_) if codec.is_none() => Route::NotFound,
        Err(e) => Route::Bad(format!("bad stream name: {e}")),
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
            Route::Listen {
                name: "a/b".into(),
                low_latency: true,
                codec: Some(proto::CODEC_OPUS),
            }
        );
        assert_eq!(
            r("GET /radio HTTP/1.1\r\n\r\n"),
            Route::Listen {
                name: "radio".into(),
                low_latency: false,
                codec: None,
            }
        );
        assert_eq!(
            r("GET /radio.mp3 HTTP/1.1\r\n\r\n"),
            Route::Listen {
                name: "radio".into(),
                low_latency: false,
                codec: Some(proto::CODEC_MP3),
            }
        );
        assert_eq!(
            r("GET /admin/metadata?mode=updinfo&mount=/r&song=x HTTP/1.1\r\n\r\n"),
            Route::Metadata {
                query: "mode=updinfo&mount=/r&song=x".into()
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
        assert_eq!(r("GET /no//pe HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert!(matches!(r("GET /.ogg HTTP/1.1\r\n\r\n"), Route::Bad(_)));
        assert!(matches!(r("GET /../x.ogg HTTP/1.1\r\n\r\n"), Route::Bad(_)));
        assert!(matches!(
            r("GET /x.hls/1/zz.m4s HTTP/1.1\r\n\r\n"),
            Route::Bad(_)
        ));
    }
}
