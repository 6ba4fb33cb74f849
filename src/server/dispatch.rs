//! What a listener serves in one generation ([`Served`]), and the public listener's direct
//! dispatch: a request for a configured endpoint, with a method that endpoint serves, goes from
//! the edge straight to the endpoint, without axum's routing.
//!
//! axum's router is general: per request it boxes the matched route's future, clones the boxed
//! handler, and stores the path parameters in the request's extensions (a map allocated for
//! them), about 5,000 instructions of a request that costs the host ~27,000 in all. The direct
//! table ([`Direct`]) holds the same paths in the same matcher axum uses (`matchit`, so a path
//! matches the same route with the same priority) and only answers what it is sure of: an
//! endpoint's path with one of its methods, every parameter valid percent-encoded UTF-8.
//! Everything else (unknown paths, other methods and their 405, `HEAD` of a `GET` route, a
//! parameter axum refuses, `/health` and `/ready`) goes to the axum router as before, so the
//! answers are the same, refusals included.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Request};
use backworks_plugin_sdk::Text;
use bytes::Bytes;

use super::{Endpoint, PathParams};

/// What a listener serves in one generation: its axum router, and for the public listener the
/// direct table of its endpoints. The edge loads it whole for each request, which holds it (and so
/// its generation's plugins) until it is answered.
pub struct Served {
    router: Router,
    direct: Option<Direct>,
}

impl Served {
    /// `router`, with no direct table: every request is routed by axum.
    pub fn new(router: Router) -> Served {
        Served {
            router,
            direct: None,
        }
    }

    /// `router` with the direct table of its endpoints.
    pub(super) fn with_direct(router: Router, direct: Option<Direct>) -> Served {
        Served { router, direct }
    }

    /// The axum router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The axum router, which serves every request as the direct table would (more slowly).
    pub fn into_router(self) -> Router {
        self.router
    }

    /// The endpoint that serves `request` directly, with its path parameters; `None` when the
    /// router should (see the module docs).
    pub(crate) fn direct<B>(&self, request: &Request<B>) -> Option<DirectCall> {
        let (endpoint, params) = self
            .direct
            .as_ref()?
            .find(request.method(), request.uri().path())?;
        Some(DirectCall { endpoint, params })
    }
}

/// An endpoint found for a request by the direct table, ready to serve it.
pub(crate) struct DirectCall {
    endpoint: Arc<Endpoint>,
    params: PathParams,
}

impl DirectCall {
    /// Serves `request` (the one it was found for) by the endpoint.
    pub(crate) fn serve<B>(
        self,
        request: Request<B>,
    ) -> impl Future<Output = axum::response::Response> + Send + 'static
    where
        B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        super::handle(self.endpoint, self.params, request, false)
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("router", &self.router)
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

/// The direct table: every path of the public router, with the endpoints by method for an
/// endpoint's path and none for the router's own routes (`/health`, `/ready`), which must still
/// win over an endpoint's parameter where axum's router would pick them.
pub(super) struct Direct {
    table: matchit::Router<Vec<(Method, Arc<Endpoint>)>>,
}

/// Builds a [`Direct`] table, path by path.
#[derive(Default)]
pub(super) struct DirectBuilder {
    paths: BTreeMap<String, Vec<(Method, Arc<Endpoint>)>>,
}

impl DirectBuilder {
    /// `endpoint` serves `method` on `path` (axum's path syntax, `/hello/{name}`).
    pub(super) fn endpoint(&mut self, path: &str, method: Method, endpoint: Arc<Endpoint>) {
        self.paths
            .entry(path.to_owned())
            .or_default()
            .push((method, endpoint));
    }

    /// The router serves `path` itself.
    pub(super) fn router_path(&mut self, path: &str) {
        self.paths.entry(path.to_owned()).or_default();
    }

    /// The table, or `None` when the matcher refuses a path (axum's router would have refused it
    /// first; the router then serves everything).
    pub(super) fn build(self) -> Option<Direct> {
        let mut table = matchit::Router::new();
        for (path, endpoints) in self.paths {
            if let Err(error) = table.insert(path.as_str(), endpoints) {
                tracing::debug!("path {path:?} is routed by axum only: {error}");
                return None;
            }
        }
        Some(Direct { table })
    }
}

impl Direct {
    /// The endpoint serving `method` on `path`, with the path parameters decoded; `None` when the
    /// router should answer (see the module docs).
    fn find(&self, method: &Method, path: &str) -> Option<(Arc<Endpoint>, PathParams)> {
        let matched = self.table.at(path).ok()?;
        let (_, endpoint) = matched.value.iter().find(|(m, _)| m == method)?;
        let mut params = Vec::with_capacity(matched.params.len());
        for (name, raw) in matched.params.iter() {
            // As axum decodes them; one it refuses is the router's to refuse.
            let value = percent_encoding::percent_decode(raw.as_bytes())
                .decode_utf8()
                .ok()?;
            params.push((Text::from(name), Text::from(value.as_ref())));
        }
        Some((endpoint.clone(), params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::metrics::EndpointStats;

    fn endpoint(name: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            plugin_name: name.to_owned(),
            stats: Arc::new(EndpointStats::new(name, name)),
            max_request_body: 1024,
            target: Err("not started in this test".to_owned()),
        })
    }

    fn table() -> Direct {
        let mut builder = DirectBuilder::default();
        builder.endpoint("/items/{id}", Method::GET, endpoint("items"));
        builder.endpoint("/items/{id}", Method::PUT, endpoint("items-put"));
        builder.endpoint("/{page}", Method::GET, endpoint("page"));
        builder.router_path("/health");
        builder.router_path("/ready");
        builder.build().expect("a table")
    }

    fn found(direct: &Direct, method: Method, path: &str) -> Option<(String, PathParams)> {
        direct
            .find(&method, path)
            .map(|(endpoint, params)| (endpoint.plugin_name.clone(), params))
    }

    #[test]
    fn an_endpoint_with_one_of_its_methods_is_served_directly_with_decoded_params() {
        let direct = table();
        let (name, params) = found(&direct, Method::GET, "/items/a%20b%C5%BC").unwrap();
        assert_eq!(name, "items");
        assert_eq!(params, [("id".into(), "a bż".into())]);
        assert_eq!(
            found(&direct, Method::PUT, "/items/7").unwrap().0,
            "items-put"
        );
        assert_eq!(found(&direct, Method::GET, "/about").unwrap().0, "page");
    }

    #[test]
    fn everything_else_goes_to_the_router() {
        let direct = table();
        // The router's own routes win over a parameter, as in axum's router.
        assert!(found(&direct, Method::GET, "/health").is_none());
        assert!(found(&direct, Method::GET, "/ready").is_none());
        // Another method (the router's 405), HEAD of a GET route, unknown paths (404).
        assert!(found(&direct, Method::DELETE, "/items/7").is_none());
        assert!(found(&direct, Method::HEAD, "/items/7").is_none());
        assert!(found(&direct, Method::GET, "/items/7/more").is_none());
        // A parameter axum refuses (not UTF-8 once decoded): the router's 400.
        assert!(found(&direct, Method::GET, "/items/%FF").is_none());
    }

    #[test]
    fn a_path_the_matcher_refuses_leaves_every_request_to_the_router() {
        let mut builder = DirectBuilder::default();
        builder.endpoint("/a/{x}", Method::GET, endpoint("x"));
        builder.endpoint("/a/{y}", Method::GET, endpoint("y"));
        assert!(builder.build().is_none());
    }
}
