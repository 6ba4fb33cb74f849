//! The fixture's configuration: the document as written ([`FaultyConfig`]) and the checked
//! [`Settings`] it turns into, with errors that name the offending field.

use std::fmt;
use std::time::Duration;

use backworks_plugin_sdk::ErrorKind;
use backworks_plugin_sdk::prelude::*;
use serde::Deserialize;

/// The fields that choose a behaviour; an instance sets at most one of them.
const BEHAVIOUR_FIELDS: [&str; 13] = [
    "error",
    "sleep_ms",
    "block_ms",
    "body_bytes",
    "bad_header",
    "respond_status",
    "fail_first",
    "segfault",
    "abort",
    "exit",
    "spin",
    "hog_mb",
    "crash_on_init",
];

/// The error kinds `error.kind` accepts: every [`ErrorKind`] a plugin can return, by name.
pub fn error_kinds() -> impl Iterator<Item = &'static str> {
    ErrorKind::ALL.iter().map(|kind| kind.name())
}

/// The configuration as written in `backworks.yaml`. See the crate docs for what each field does.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultyConfig {
    /// Every call fails with this error.
    pub error: Option<ErrorConfig>,
    /// Every call awaits a tokio sleep of this many milliseconds, then goes on.
    pub sleep_ms: Option<u64>,
    /// Every call blocks its thread this many milliseconds, then goes on.
    pub block_ms: Option<u64>,
    /// Every call answers 200 with a body of this many bytes.
    pub body_bytes: Option<usize>,
    /// Every call answers 200 with a header value holding a line feed.
    #[serde(default)]
    pub bad_header: bool,
    /// Every call answers (not fails with) a response of this status.
    pub respond_status: Option<u16>,
    /// The first this-many calls fail with an internal error, later ones go on.
    pub fail_first: Option<u64>,
    /// Process isolation only: the call raises `SIGSEGV`.
    #[serde(default)]
    pub segfault: bool,
    /// Process isolation only: the call aborts the process.
    #[serde(default)]
    pub abort: bool,
    /// Process isolation only: the call exits the process with this status.
    pub exit: Option<i32>,
    /// Process isolation only: the call spins on its thread forever.
    #[serde(default)]
    pub spin: bool,
    /// Every call allocates and keeps this many more MiB (aborts the process past its limit).
    pub hog_mb: Option<usize>,
    /// Process isolation only: `initialize` exits the process with status 3.
    #[serde(default)]
    pub crash_on_init: bool,
    /// Only requests whose path ends with this misbehave; the others answer normally.
    pub only_path_suffix: Option<String>,
    /// The methods that misbehave; default `[handle]`.
    pub apply_to: Option<Vec<Method>>,
    /// What `health_check` reports; default `healthy`.
    pub health: Option<HealthSetting>,
    /// `health_check` awaits a tokio sleep of this many milliseconds before it reports.
    pub health_delay_ms: Option<u64>,
    /// Process isolation only: `initialize` leaves a `setsid` daemon behind that appends its pid
    /// to this file.
    pub spawn_daemon: Option<String>,
}

/// The `error:` field: the error every call returns.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorConfig {
    /// HTTP status, 400–599. Alone, it makes a [`PluginError::Status`].
    pub status: Option<u16>,
    /// One of [`error_kinds`]; default `internal`, or `status` when `status` is set.
    pub kind: Option<String>,
    /// The error's message; required.
    pub message: Option<String>,
}

/// A plugin method a behaviour can apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The endpoint call.
    Handle,
    /// The hook before the endpoint.
    BeforeRequest,
    /// The hook after the endpoint.
    AfterResponse,
}

impl Method {
    /// The method's name, as written in config.
    pub fn name(self) -> &'static str {
        match self {
            Method::Handle => "handle",
            Method::BeforeRequest => "before_request",
            Method::AfterResponse => "after_response",
        }
    }
}

/// What `health_check` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthSetting {
    /// [`Health::Healthy`].
    #[default]
    Healthy,
    /// [`Health::Degraded`] with [`crate::DEGRADED_MESSAGE`].
    Degraded,
    /// [`Health::Unhealthy`] with [`crate::UNHEALTHY_MESSAGE`].
    Unhealthy,
}

/// The one thing an instance does wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Nothing: every call answers normally.
    None,
    /// Fail with this error.
    Error(PluginError),
    /// Await a tokio sleep, then go on.
    Sleep(Duration),
    /// Block the thread, then go on.
    Block(Duration),
    /// Answer 200 with a body of this many bytes.
    Body(usize),
    /// Answer 200 with an invalid header value.
    BadHeader,
    /// Answer a response of this status.
    RespondStatus(u16),
    /// Fail the first this-many calls.
    FailFirst(u64),
    /// Raise `SIGSEGV`.
    Segfault,
    /// Abort the process.
    Abort,
    /// Exit the process with this status.
    Exit(i32),
    /// Spin forever.
    Spin,
    /// Allocate and keep this many more MiB.
    Hog(usize),
    /// Exit with status 3 in `initialize`.
    CrashOnInit,
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::None => write!(f, "none"),
            Behaviour::Error(e) => write!(f, "error={} {} {:?}", e.kind(), e.status(), e.message()),
            Behaviour::Sleep(d) => write!(f, "sleep_ms={}", d.as_millis()),
            Behaviour::Block(d) => write!(f, "block_ms={}", d.as_millis()),
            Behaviour::Body(n) => write!(f, "body_bytes={n}"),
            Behaviour::BadHeader => write!(f, "bad_header"),
            Behaviour::RespondStatus(s) => write!(f, "respond_status={s}"),
            Behaviour::FailFirst(n) => write!(f, "fail_first={n}"),
            Behaviour::Segfault => write!(f, "segfault"),
            Behaviour::Abort => write!(f, "abort"),
            Behaviour::Exit(code) => write!(f, "exit={code}"),
            Behaviour::Spin => write!(f, "spin"),
            Behaviour::Hog(mb) => write!(f, "hog_mb={mb}"),
            Behaviour::CrashOnInit => write!(f, "crash_on_init"),
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What goes wrong.
    pub behaviour: Behaviour,
    /// In which methods; never empty.
    pub apply_to: Vec<Method>,
    /// For which paths; `None`: every path.
    pub only_path_suffix: Option<String>,
    /// What `health_check` reports.
    pub health: HealthSetting,
    /// How long `health_check` waits before it reports.
    pub health_delay: Duration,
    /// Where the daemon `initialize` leaves behind writes its pid, if it leaves one.
    pub spawn_daemon: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            behaviour: Behaviour::None,
            apply_to: vec![Method::Handle],
            only_path_suffix: None,
            health: HealthSetting::Healthy,
            health_delay: Duration::ZERO,
            spawn_daemon: None,
        }
    }
}

impl Settings {
    /// Reads and checks a plugin config (`null` gives the defaults). Every error is a
    /// [`PluginError::Config`] naming the field at fault.
    pub fn parse(config: Value) -> PluginResult<Settings> {
        let raw: FaultyConfig =
            parse_config(config.clone()).map_err(|err| name_the_field(&config, err))?;
        raw.check()
    }

    /// Whether a call of `method` on `path` misbehaves.
    pub fn applies(&self, method: Method, path: &str) -> bool {
        self.apply_to.contains(&method)
            && self
                .only_path_suffix
                .as_deref()
                .is_none_or(|suffix| path.ends_with(suffix))
    }
}

impl fmt::Display for Settings {
    /// `sleep_ms=500 in handle for paths ending in "/slow", health healthy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<&str> = self.apply_to.iter().map(|m| m.name()).collect();
        write!(f, "{} in {}", self.behaviour, methods.join(","))?;
        if let Some(suffix) = &self.only_path_suffix {
            write!(f, " for paths ending in {suffix:?}")?;
        }
        let health = match self.health {
            HealthSetting::Healthy => "healthy",
            HealthSetting::Degraded => "degraded",
            HealthSetting::Unhealthy => "unhealthy",
        };
        write!(f, ", health {health}")?;
        if !self.health_delay.is_zero() {
            write!(f, " after {} ms", self.health_delay.as_millis())?;
        }
        Ok(())
    }
}

impl FaultyConfig {
    /// The names of the behaviour fields that are set.
    fn behaviours_set(&self) -> Vec<&'static str> {
        let set = [
            self.error.is_some(),
            self.sleep_ms.is_some(),
            self.block_ms.is_some(),
            self.body_bytes.is_some(),
            self.bad_header,
            self.respond_status.is_some(),
            self.fail_first.is_some(),
            self.segfault,
            self.abort,
            self.exit.is_some(),
            self.spin,
            self.hog_mb.is_some(),
            self.crash_on_init,
        ];
        BEHAVIOUR_FIELDS
            .iter()
            .zip(set)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect()
    }

    /// Turns the document into [`Settings`], or says which field is wrong.
    fn check(self) -> PluginResult<Settings> {
        let set = self.behaviours_set();
        if set.len() > 1 {
            return Err(config_error(format!(
                "one behaviour per instance, found `{}`",
                set.join("` and `")
            )));
        }
        let behaviour = if let Some(error) = self.error {
            Behaviour::Error(error.check()?)
        } else if let Some(ms) = self.sleep_ms {
            Behaviour::Sleep(Duration::from_millis(ms))
        } else if let Some(ms) = self.block_ms {
            Behaviour::Block(Duration::from_millis(ms))
        } else if let Some(n) = self.body_bytes {
            Behaviour::Body(n)
        } else if self.bad_header {
            Behaviour::BadHeader
        } else if let Some(status) = self.respond_status {
            Behaviour::RespondStatus(status)
        } else if let Some(n) = self.fail_first {
            Behaviour::FailFirst(n)
        } else if self.segfault {
            Behaviour::Segfault
        } else if self.abort {
            Behaviour::Abort
        } else if let Some(code) = self.exit {
            Behaviour::Exit(code)
        } else if self.spin {
            Behaviour::Spin
        } else if let Some(mb) = self.hog_mb {
            Behaviour::Hog(mb)
        } else if self.crash_on_init {
            Behaviour::CrashOnInit
        } else {
            Behaviour::None
        };
        let apply_to = match self.apply_to {
            None => vec![Method::Handle],
            Some(methods) if methods.is_empty() => {
                return Err(config_error(
                    "field `apply_to`: name at least one of `handle`, `before_request`, \
                     `after_response`"
                        .to_owned(),
                ));
            }
            Some(methods) => methods,
        };
        if self.only_path_suffix.as_deref() == Some("") {
            return Err(config_error(
                "field `only_path_suffix`: must not be empty (leave it out to match every path)"
                    .to_owned(),
            ));
        }
        Ok(Settings {
            behaviour,
            apply_to,
            only_path_suffix: self.only_path_suffix,
            health: self.health.unwrap_or_default(),
            health_delay: Duration::from_millis(self.health_delay_ms.unwrap_or(0)),
            spawn_daemon: self.spawn_daemon.clone(),
        })
    }
}

impl ErrorConfig {
    /// The error this config describes.
    fn check(self) -> PluginResult<PluginError> {
        let message = match self.message {
            Some(m) if !m.is_empty() => m,
            _ => {
                return Err(config_error(
                    "field `error.message`: required, a non-empty string".to_owned(),
                ));
            }
        };
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(config_error(format!(
                "field `error.status`: {status} is not an error status (400-599)"
            )));
        }
        let kind = self.kind.as_deref().unwrap_or(match self.status {
            Some(_) => "status",
            None => "internal",
        });
        let Some(error_kind) = ErrorKind::from_name(kind) else {
            let known: Vec<_> = error_kinds().collect();
            return Err(config_error(format!(
                "field `error.kind`: unknown kind `{kind}`, expected one of `{}`",
                known.join("`, `")
            )));
        };
        if error_kind == ErrorKind::Status && self.status.is_none() {
            return Err(config_error(
                "field `error.status`: required with kind `status`".to_owned(),
            ));
        }
        let error = PluginError::new(error_kind, self.status.unwrap_or(500), message);
        if let Some(status) = self.status
            && status != error.status()
        {
            return Err(config_error(format!(
                "field `error.status`: {status} does not match kind `{kind}` ({})",
                error.status()
            )));
        }
        Ok(error)
    }
}

fn config_error(message: String) -> PluginError {
    PluginError::Config(message)
}

/// serde names an unknown field but neither the field of a value of the wrong type nor the outer
/// field of a nested error: find the field by reading each one of `config` alone, and say
/// `field `x`: ...`.
fn name_the_field(config: &Value, err: PluginError) -> PluginError {
    if let Value::Object(map) = config {
        for (key, value) in map {
            let single = Value::Object([(key.clone(), value.clone())].into_iter().collect());
            if let Err(e) = serde_json::from_value::<FaultyConfig>(single) {
                let message = e.to_string();
                if message.starts_with(&format!("unknown field `{key}`")) {
                    return config_error(message);
                }
                return config_error(format!("field `{key}`: {message}"));
            }
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_message(config: Value) -> String {
        match Settings::parse(config.clone()) {
            Err(PluginError::Config(message)) => message,
            other => panic!("{config}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn null_and_empty_configs_misbehave_in_no_way() {
        for config in [Value::Null, json!({})] {
            let settings = Settings::parse(config).unwrap();
            assert_eq!(settings, Settings::default());
            assert_eq!(settings.to_string(), "none in handle, health healthy");
        }
    }

    #[test]
    fn each_behaviour_field_is_read() {
        let cases = [
            (
                json!({"sleep_ms": 250}),
                Behaviour::Sleep(Duration::from_millis(250)),
            ),
            (
                json!({"block_ms": 7}),
                Behaviour::Block(Duration::from_millis(7)),
            ),
            (json!({"body_bytes": 1024}), Behaviour::Body(1024)),
            (json!({"bad_header": true}), Behaviour::BadHeader),
            (
                json!({"respond_status": 503}),
                Behaviour::RespondStatus(503),
            ),
            (json!({"fail_first": 3}), Behaviour::FailFirst(3)),
            (json!({"segfault": true}), Behaviour::Segfault),
            (json!({"abort": true}), Behaviour::Abort),
            (json!({"exit": 1}), Behaviour::Exit(1)),
            (json!({"spin": true}), Behaviour::Spin),
            (json!({"hog_mb": 64}), Behaviour::Hog(64)),
            (json!({"crash_on_init": true}), Behaviour::CrashOnInit),
            // `false` switches a flag off rather than choosing it.
            (
                json!({"segfault": false, "sleep_ms": 1}),
                Behaviour::Sleep(Duration::from_millis(1)),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(
                Settings::parse(config.clone()).unwrap().behaviour,
                expected,
                "{config}"
            );
        }
    }

    #[test]
    fn errors_default_to_internal_and_follow_kind_and_status() {
        let error = |e: Value| match Settings::parse(json!({ "error": e })).unwrap().behaviour {
            Behaviour::Error(err) => err,
            other => panic!("not an error behaviour: {other:?}"),
        };
        assert_eq!(
            error(json!({"message": "boom"})),
            PluginError::Internal("boom".into())
        );
        assert_eq!(
            error(json!({"status": 418, "message": "teapot"})),
            PluginError::Status {
                status: 418,
                message: "teapot".into()
            }
        );
        assert_eq!(
            error(json!({"kind": "not_found", "message": "gone"})),
            PluginError::NotFound("gone".into())
        );
        assert_eq!(
            error(json!({"kind": "unavailable", "status": 503, "message": "down"})),
            PluginError::Unavailable("down".into())
        );
        assert_eq!(
            error(json!({"kind": "status", "status": 502, "message": "bad gateway"})),
            PluginError::Status {
                status: 502,
                message: "bad gateway".into()
            }
        );
    }

    #[test]
    fn scope_and_health_are_read_and_shown() {
        let settings = Settings::parse(json!({
            "exit": 1,
            "only_path_suffix": "/bad",
            "apply_to": ["handle", "before_request"],
            "health": "unhealthy",
            "health_delay_ms": 5000,
        }))
        .unwrap();
        assert_eq!(
            settings.apply_to,
            vec![Method::Handle, Method::BeforeRequest]
        );
        assert!(settings.applies(Method::Handle, "/x/bad"));
        assert!(settings.applies(Method::BeforeRequest, "/bad"));
        assert!(!settings.applies(Method::Handle, "/x/good"));
        assert!(!settings.applies(Method::AfterResponse, "/x/bad"));
        assert_eq!(settings.health, HealthSetting::Unhealthy);
        assert_eq!(settings.health_delay, Duration::from_secs(5));
        assert_eq!(
            settings.to_string(),
            "exit=1 in handle,before_request for paths ending in \"/bad\", health unhealthy after \
             5000 ms"
        );
        let error = Settings::parse(json!({"error": {"message": "boom"}})).unwrap();
        assert_eq!(
            error.to_string(),
            "error=internal 500 \"boom\" in handle, health healthy"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (json!({"slep_ms": 5}), "unknown field `slep_ms`"),
            (
                json!({"sleep_ms": "five"}),
                "field `sleep_ms`: invalid type: string \"five\"",
            ),
            (json!({"sleep_ms": -1}), "field `sleep_ms`: invalid value"),
            (
                json!({"bad_header": "yes"}),
                "field `bad_header`: invalid type",
            ),
            (
                json!({"health": "sick"}),
                "field `health`: unknown variant `sick`",
            ),
            (
                json!({"apply_to": ["handle", "shutdown"]}),
                "field `apply_to`: unknown variant `shutdown`",
            ),
            (
                json!({"apply_to": []}),
                "field `apply_to`: name at least one",
            ),
            (
                json!({"only_path_suffix": ""}),
                "field `only_path_suffix`: must not be empty",
            ),
            (
                json!({"error": {"mesage": "x"}}),
                "field `error`: unknown field `mesage`",
            ),
            (json!({"error": {}}), "field `error.message`: required"),
            (
                json!({"error": {"kind": "oops", "message": "x"}}),
                "field `error.kind`: unknown kind `oops`",
            ),
            (
                json!({"error": {"status": 200, "message": "x"}}),
                "field `error.status`: 200 is not an error status",
            ),
            (
                json!({"error": {"kind": "status", "message": "x"}}),
                "field `error.status`: required with kind `status`",
            ),
            (
                json!({"error": {"kind": "internal", "status": 404, "message": "x"}}),
                "field `error.status`: 404 does not match kind `internal` (500)",
            ),
            (
                json!({"sleep_ms": 5, "error": {"message": "x"}}),
                "one behaviour per instance, found `error` and `sleep_ms`",
            ),
            (json!([1]), "config must be a map"),
            (json!("sleep"), "config must be a map"),
        ];
        for (config, expected) in cases {
            let message = config_message(config.clone());
            assert!(
                message.contains(expected),
                "{config}: {message:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn every_listed_error_kind_is_accepted() {
        for kind in error_kinds() {
            let status = (kind == "status").then_some(599);
            let settings =
                Settings::parse(json!({"error": {"kind": kind, "status": status, "message": "m"}}))
                    .unwrap_or_else(|e| panic!("{kind}: {e}"));
            match settings.behaviour {
                Behaviour::Error(err) => assert_eq!(err.kind(), kind),
                other => panic!("{kind}: {other:?}"),
            }
        }
    }
}
