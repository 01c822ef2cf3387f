//! Retry policy (design §4) and the delay ladder (design §5): pure decisions of when
//! the next attempt happens and which delay queue carries a job there.

use std::time::Duration;

/// The longest delay a retry schedule may list, and the longest a receiver's
/// `Retry-After` is honoured: a day. A later attempt is seldom of use, and the bound
/// keeps a job from waiting in the delay queues for longer.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Each wait before a retry is lengthened by a random part of up to this share of
/// it, so that the retries of deliveries that failed together (an endpoint that was
/// down) do not all come back at the same moment.
pub const JITTER: f64 = 0.2;

/// `delay` lengthened by `unit` × [`JITTER`] of itself (`unit` in `[0, 1]`, e.g.
/// drawn at random), never beyond [`MAX_RETRY_DELAY`] unless `delay` already is:
/// the schedule's delays and a `Retry-After` stay lower bounds.
pub fn jittered(delay: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let extra = delay.mul_f64(JITTER * unit);
    delay.saturating_add(extra).min(delay.max(MAX_RETRY_DELAY))
}

use serde::{Deserialize, Serialize};

use crate::errors::FieldErrors;

/// `schedule[i]` is the delay before attempt i+1, so `schedule[0]` is zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl Schedule {
    /// Parses `0s,1m,5m` (humantime durations, comma-separated).
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        Self::parse_items(&items)
    }

    pub fn parse_items<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let delays = items
            .iter()
            .map(|i| {
                humantime::parse_duration(i.as_ref())
                    .map_err(|e| format!("'{}' is not a duration: {e}", i.as_ref()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    pub fn new(delays: Vec<Duration>) -> Result<Self, String> {
        match delays.first() {
            None => Err("must list at least one delay".into()),
            Some(first) if !first.is_zero() => {
                Err("the first delay is before the first attempt and must be 0s".into())
            }
            Some(_) if delays.len() > 50 => Err("must list at most 50 delays".into()),
            Some(_) => Ok(Self(delays)),
        }
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The longest delay: the most a receiver's `Retry-After` is honoured.
    pub fn longest(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        items.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        Self::parse_items(&items).map_err(serde::de::Error::custom)
    }
}

/// The deployment's defaults: `COURIER_RETRY_SCHEDULE` and `COURIER_MAX_ATTEMPTS_LIMIT`.
#[derive(Debug, Clone)]
pub struct RetryDefaults {
    pub schedule: Schedule,
    pub max_attempts_limit: u32,
}

impl Default for RetryDefaults {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        Self {
            schedule: Schedule(vec![
                Duration::ZERO,
                minute,
                5 * minute,
                30 * minute,
                120 * minute,
            ]),
            max_attempts_limit: 5,
        }
    }
}

/// A webhook's own retry settings as stored: what it left out follows the deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default)]
    pub retry_client_errors: bool,
}

/// The body's `retryPolicy`, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryInput {
    /// Attempts in a series, at most the schedule's length and the deployment's limit.
    pub max_attempts: Option<i64>,
    /// Delays before each attempt (`schedule[0]` is `0s`), e.g. `["0s", "1m", "5m"]`;
    /// the deployment's default when absent. At most the deployment's attempt limit
    /// of delays, each at most 24h.
    #[cfg_attr(feature = "openapi", schema(example = json!(["0s", "1m", "5m", "30m", "2h"])))]
    pub schedule: Option<Vec<String>>,
    /// Retry 4xx answers other than 408 and 429 too.
    pub retry_client_errors: Option<bool>,
}

impl RetryInput {
    /// Validates against the deployment's limits, reporting under `retryPolicy.*`.
    pub fn validate(self, defaults: &RetryDefaults, errors: &mut FieldErrors) -> RetrySettings {
        let schedule = match self.schedule.as_deref().map(Schedule::parse_items) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                errors.add("retryPolicy.schedule", e);
                None
            }
        };
        let len = schedule.as_ref().unwrap_or(&defaults.schedule).len();
        let limit = defaults.max_attempts_limit;
        let max_attempts = self.max_attempts.and_then(|n| {
            match u32::try_from(n) {
                Ok(n) if n >= 1 && n <= limit && usize::try_from(n).is_ok_and(|n| n <= len) => {
                    return Some(n)
                }
                _ => {}
            }
            errors.add(
                "retryPolicy.maxAttempts",
                format!(
                    "must be from 1 to {} (the schedule's length, at most {limit})",
                    len.min(usize::try_from(limit).unwrap_or(usize::MAX))
                ),
            );
            None
        });
        if let Some(s) = &schedule {
            // Delays past the attempt limit could never be used.
            if s.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
                errors.add(
                    "retryPolicy.schedule",
                    format!(
                        "lists {} delays but at most {limit} attempts are allowed",
                        s.len()
                    ),
                );
            } else if s.longest() > MAX_RETRY_DELAY {
                errors.add(
                    "retryPolicy.schedule",
                    format!(
                        "delays must be at most {}h",
                        MAX_RETRY_DELAY.as_secs() / 3600
                    ),
                );
            }
        }
        RetrySettings {
            max_attempts,
            schedule,
            retry_client_errors: self.retry_client_errors.unwrap_or(false),
        }
    }
}

/// The policy in force for one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub schedule: Schedule,
    pub retry_client_errors: bool,
}

impl RetryPolicy {
    /// The webhook's settings over the deployment's defaults.
    pub fn effective(settings: &RetrySettings, defaults: &RetryDefaults) -> Self {
        let schedule = settings
            .schedule
            .clone()
            .unwrap_or_else(|| defaults.schedule.clone());
        let len = u32::try_from(schedule.len()).unwrap_or(u32::MAX);
        let max_attempts = settings
            .max_attempts
            .unwrap_or(len)
            .min(len)
            .min(defaults.max_attempts_limit)
            .max(1);
        Self {
            max_attempts,
            schedule,
            retry_client_errors: settings.retry_client_errors,
        }
    }

    /// The delay before the attempt after `attempt` (1-based), or `None` when
    /// `attempt` was the last. A receiver's `Retry-After` can lengthen the delay, up
    /// to the schedule's longest; neither goes beyond [`MAX_RETRY_DELAY`] (a
    /// schedule stored or configured before that bound is held to it here).
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let scheduled = *self.schedule.delays().get(usize::try_from(attempt).ok()?)?;
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(self.schedule.longest()));
        Some(scheduled.max(asked).min(MAX_RETRY_DELAY))
    }
}

/// The delay queues' TTLs (`COURIER_DELAY_LADDER`), shortest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayLadder(Vec<Duration>);

impl DelayLadder {
    /// Parses `1s,5s,30s` (humantime durations); sorts and removes duplicates.
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let mut rungs = s
            .split(',')
            .map(|i| {
                humantime::parse_duration(i.trim())
                    .map_err(|e| format!("'{}' is not a duration: {e}", i.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rungs.iter().any(|r| r.as_millis() == 0) {
            return Err("every rung must be at least 1ms".into());
        }
        rungs.sort();
        rungs.dedup();
        if rungs.is_empty() {
            return Err("must list at least one delay".into());
        }
        Ok(Self(rungs))
    }

    pub fn rungs(&self) -> &[Duration] {
        &self.0
    }

    /// The rung a job waiting `remaining` goes into: the largest not longer than it,
    /// or the smallest if none is. A job is thus never early, and at most one smallest
    /// rung late.
    pub fn rung_for(&self, remaining: Duration) -> Duration {
        self.0
            .iter()
            .rev()
            .find(|r| **r <= remaining)
            .or_else(|| self.0.first())
            .copied()
            .unwrap_or_default()
    }
}

impl Default for DelayLadder {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self(vec![
            s(1),
            s(5),
            s(30),
            s(60),
            s(300),
            s(1800),
            s(3600),
            s(7200),
            s(21600),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn defaults() -> RetryDefaults {
        RetryDefaults::default()
    }

    #[test]
    fn schedules_start_at_zero() {
        assert!(Schedule::parse_list("0s,1m,5m").is_ok());
        assert!(Schedule::parse_list("1s,1m").is_err());
        assert!(Schedule::parse_list("0s,soon").is_err());
        assert_eq!(
            Schedule::parse_list("0s, 200ms ,1s").unwrap().longest(),
            secs(1)
        );
    }

    #[test]
    fn the_default_policy_is_five_attempts_over_two_and_a_half_hours() {
        let p = RetryPolicy::effective(&RetrySettings::default(), &defaults());
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.next_delay(1, None), Some(secs(60)));
        assert_eq!(p.next_delay(4, None), Some(secs(7200)));
        assert_eq!(p.next_delay(5, None), None);
    }

    #[test]
    fn max_attempts_ends_the_series_early() {
        let settings = RetrySettings {
            max_attempts: Some(2),
            ..Default::default()
        };
        let p = RetryPolicy::effective(&settings, &defaults());
        assert_eq!(p.next_delay(1, None), Some(secs(60)));
        assert_eq!(p.next_delay(2, None), None);
    }

    #[test]
    fn retry_after_lengthens_a_delay_up_to_the_longest() {
        let settings = RetrySettings {
            schedule: Some(Schedule::parse_list("0s,1s,5s").unwrap()),
            ..Default::default()
        };
        let p = RetryPolicy::effective(&settings, &defaults());
        assert_eq!(p.next_delay(1, Some(secs(2))), Some(secs(2)));
        assert_eq!(p.next_delay(1, Some(secs(100))), Some(secs(5)));
        assert_eq!(p.next_delay(2, Some(secs(1))), Some(secs(5)));
    }

    #[test]
    fn delays_and_retry_after_are_held_to_a_day() {
        let settings = RetrySettings {
            // As stored before the bound: read, but not waited for in full.
            schedule: Some(Schedule::parse_list("0s,1s,100d").unwrap()),
            ..Default::default()
        };
        let p = RetryPolicy::effective(&settings, &defaults());
        assert_eq!(p.next_delay(2, None), Some(MAX_RETRY_DELAY));
        assert_eq!(p.next_delay(1, Some(secs(u64::MAX))), Some(MAX_RETRY_DELAY));
        let p = RetryPolicy::effective(&RetrySettings::default(), &defaults());
        assert_eq!(
            p.next_delay(1, Some(secs(365 * 24 * 3600))),
            Some(secs(7200)),
            "Retry-After is honoured up to the schedule's longest"
        );
    }

    #[test]
    fn jitter_only_lengthens_by_at_most_a_fifth() {
        let d = secs(100);
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, 1.0), secs(120));
        assert_eq!(jittered(d, 0.5), secs(110));
        for odd in [-3.0, 7.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let j = jittered(d, odd);
            assert!(j >= d && j <= secs(120), "{odd}: {j:?}");
        }
        assert_eq!(jittered(Duration::ZERO, 1.0), Duration::ZERO);
        assert_eq!(jittered(MAX_RETRY_DELAY, 1.0), MAX_RETRY_DELAY);
        assert_eq!(jittered(Duration::MAX, 1.0), Duration::MAX);
        let near = MAX_RETRY_DELAY - secs(60);
        assert_eq!(jittered(near, 1.0), MAX_RETRY_DELAY);
    }

    #[test]
    fn schedules_past_the_bounds_are_refused() {
        let check = |max_attempts: Option<i64>, schedule: &[&str]| {
            let mut errors = FieldErrors::default();
            RetryInput {
                max_attempts,
                schedule: Some(schedule.iter().map(|s| (*s).to_owned()).collect()),
                retry_client_errors: None,
            }
            .validate(&defaults(), &mut errors);
            errors.get("retryPolicy.schedule").map(str::to_owned)
        };
        assert_eq!(check(None, &["0s", "1m", "24h"]), None);
        assert_eq!(
            check(None, &["0s", "1m", "24h 1s"]).as_deref(),
            Some("delays must be at most 24h")
        );
        assert_eq!(
            check(Some(2), &["0s", "1s", "2s", "3s", "4s", "5s"]).as_deref(),
            Some("lists 6 delays but at most 5 attempts are allowed"),
            "even with maxAttempts, entries past the limit are refused"
        );
        assert_eq!(check(Some(2), &["0s", "1s", "2s", "3s", "4s"]), None);
    }

    #[test]
    fn input_is_checked_against_the_schedule_and_the_limit() {
        let mut errors = FieldErrors::default();
        RetryInput {
            max_attempts: Some(4),
            schedule: Some(vec!["0s".into(), "1s".into()]),
            retry_client_errors: None,
        }
        .validate(&defaults(), &mut errors);
        assert!(errors.get("retryPolicy.maxAttempts").is_some());

        let mut errors = FieldErrors::default();
        RetryInput {
            max_attempts: Some(6),
            schedule: None,
            retry_client_errors: None,
        }
        .validate(&defaults(), &mut errors);
        assert!(errors.get("retryPolicy.maxAttempts").is_some());

        let mut errors = FieldErrors::default();
        RetryInput {
            max_attempts: None,
            schedule: Some(vec!["5s".into()]),
            retry_client_errors: None,
        }
        .validate(&defaults(), &mut errors);
        assert!(errors.get("retryPolicy.schedule").is_some());

        let mut errors = FieldErrors::default();
        let s = RetryInput {
            max_attempts: Some(3),
            schedule: Some(vec!["0s".into(), "200ms".into(), "1s".into()]),
            retry_client_errors: Some(true),
        }
        .validate(&defaults(), &mut errors);
        assert!(errors.is_empty(), "{errors}");
        assert_eq!(s.max_attempts, Some(3));
        assert!(s.retry_client_errors);
    }

    #[test]
    fn jobs_take_the_largest_rung_not_longer_than_what_remains() {
        let ladder = DelayLadder::parse_list("100ms,200ms,500ms,1s").unwrap();
        let ms = Duration::from_millis;
        assert_eq!(ladder.rung_for(ms(50)), ms(100));
        assert_eq!(ladder.rung_for(ms(100)), ms(100));
        assert_eq!(ladder.rung_for(ms(499)), ms(200));
        assert_eq!(ladder.rung_for(secs(3)), secs(1));
        assert_eq!(DelayLadder::default().rung_for(secs(90)), secs(60));
        assert!(DelayLadder::parse_list("0s,1s").is_err());
        assert_eq!(
            DelayLadder::parse_list("5s,1s,5s").unwrap().rungs(),
            [secs(1), secs(5)]
        );
    }

    #[test]
    fn settings_round_trip_with_readable_durations() {
        let s = RetrySettings {
            max_attempts: Some(3),
            schedule: Some(Schedule::parse_list("0s,200ms,1m").unwrap()),
            retry_client_errors: true,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["schedule"], serde_json::json!(["0s", "200ms", "1m"]));
        assert_eq!(serde_json::from_value::<RetrySettings>(json).unwrap(), s);
    }
}
