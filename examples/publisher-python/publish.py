#!/usr/bin/env python3
"""Publish one event straight to Courier's courier.events exchange, with publisher
confirms, and say whether the broker accepted it (docs/publishing.md).

    pip install -r requirements.txt
    python3 publish.py --tenant acme
    python3 publish.py --tenant acme --id evt_123 --object-type Prospect \\
        --event-type EntityUpdated --data '{"objectId": "prospect_123"}' \\
        --properties-updated email,phone

Environment: COURIER_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
COURIER_PREFIX (default empty), COURIER_TENANT (default acme; --tenant wins), and
TRACEPARENT, a W3C trace context passed on in the traceparent header when set.

Exit status: 0 when the broker confirmed the event, 1 when it was not accepted
(publish it again with the same id), 2 for bad arguments.
"""

import argparse
import datetime
import json
import os
import sys
import uuid

import pika
import pika.exceptions


def parse_args():
    parser = argparse.ArgumentParser(description="Publish one event to Courier over AMQP.")
    parser.add_argument("--tenant", default=os.environ.get("COURIER_TENANT", "acme"))
    # The id is the dedupe key: generate it once, and reuse it on every retry.
    parser.add_argument("--id", default="evt_" + str(uuid.uuid4()))
    parser.add_argument("--object-type", default="Prospect")
    parser.add_argument("--event-type", default="EntityCreated")
    parser.add_argument(
        "--data",
        type=json.loads,
        default={"objectId": "prospect_123", "email": "jane@example.com"},
        help="the event's data, a JSON object",
    )
    parser.add_argument(
        "--properties-updated",
        type=lambda s: [f for f in s.split(",") if f],
        default=None,
        help="comma-separated names of the fields an update event changed",
    )
    return parser.parse_args()


def main():
    args = parse_args()
    url = os.environ.get("COURIER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    prefix = os.environ.get("COURIER_PREFIX", "")
    exchange = prefix + "courier.events"
    routing_key = "%s.%s.%s" % (args.tenant, args.object_type, args.event_type)
    body = json.dumps(
        {
            "id": args.id,
            "tenantId": args.tenant,
            "objectType": args.object_type,
            "eventType": args.event_type,
            "data": args.data,
            "propertiesUpdated": args.properties_updated,
            "occurredAt": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z"),
        }
    ).encode()
    headers = {}
    if os.environ.get("TRACEPARENT"):
        headers["traceparent"] = os.environ["TRACEPARENT"]
    properties = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,  # 2
        content_type="application/json",
        message_id=args.id,
        headers=headers or None,
    )
    target = "%s with routing key %s" % (exchange, routing_key)

    try:
        params = pika.URLParameters(url)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 10
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            # From here on basic_publish waits for the broker's ack and raises
            # on a nack or on a return (mandatory and unroutable).
            channel.confirm_delivery()
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        finally:
            if connection.is_open:
                connection.close()
    except pika.exceptions.UnroutableError:
        print(
            "not accepted: event %s was unroutable on %s (is Courier running with this "
            "prefix?); publish it again with the same id" % (args.id, target),
            file=sys.stderr,
        )
        return 1
    except pika.exceptions.NackError:
        print(
            "not accepted: the broker refused event %s; publish it again with the same id"
            % args.id,
            file=sys.stderr,
        )
        return 1
    except pika.exceptions.ChannelClosedByBroker as e:
        print(
            "not accepted: event %s: the broker closed the channel (%s %s)%s; publish it "
            "again with the same id"
            % (
                args.id,
                e.reply_code,
                e.reply_text,
                " - is Courier running with this prefix?" if e.reply_code == 404 else "",
            ),
            file=sys.stderr,
        )
        return 1
    except pika.exceptions.AMQPError as e:
        print(
            "not accepted: event %s (%r); it may or may not have arrived: publish it again "
            "with the same id" % (args.id, e),
            file=sys.stderr,
        )
        return 1
    print("accepted: event %s on %s" % (args.id, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
