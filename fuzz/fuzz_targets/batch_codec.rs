//! The batch accumulator's encoding: any bytes, as a stored cut batch or a waiting
//! element, are read or refused without a panic; lengths frame any elements back
//! to themselves; and any JSON object as an event's `data` comes back out of a cut
//! batch as the same text, with its origin.
#![no_main]

use courier_core::event::EnvelopeEvent;
use courier_core::batch_codec::{
    decode_batch, decode_event, encode_event, frame, split_batch, EventOrigin,
};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|bytes: &[u8]| {
    // Stored bytes of any kind: read or refused.
    if let Ok(elements) = split_batch(bytes) {
        assert!(!elements.is_empty());
        // What was read frames back to what reads the same.
        let again = frame(elements.iter().copied());
        assert_eq!(split_batch(&again).unwrap(), elements);
    }
    let _ = decode_batch(bytes);
    let _ = decode_event(bytes);

    // Any elements, framed, split back to themselves.
    let parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    assert_eq!(split_batch(&frame(parts.iter().copied())).unwrap(), parts);

    // Any JSON object as data: encoded, placed, framed and decoded unchanged.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(data) = serde_json::from_str::<Box<RawValue>>(text) else {
        return;
    };
    if !data.get().starts_with('{') {
        return;
    }
    let event = EnvelopeEvent {
        event_id: courier_core::ids::EventId::parse("evt_fuzz").unwrap(),
        event_type: "EntityCreated".into(),
        object_type: "Prospect".into(),
        data,
        properties_updated: Some(vec![text.to_owned()]),
        occurred_at: chrono::DateTime::from_timestamp(1_776_939_300, 0).unwrap(),
    };
    let origins = [
        EventOrigin::default(),
        EventOrigin {
            accepted_at_ms: Some(u64::MAX),
            traceparent: Some(text.to_owned()),
            tracestate: Some(format!("{text}|%7C\n")),
        },
    ];
    let elements: Vec<Vec<u8>> = origins
        .iter()
        .enumerate()
        .map(|(i, origin)| {
            let element = encode_event(&event, origin).unwrap();
            format!("{i}|{element}").into_bytes()
        })
        .collect();
    let stored = frame(elements.iter().map(Vec::as_slice));
    let back = decode_batch(&stored).unwrap();
    assert_eq!(back.len(), origins.len());
    for (i, (waiting, origin)) in back.iter().zip(&origins).enumerate() {
        assert_eq!(waiting.placed_ms, i as u64);
        assert_eq!(&waiting.origin, origin);
        assert_eq!(waiting.event.data.get(), event.data.get());
        assert_eq!(waiting.event.properties_updated, event.properties_updated);
    }
});
