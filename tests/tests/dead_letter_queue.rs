//! The operator's dead-letter queue, `courier.dead`: reading it again and again
//! never drops a parked message nor counts it as redelivered (a quorum queue drops
//! a message past its delivery limit, 20 by default on RabbitMQ 4), and requeueing
//! or discarding some messages leaves the others as they were.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_broker::dead::{ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER};
use courier_broker::lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use courier_broker::lapin::types::{AMQPValue, FieldTable};
use courier_broker::lapin::{BasicProperties, Channel};
use courier_broker::topology::{quorum_args, DEAD_REASON_HEADER};
use courier_tests::{prospect_created, Api, TestEnv, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Where RabbitMQ counts a quorum queue message's deliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// A message parked the way the worker parks one.
struct Parked {
    id: &'static str,
    body: Vec<u8>,
    reason: &'static str,
}

async fn park(env: &TestEnv, ch: &Channel, m: &Parked) {
    let mut headers = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(DEAD_REASON_HEADER.into(), text(m.reason));
    headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        text(&env.topology.events_exchange()),
    );
    headers.insert(
        ORIGINAL_ROUTING_KEY_HEADER.into(),
        text("acme.Prospect.EntityCreated"),
    );
    ch.basic_publish(
        &env.topology.dead_exchange(),
        "",
        BasicPublishOptions::default(),
        &m.body,
        BasicProperties::default()
            .with_message_id(m.id.into())
            .with_delivery_mode(2)
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn confirming_channel(env: &TestEnv) -> Channel {
    let ch = env.amqp.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// The listing's ids, checking that each message is shown as parked.
async fn listed(api: &Api, parked: &[&Parked]) -> Vec<String> {
    let (status, body) = api
        .get("/v1/admin/dead-letter-queue?limit=100", ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    for item in data {
        let m = parked
            .iter()
            .find(|m| item["id"] == m.id)
            .unwrap_or_else(|| panic!("an unknown message is listed: {item}"));
        let body: Value = serde_json::from_slice(&m.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.body).into_owned()));
        assert_eq!(item["body"], body);
        assert_eq!(item["reason"], m.reason);
        assert_eq!(item["routingKey"], "acme.Prospect.EntityCreated");
        assert_eq!(
            item["redelivered"], false,
            "listing hands nothing back: {item}"
        );
    }
    data.iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listing_the_dead_letter_queue_again_and_again_neither_drops_nor_redelivers_its_messages() {
    let env = TestEnv::new("dlq-listing").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let ch = confirming_channel(&env).await;
    let messages = [
        Parked {
            id: "evt_parked_1",
            body: prospect_created("evt_parked_1").to_string().into_bytes(),
            reason: "the event is invalid: data: required",
        },
        Parked {
            id: "garbage_2",
            body: b"not { json \xff".to_vec(),
            reason: "the body is not an event message",
        },
        Parked {
            id: "evt_parked_3",
            body: prospect_created("evt_parked_3").to_string().into_bytes(),
            reason: "the event is invalid: occurredAt",
        },
    ];
    for m in &messages {
        park(&env, &ch, m).await;
    }
    let all: Vec<&Parked> = messages.iter().collect();
    let in_order: Vec<String> = messages.iter().map(|m| m.id.to_owned()).collect();
    let dead_queue = env.topology.dead_queue();

    // Three times the delivery limit RabbitMQ 4 gives a quorum queue by default.
    for _ in 0..60 {
        assert_eq!(
            listed(&api, &all).await,
            in_order,
            "same messages, same order"
        );
    }
    assert_eq!(env.queue_depth(&dead_queue).await, 3, "no copy too many");
    // Two operators at once: one waits for the other.
    let (a, b) = tokio::join!(listed(&api, &all), listed(&api, &all));
    assert_eq!((a, b), (in_order.clone(), in_order.clone()));
    let (status, body) = api
        .get("/v1/admin/dead-letter-queue?limit=1", ADMIN_TOKEN)
        .await;
    assert_eq!((status, body["data"].as_array().unwrap().len()), (200, 1));
    assert_eq!(body["data"][0]["id"], "evt_parked_1");

    // Requeue one and discard another, by id: the third stays as it was.
    let (status, body) = api
        .post(
            "/v1/admin/dead-letter-queue/requeue",
            ADMIN_TOKEN,
            &json!({"ids": ["evt_parked_1"]}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"requeued": 1, "skipped": 0})));
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 1);
    let (status, body) = api
        .post(
            "/v1/admin/dead-letter-queue/discard",
            ADMIN_TOKEN,
            &json!({"ids": ["garbage_2"]}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"discarded": 1})));
    assert_eq!(listed(&api, &all).await, ["evt_parked_3"]);
    assert_eq!(env.queue_depth(&dead_queue).await, 1);

    // The broker never counted a delivery of what stayed: its headers are those it
    // was parked with.
    let got = ch
        .basic_get(&dead_queue, BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the message is still parked");
    assert_eq!(got.delivery.data, messages[2].body);
    assert!(!got.delivery.redelivered);
    let headers = got.delivery.properties.headers().clone().unwrap();
    let count = headers.inner().get(DELIVERY_COUNT_HEADER);
    assert!(
        matches!(count, None | Some(AMQPValue::LongLongInt(0))),
        "delivered {count:?} times before"
    );
    assert_eq!(
        headers.inner().get(DEAD_REASON_HEADER),
        Some(&AMQPValue::LongString(messages[2].reason.into()))
    );
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some("evt_parked_3")
    );

    let _ = ch.close(200, "done").await;
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_dead_letter_queue_with_a_low_delivery_limit_keeps_its_messages_however_often_it_is_listed(
) {
    let env = TestEnv::new("dlq-limit").await;
    // The queue as RabbitMQ 4 would have it (a limit of 20 by default), only lower:
    // declared before the gateway, which uses it as it is.
    let setup = env.amqp.create_channel().await.unwrap();
    let mut args = quorum_args();
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(3));
    setup
        .queue_declare(
            &env.topology.dead_queue(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let _ = setup.close(200, "declared").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let ch = confirming_channel(&env).await;
    let m = Parked {
        id: "evt_kept",
        body: prospect_created("evt_kept").to_string().into_bytes(),
        reason: "the event is invalid",
    };
    park(&env, &ch, &m).await;
    for i in 0..30 {
        assert_eq!(listed(&api, &[&m]).await, ["evt_kept"], "listing {i}");
    }
    assert_eq!(env.queue_depth(&env.topology.dead_queue()).await, 1);
    let _ = ch.close(200, "done").await;
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
