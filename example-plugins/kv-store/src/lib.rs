//! A stateful plugin: an in-memory key-value store and named counters, correct under concurrent
//! requests.
//!
//! | Route                  | Answer                                                                 |
//! |------------------------|------------------------------------------------------------------------|
//! | `PUT /kv/{key}`        | stores the body and its `content-type`; 201 if new, 200 if replaced, with `{"key":"...","size":N}` |
//! | `GET /kv/{key}`        | 200 with the stored bytes and `content-type`, or 404                   |
//! | `DELETE /kv/{key}`     | 204, or 404                                                            |
//! | `GET /kv`              | 200 `{"keys":[...sorted...],"count":N}`                                |
//! | `POST /counter/{name}` | adds one atomically: 200 `{"name":"...","value":N}`                    |
//!
//! Config (optional): `{"max_keys": N}` (N ≥ 1) caps the number of keys; storing a new key beyond
//! it is answered 507 Insufficient Storage (replacing an existing key is always allowed). Counters
//! have their own namespace and do not count towards `max_keys`. `health_check` reports
//! [`Health::Degraded`] once more than 90 % of `max_keys` are used.
//!
//! State lives behind a [`Mutex`] that no code holds across an `.await`, so every request sees a
//! consistent store: the limit check and the insert happen under one lock, and no increment is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use backworks_plugin_sdk::prelude::*;
use backworks_plugin_sdk::tracing;

/// What `GET /kv/{key}` answers with for a value stored without a `content-type`.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The plugin's configuration, from `backworks.yaml`; its JSON Schema is the plugin's
/// [`config_schema`](BackworksPlugin::config_schema), which the host checks the config against.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(crate = "backworks_plugin_sdk::serde", deny_unknown_fields)]
#[schemars(crate = "backworks_plugin_sdk::schemars")]
pub struct KvStoreConfig {
    /// The most keys the store holds; unlimited when absent.
    pub max_keys: Option<usize>,
}

/// One stored value.
#[derive(Debug, Clone)]
struct Entry {
    body: Vec<u8>,
    content_type: Option<String>,
}

/// The in-memory store and counters. See the crate docs for the routes.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: Mutex<HashMap<String, Entry>>,
    counters: Mutex<HashMap<String, u64>>,
    /// 0 = unlimited. Set once by `initialize`.
    max_keys: AtomicUsize,
}

/// Locks `mutex`, going on after a panic elsewhere: each critical section leaves its map
/// consistent (a single insert, remove or add), so a poisoned map is still a valid one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl KvStore {
    fn max_keys(&self) -> Option<usize> {
        match self.max_keys.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn put(&self, key: &str, request: Request) -> PluginResult<Response> {
        let entry = Entry {
            content_type: request.header("content-type").map(str::to_owned),
            body: request.body,
        };
        let size = entry.body.len();
        let mut entries = lock(&self.entries);
        let created = !entries.contains_key(key);
        if let Some(max) = self.max_keys()
            && created
            && entries.len() >= max
        {
            return Err(PluginError::Status {
                status: 507,
                message: format!("the store is full (max_keys = {max}); delete a key first"),
            });
        }
        entries.insert(key.to_owned(), entry);
        drop(entries);
        let status = if created { 201 } else { 200 };
        Ok(Response::json(&json!({ "key": key, "size": size })).with_status(status))
    }

    fn get(&self, key: &str) -> PluginResult<Response> {
        let entries = lock(&self.entries);
        let entry = entries.get(key).ok_or_else(|| no_such_key(key))?;
        let content_type = entry
            .content_type
            .as_deref()
            .unwrap_or(DEFAULT_CONTENT_TYPE);
        Ok(Response::new(200)
            .with_header("content-type", content_type)
            .with_body(entry.body.clone()))
    }

    fn delete(&self, key: &str) -> PluginResult<Response> {
        match lock(&self.entries).remove(key) {
            Some(_) => Ok(Response::new(204)),
            None => Err(no_such_key(key)),
        }
    }

    fn list(&self) -> Response {
        let mut keys: Vec<String> = lock(&self.entries).keys().cloned().collect();
        keys.sort_unstable();
        Response::json(&json!({ "count": keys.len(), "keys": keys }))
    }

    /// Adds one to counter `name` and returns its new value.
    pub fn increment(&self, name: &str) -> PluginResult<u64> {
        let mut counters = lock(&self.counters);
        let value = counters.entry(name.to_owned()).or_insert(0);
        *value = value
            .checked_add(1)
            .ok_or_else(|| PluginError::Internal(format!("counter {name:?} overflowed")))?;
        Ok(*value)
    }
}

fn no_such_key(key: &str) -> PluginError {
    PluginError::NotFound(format!("no key {key:?}"))
}

/// The error for a known path asked with a method it does not serve.
fn method_not_allowed(request: &Request, allowed: &str) -> PluginError {
    PluginError::Status {
        status: 405,
        message: format!(
            "{} {} is not served; use {allowed}",
            request.method, request.path
        ),
    }
}

/// The endpoint's `{param}` as the host decoded it, or else the raw path segment; empty is none.
fn param_or<'a>(request: &'a Request, param: &str, segment: &'a str) -> PluginResult<&'a str> {
    let value = request.param(param).unwrap_or(segment);
    if value.is_empty() {
        return Err(PluginError::NotFound(format!(
            "no {param} in path {}",
            request.path
        )));
    }
    Ok(value)
}

#[async_trait]
impl BackworksPlugin for KvStore {
    fn config_schema() -> Option<Value> {
        Some(schema_for::<KvStoreConfig>())
    }

    async fn initialize(&self, config: Value) -> PluginResult<()> {
        let config: KvStoreConfig = parse_config(config)?;
        if config.max_keys == Some(0) {
            return Err(PluginError::Config(
                "kv-store: max_keys must be at least 1".to_owned(),
            ));
        }
        self.max_keys
            .store(config.max_keys.unwrap_or(0), Ordering::Relaxed);
        match config.max_keys {
            Some(max) => tracing::info!("kv-store initialized with max_keys {max}"),
            None => tracing::info!("kv-store initialized without a key limit"),
        }
        Ok(())
    }

    async fn handle(&self, request: Request) -> PluginResult<Response> {
        let path = request.path.clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["kv"]) => Ok(self.list()),
            (_, ["kv"]) => Err(method_not_allowed(&request, "GET")),
            (method, ["kv", segment]) => {
                let key = param_or(&request, "key", segment)?.to_owned();
                match method {
                    "PUT" => self.put(&key, request),
                    "GET" => self.get(&key),
                    "DELETE" => self.delete(&key),
                    _ => Err(method_not_allowed(&request, "GET, PUT or DELETE")),
                }
            }
            ("POST", ["counter", segment]) => {
                let name = param_or(&request, "name", segment)?;
                let value = self.increment(name)?;
                Ok(Response::json(&json!({ "name": name, "value": value })))
            }
            (_, ["counter", _]) => Err(method_not_allowed(&request, "POST")),
            _ => Err(PluginError::NotFound(format!(
                "kv-store serves no {} {}",
                request.method, request.path
            ))),
        }
    }

    async fn health_check(&self) -> Health {
        let Some(max) = self.max_keys() else {
            return Health::Healthy;
        };
        let used = lock(&self.entries).len();
        // More than 90 % used, in integers: used / max > 9 / 10.
        if used.saturating_mul(10) > max.saturating_mul(9) {
            Health::Degraded(format!("{used} of {max} keys used"))
        } else {
            Health::Healthy
        }
    }
}

backworks_plugin_sdk::export_plugin!(
    KvStore,
    name = "kv-store",
    version = env!("CARGO_PKG_VERSION"),
    description = "in-memory key-value store and atomic counters"
);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn req(method: &str, path: &str) -> Request {
        let mut request = Request::new(method, path);
        let mut parts = path.trim_start_matches('/').split('/');
        match (parts.next(), parts.next()) {
            (Some("kv"), Some(key)) => request.params.push(("key".into(), key.into())),
            (Some("counter"), Some(name)) => request.params.push(("name".into(), name.into())),
            _ => {}
        }
        request
    }

    fn put(path: &str, body: &[u8]) -> Request {
        let mut request = req("PUT", path);
        request.body = body.to_vec();
        request
    }

    fn body_json(response: &Response) -> Value {
        backworks_plugin_sdk::serde_json::from_slice(&response.body).expect("JSON body")
    }

    async fn configured(config: Value) -> KvStore {
        let store = KvStore::default();
        store.initialize(config).await.unwrap();
        store
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let store = configured(Value::Null).await;
        let created = store.handle(put("/kv/a", b"one")).await.unwrap();
        assert_eq!(created.status, 201);
        assert_eq!(body_json(&created), json!({ "key": "a", "size": 3 }));

        let got = store.handle(req("GET", "/kv/a")).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body, b"one");
        assert_eq!(
            got.headers.get("content-type"),
            Some("application/octet-stream")
        );

        let mut replace = put("/kv/a", br#"{"n":2}"#);
        replace.headers.insert("content-type", "application/json");
        assert_eq!(store.handle(replace).await.unwrap().status, 200);
        let got = store.handle(req("GET", "/kv/a")).await.unwrap();
        assert_eq!(got.body, br#"{"n":2}"#);
        assert_eq!(got.headers.get("content-type"), Some("application/json"));

        let deleted = store.handle(req("DELETE", "/kv/a")).await.unwrap();
        assert_eq!(deleted.status, 204);
        assert!(deleted.body.is_empty());
        let err = store.handle(req("GET", "/kv/a")).await.unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.message(), r#"no key "a""#);
        let err = store.handle(req("DELETE", "/kv/a")).await.unwrap_err();
        assert_eq!(err.status(), 404);
    }

    #[tokio::test]
    async fn binary_values_round_trip() {
        let store = KvStore::default();
        let bytes: Vec<u8> = (0..=255).collect();
        store.handle(put("/kv/bin", &bytes)).await.unwrap();
        assert_eq!(
            store.handle(req("GET", "/kv/bin")).await.unwrap().body,
            bytes
        );
    }

    #[tokio::test]
    async fn list_is_sorted_with_count() {
        let store = KvStore::default();
        let empty = store.handle(req("GET", "/kv")).await.unwrap();
        assert_eq!(empty.body, br#"{"count":0,"keys":[]}"#);
        for key in ["pear", "apple", "fig"] {
            store
                .handle(put(&format!("/kv/{key}"), b"x"))
                .await
                .unwrap();
        }
        let listed = store.handle(req("GET", "/kv")).await.unwrap();
        assert_eq!(listed.status, 200);
        assert_eq!(
            body_json(&listed),
            json!({ "keys": ["apple", "fig", "pear"], "count": 3 })
        );
    }

    #[tokio::test]
    async fn counters_count_from_one() {
        let store = KvStore::default();
        for expected in 1..=3 {
            let response = store.handle(req("POST", "/counter/hits")).await.unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(
                body_json(&response),
                json!({ "name": "hits", "value": expected })
            );
        }
        let other = store.handle(req("POST", "/counter/misses")).await.unwrap();
        assert_eq!(body_json(&other)["value"], 1);
        // Counters are not keys.
        let listed = store.handle(req("GET", "/kv")).await.unwrap();
        assert_eq!(body_json(&listed)["count"], 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_lose_nothing() {
        const TASKS: u64 = 16;
        const PER_TASK: u64 = 500;
        let store = Arc::new(KvStore::default());
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..PER_TASK {
                    let response = store.handle(req("POST", "/counter/c")).await.unwrap();
                    seen.push(body_json(&response)["value"].as_u64().unwrap());
                    tokio::task::yield_now().await;
                }
                seen
            }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.extend(task.await.unwrap());
        }
        // Every value from 1 to N was handed out exactly once, and the final count is N.
        seen.sort_unstable();
        assert_eq!(seen, (1..=TASKS * PER_TASK).collect::<Vec<_>>());
        let last = store.handle(req("POST", "/counter/c")).await.unwrap();
        assert_eq!(body_json(&last)["value"], TASKS * PER_TASK + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_never_exceed_max_keys() {
        let store = Arc::new(configured(json!({ "max_keys": 50 })).await);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                match store.handle(put(&format!("/kv/k{i}"), b"v")).await {
                    Ok(response) => response.status,
                    Err(err) => err.status(),
                }
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        assert_eq!(statuses.iter().filter(|&&s| s == 201).count(), 50);
        assert_eq!(statuses.iter().filter(|&&s| s == 507).count(), 150);
        let listed = store.handle(req("GET", "/kv")).await.unwrap();
        assert_eq!(body_json(&listed)["count"], 50);
    }

    #[tokio::test]
    async fn full_store_answers_507_but_allows_replacing() {
        let store = configured(json!({ "max_keys": 2 })).await;
        store.handle(put("/kv/a", b"1")).await.unwrap();
        store.handle(put("/kv/b", b"2")).await.unwrap();
        let err = store.handle(put("/kv/c", b"3")).await.unwrap_err();
        assert_eq!(err.status(), 507);
        assert_eq!(err.kind(), "status");
        assert_eq!(
            err.message(),
            "the store is full (max_keys = 2); delete a key first"
        );
        assert_eq!(store.handle(put("/kv/a", b"1b")).await.unwrap().status, 200);
        store.handle(req("DELETE", "/kv/b")).await.unwrap();
        assert_eq!(store.handle(put("/kv/c", b"3")).await.unwrap().status, 201);
    }

    #[tokio::test]
    async fn degraded_above_ninety_percent() {
        let store = configured(json!({ "max_keys": 10 })).await;
        for i in 0..9 {
            store.handle(put(&format!("/kv/k{i}"), b"v")).await.unwrap();
        }
        // 9 of 10 is exactly 90 %: still healthy.
        assert_eq!(store.health_check().await, Health::Healthy);
        store.handle(put("/kv/k9", b"v")).await.unwrap();
        assert_eq!(
            store.health_check().await,
            Health::Degraded("10 of 10 keys used".into())
        );
        let unlimited = KvStore::default();
        unlimited.handle(put("/kv/a", b"v")).await.unwrap();
        assert_eq!(unlimited.health_check().await, Health::Healthy);
    }

    #[tokio::test]
    async fn bad_config_is_rejected() {
        for config in [
            json!({ "max_keys": 0 }),
            json!({ "max_keys": -1 }),
            json!({ "max_keys": "10" }),
            json!({ "max_key": 10 }),
            json!([10]),
        ] {
            let err = KvStore::default()
                .initialize(config.clone())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "config", "{config}: {err}");
        }
    }

    #[tokio::test]
    async fn unknown_routes_and_methods() {
        let store = KvStore::default();
        for (method, path, status) in [
            ("GET", "/", 404),
            ("GET", "/kv/a/b", 404),
            ("GET", "/counter", 404),
            ("PUT", "/kv/", 404),
            ("POST", "/kv", 405),
            ("POST", "/kv/a", 405),
            ("GET", "/counter/c", 405),
        ] {
            let err = store.handle(Request::new(method, path)).await.unwrap_err();
            assert_eq!(err.status(), status, "{method} {path}: {err}");
        }
    }
}
