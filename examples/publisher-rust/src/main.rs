//! Publishes one event straight to Courier's `courier.events` exchange and says
//! whether the broker accepted it.
//!
//! ```text
//! courier-example-publisher [--tenant ID] [--id EVENT_ID] [--object-type Prospect]
//!                           [--event-type EntityCreated] [--data JSON]
//! ```
//!
//! Environment: `COURIER_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! `COURIER_PREFIX` (default empty), `COURIER_TENANT` (default `acme`, `--tenant`
//! wins), and `TRACEPARENT`, a W3C trace context passed on in the `traceparent`
//! header when set.
//!
//! Exit status: 0 when the broker confirmed the event, 1 when it was not accepted
//! (publish it again with the same id), 2 for bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

/// How long to wait for the connection and for the broker's confirm.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    amqp_url: String,
    prefix: String,
    tenant: String,
    id: String,
    object_type: String,
    event_type: String,
    data: Value,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let mut args = Self {
            amqp_url: env("COURIER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefix: env("COURIER_PREFIX", ""),
            tenant: env("COURIER_TENANT", "acme"),
            // The id is the dedupe key: generate it once, and reuse it on every retry.
            id: format!("evt_{}", uuid::Uuid::now_v7()),
            object_type: "Prospect".into(),
            event_type: "EntityCreated".into(),
            data: json!({ "objectId": "prospect_123", "email": "jane@example.com" }),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--tenant" => args.tenant = value()?,
                "--id" => args.id = value()?,
                "--object-type" => args.object_type = value()?,
                "--event-type" => args.event_type = value()?,
                "--data" => {
                    args.data = serde_json::from_str(&value()?)
                        .map_err(|e| format!("--data is not JSON: {e}"))?;
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(args)
    }
}

/// What became of the publish.
enum Outcome {
    /// The broker routed the message to the intake queue and wrote it durably.
    Accepted,
    /// No queue is bound to the routing key (Courier's topology not declared yet, or
    /// another prefix): the broker returned the message.
    Unroutable,
    /// The broker refused the message.
    Nacked,
}

async fn publish(args: &Args) -> Result<Outcome, Box<dyn std::error::Error>> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name("courier-example-publisher".into());
    let conn = tokio::time::timeout(TIMEOUT, Connection::connect(&args.amqp_url, props)).await??;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let exchange = format!("{}courier.events", args.prefix);
    let routing_key = format!("{}.{}.{}", args.tenant, args.object_type, args.event_type);
    let body = serde_json::to_vec(&json!({
        "id": args.id,
        "tenantId": args.tenant,
        "objectType": args.object_type,
        "eventType": args.event_type,
        "data": args.data,
        "propertiesUpdated": null,
        "occurredAt": now_rfc3339(),
    }))?;
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2) // persistent
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(args.id.as_str()));
    if let Ok(traceparent) = std::env::var("TRACEPARENT") {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(traceparent.into()),
        );
        properties = properties.with_headers(headers);
    }

    let confirm = channel
        .basic_publish(
            &exchange,
            &routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            properties,
        )
        .await?;
    let outcome = match tokio::time::timeout(TIMEOUT, confirm).await?? {
        Confirmation::Ack(None) => Outcome::Accepted,
        Confirmation::Ack(Some(_returned)) => Outcome::Unroutable,
        Confirmation::Nack(_) | Confirmation::NotRequested => Outcome::Nacked,
    };
    let _ = channel.close(200, "done").await;
    let _ = conn.close(200, "done").await;
    Ok(outcome)
}

/// The current time as RFC 3339 UTC.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Unix seconds as RFC 3339 UTC, without pulling in a date crate.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or_default() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let target = format!(
        "{}courier.events with routing key {}.{}.{}",
        args.prefix, args.tenant, args.object_type, args.event_type
    );
    match publish(&args).await {
        Ok(Outcome::Accepted) => {
            println!("accepted: event {} on {target}", args.id);
            ExitCode::SUCCESS
        }
        Ok(Outcome::Unroutable) => {
            eprintln!(
                "not accepted: event {} was unroutable on {target} (is Courier running with this prefix?); publish it again with the same id",
                args.id
            );
            ExitCode::FAILURE
        }
        Ok(Outcome::Nacked) => {
            eprintln!(
                "not accepted: the broker refused event {}; publish it again with the same id",
                args.id
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "not accepted: event {} ({e}); it may or may not have arrived: publish it again with the same id",
                args.id
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_seconds_become_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_776_939_300), "2026-04-23T10:15:00Z");
    }
}
