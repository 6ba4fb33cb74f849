//! The rules of a plugin's hook subscription: `hooks:`, `on_failure:`, `observe_queue:`.

use backworks_plugin_host::{Observer, OnFailure};

use super::{INVALID, integer};
use crate::config::error::ConfigError;
use crate::config::interpolate::Interpolator;
use crate::config::model::{RawPlugin, Text};

/// A plugin's checked hook subscription.
pub(super) struct Subscription {
    pub before_request: Option<OnFailure>,
    pub after_response: Option<OnFailure>,
    pub observe: bool,
    pub observe_queue: usize,
}

/// Longest observe queue accepted.
const MAX_QUEUE: usize = 1 << 20;

pub(super) fn subscription(
    ip: &Interpolator<'_>,
    n: &str,
    raw: &RawPlugin,
) -> Result<Subscription, ConfigError> {
    let (mut before, mut after, mut observe) = (false, false, false);
    let mut after_at = None;
    for hook in raw.hooks.iter().flatten() {
        let hook = ip.text(hook)?;
        let slot = match hook.value.as_str() {
            "before_request" => &mut before,
            "after_response" => {
                after_at = Some(hook.at);
                &mut after
            }
            "observe" => &mut observe,
            _ => {
                let message = format!(
                    "plugin `{n}` has unknown hook point {}; \
                     expected `before_request`, `after_response` or `observe`",
                    hook.quoted()
                );
                return Err(ip.error(INVALID, hook.at, message));
            }
        };
        if std::mem::replace(slot, true) {
            let message = format!("plugin `{n}` lists hook point `{}` twice", hook.value);
            return Err(ip.error(INVALID, hook.at, message));
        }
    }
    if let (true, Some(at)) = (observe, after_at) {
        let message = format!(
            "plugin `{n}` lists both `after_response` and `observe`: both are served by its \
             after_response hook; keep `after_response` to change responses, or `observe` to \
             see them off the response path"
        );
        return Err(ip.error(INVALID, at, message));
    }
    let (mut before_policy, mut after_policy) =
        (OnFailure::BEFORE_REQUEST, OnFailure::AFTER_RESPONSE);
    if let Some(on_failure) = &raw.on_failure {
        let points = [
            (
                &on_failure.before_request,
                before,
                "before_request",
                &mut before_policy,
            ),
            (
                &on_failure.after_response,
                after,
                "after_response",
                &mut after_policy,
            ),
        ];
        for (value, subscribed, point, policy) in points {
            let Some(value) = value else { continue };
            *policy = failure_policy(ip, n, point, value)?;
            if !subscribed {
                let expanded = ip.text(value)?;
                let message = format!(
                    "plugin `{n}` sets `on_failure.{point}` but its `hooks` do not list `{point}`"
                );
                return Err(ip.error(INVALID, expanded.at, message));
            }
        }
    }
    let observe_queue = match &raw.observe_queue {
        Some(number) => {
            let what = format!("`observe_queue` of plugin `{n}`");
            let queue: usize = integer(ip, number, &what, "a number from 1 to 1048576")?;
            if !(1..=MAX_QUEUE).contains(&queue) {
                let message = format!("{what} must be a number from 1 to 1048576, found {queue}");
                return Err(ip.error(INVALID, number.referenced, message));
            }
            queue
        }
        None => Observer::DEFAULT_QUEUE,
    };
    Ok(Subscription {
        before_request: before.then_some(before_policy),
        after_response: after.then_some(after_policy),
        observe,
        observe_queue,
    })
}

fn failure_policy(
    ip: &Interpolator<'_>,
    n: &str,
    point: &str,
    value: &Text,
) -> Result<OnFailure, ConfigError> {
    let value = ip.text(value)?;
    match value.value.as_str() {
        "reject" => Ok(OnFailure::Reject),
        "skip" => Ok(OnFailure::Skip),
        _ => {
            let message = format!(
                "`on_failure.{point}` of plugin `{n}` must be `reject` or `skip`, found {}",
                value.quoted()
            );
            Err(ip.error(INVALID, value.at, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{error, parse};
    use super::*;

    #[test]
    fn defaults_reject_before_and_skip_after() {
        let c = parse(
            "plugins:\n  p:\n    type: builtin\n    hooks: [before_request, after_response]\n",
        )
        .unwrap();
        let p = &c.plugins[0];
        assert_eq!(p.before_request, Some(OnFailure::Reject));
        assert_eq!(p.after_response, Some(OnFailure::Skip));
        assert!(!p.observe);
        assert_eq!(p.observe_queue, Observer::DEFAULT_QUEUE);
    }

    #[test]
    fn policies_and_observe_are_read() {
        let c = parse(
            "plugins:\n  p:\n    type: builtin\n    hooks: [before_request, after_response]\n    \
             on_failure: {before_request: skip, after_response: reject}\n  \
             o:\n    type: builtin\n    hooks: [observe]\n    observe_queue: 8\n",
        )
        .unwrap();
        assert_eq!(c.plugins[0].before_request, Some(OnFailure::Skip));
        assert_eq!(c.plugins[0].after_response, Some(OnFailure::Reject));
        assert!(c.plugins[1].observe && c.plugins[1].after_response.is_none());
        assert_eq!(c.plugins[1].observe_queue, 8);
    }

    #[test]
    fn bad_subscriptions_are_positioned_errors() {
        assert_eq!(
            error("plugins:\n  p:\n    hooks: [observe, after_response]\n"),
            "3:22: plugin `p` lists both `after_response` and `observe`: both are served by its \
             after_response hook; keep `after_response` to change responses, or `observe` to \
             see them off the response path"
        );
        assert_eq!(
            error(
                "plugins:\n  p:\n    hooks: [before_request]\n    on_failure: {before_request: open}\n"
            ),
            "4:34: `on_failure.before_request` of plugin `p` must be `reject` or `skip`, found `open`"
        );
        assert_eq!(
            error(
                "plugins:\n  p:\n    hooks: [before_request]\n    on_failure: {after_response: skip}\n"
            ),
            "4:34: plugin `p` sets `on_failure.after_response` but its `hooks` do not list `after_response`"
        );
        assert_eq!(
            error("plugins:\n  p:\n    hooks: [observe]\n    observe_queue: 0\n"),
            "4:20: `observe_queue` of plugin `p` must be a number from 1 to 1048576, found 0"
        );
    }
}
