//! Turning what the host reported into sentences a plugin author can act on.

use backworks_plugin_host::{CallError, HostError, PluginError, supported_sdk};

/// How a call ended, judged by the rules every check shares: an answer (a response, or the
/// plugin's own error below 500) is fine; a panic, a 5xx, a hang, a crash or an answer the host
/// refuses is not.
pub(crate) enum Verdict {
    /// Fine, and how it went (`answered 200 (17 bytes)`).
    Fine(String),
    /// Not fine, and why, for the author.
    Wrong(String),
}

/// Judges the outcome of `what` (`GET /hello/ana`) given its answer's status, or its error.
pub(crate) fn judge(what: &str, outcome: Result<u16, &CallError>) -> Verdict {
    match outcome {
        Ok(status) if (100..500).contains(&status) => Verdict::Fine(format!("answered {status}")),
        Ok(status) if status < 600 => Verdict::Wrong(format!(
            "{what} answered {status}: a server error from a plugin that is working; answer \
             4xx for a request it cannot serve, and return an error only when something broke"
        )),
        Ok(status) => Verdict::Wrong(format!(
            "{what} answered status {status}, which is not an HTTP status (100–599)"
        )),
        Err(CallError::Plugin(error)) if error.status() < 500 => Verdict::Fine(format!(
            "answered {} {}: {}",
            error.status(),
            error.kind(),
            error.message()
        )),
        Err(error) => Verdict::Wrong(call_failure(what, error)),
    }
}

/// Why `what` failed, for the author.
pub(crate) fn call_failure(what: &str, error: &CallError) -> String {
    match error {
        CallError::Plugin(PluginError::Panic(message)) => format!(
            "{what} panicked: the SDK caught the panic and the host answered 500, so one request \
             failed, but a plugin must return an error instead (PluginError::BadRequest for input \
             it cannot use); the panic message was: {message}"
        ),
        CallError::Plugin(error) => format!(
            "{what} failed with {} {}: {}",
            error.status(),
            error.kind(),
            error.message()
        ),
        CallError::Timeout(detail) => format!(
            "{what} hung: {detail}. A call must finish or fail: look for an await that never \
             completes, a lock held across an await, or a thread blocked (std::thread::sleep, \
             blocking I/O) in the plugin"
        ),
        CallError::Crashed(detail) => format!(
            "{what} crashed the plugin's process ({detail}): a segfault, an abort or an exit in \
             the plugin; in process it would have taken the host down"
        ),
        CallError::InvalidResponse(detail) => format!(
            "{what} answered something the host refuses ({detail}): a status outside 100–999, a \
             header that is not valid UTF-8 or HTTP, or a malformed protocol message"
        ),
        CallError::Unavailable(detail) => format!(
            "{what}: the plugin is unavailable ({detail}): its process died or never started"
        ),
        other => format!("{what} was refused by the host: {other}"),
    }
}

/// Why the plugin could not be started with `config`, for the author; `good` when it was the
/// config the plugin should accept.
pub(crate) fn start_failure(error: &HostError, good: bool) -> String {
    match error {
        HostError::Start {
            source: CallError::Plugin(PluginError::Panic(message)),
            ..
        } => format!(
            "initialize with the {} config panicked: a panic in initialize is turned into an \
             error by the SDK, but a plugin must return PluginError::Config for a config it \
             cannot use; the panic message was: {message}",
            if good { "good" } else { "bad" }
        ),
        HostError::Start {
            source: CallError::Plugin(error),
            ..
        } if good => format!(
            "initialize refused the config it was given: {} {}: {}. Pass the config the plugin \
             expects (Conformance::config, or --config)",
            error.status(),
            error.kind(),
            error.message()
        ),
        HostError::Start { source, .. } => call_failure("initialize", source),
        other => format!("the plugin could not be started: {other}{}", advice(other)),
    }
}

/// What to do about a load error, as a sentence starting with `; ` (or nothing).
pub(crate) fn advice(error: &HostError) -> String {
    let sdk = supported_sdk();
    let text = match error {
        HostError::NotALibrary { .. } => {
            "build the plugin as a shared library (Rust: crate-type = [\"cdylib\"]; C: -shared \
             -fPIC)"
                .to_owned()
        }
        HostError::NoMetadata { .. } | HostError::BadMetadata { .. } => {
            "a Rust plugin gets its metadata from export_plugin!; a C plugin declares it with \
             BW_PLUGIN_METADATA of backworks_plugin.h"
                .to_owned()
        }
        HostError::AbiMismatch { .. } | HostError::SdkMismatch { .. } => format!(
            "rebuild the plugin against a backworks-plugin-sdk this host loads ({sdk}), or use \
             a host of the plugin's SDK family"
        ),
        HostError::MissingSymbol { .. }
        | HostError::BadMagic { .. }
        | HostError::VtableTooSmall { .. }
        | HostError::MissingFunction { .. }
        | HostError::MetadataMismatch { .. } => {
            "the library must export the `backworks_plugin` vtable of the ABI it declares: \
             export_plugin! does it in Rust; in C fill every field as backworks_plugin.h says"
                .to_owned()
        }
        HostError::FileRefused { .. } => {
            "the host refuses files others could have changed: make the file and its folder \
             writable by their owner only"
                .to_owned()
        }
        _ => return String::new(),
    };
    format!("; {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_below_500_are_fine_and_server_errors_are_not() {
        assert!(matches!(judge("GET /", Ok(200)), Verdict::Fine(_)));
        assert!(matches!(judge("GET /", Ok(404)), Verdict::Fine(_)));
        let not_found = CallError::Plugin(PluginError::NotFound("no such key".into()));
        let Verdict::Fine(detail) = judge("GET /", Err(&not_found)) else {
            panic!("a 404 error is an answer")
        };
        assert_eq!(detail, "answered 404 not_found: no such key");
        assert!(matches!(judge("GET /", Ok(503)), Verdict::Wrong(_)));
        assert!(matches!(judge("GET /", Ok(1000)), Verdict::Wrong(_)));
    }

    #[test]
    fn a_panic_is_explained_with_its_message_and_the_fix() {
        let panic = CallError::Plugin(PluginError::Panic("index out of bounds".into()));
        let Verdict::Wrong(why) = judge("GET /x", Err(&panic)) else {
            panic!("a panic is wrong")
        };
        assert!(why.starts_with("GET /x panicked"), "{why}");
        assert!(why.contains("PluginError::BadRequest"), "{why}");
        assert!(why.ends_with("index out of bounds"), "{why}");
    }

    #[test]
    fn a_panicking_initialize_is_told_to_return_a_config_error() {
        let error = HostError::Start {
            plugin: "p".into(),
            source: CallError::Plugin(PluginError::Panic("boom".into())),
        };
        let why = start_failure(&error, false);
        assert!(
            why.starts_with("initialize with the bad config panicked"),
            "{why}"
        );
        assert!(why.contains("PluginError::Config"), "{why}");
        assert!(why.ends_with("boom"), "{why}");
    }

    #[test]
    fn a_hang_names_the_usual_causes() {
        let why = call_failure("health_check", &CallError::Timeout("no answer".into()));
        assert!(why.contains("hung") && why.contains("await"), "{why}");
    }
}
