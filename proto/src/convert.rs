//! Conversions between the generated messages and the Rust types used on both sides:
//! JSON values and protobuf `Struct`, chrono times and `Timestamp`, results, result trees,
//! criteria and devices.

use crate::v1;
use chrono::{DateTime, TimeZone, Utc};
use labwire_common::{Criteria, DeviceInfo, Health, NodeResult, TestNode};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Value as Json};

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(map_to_struct(o)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn map_to_struct(o: &Map<String, Json>) -> Struct {
    Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A protobuf `Value` as JSON. Whole numbers come back as integers.
pub fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_map(s)),
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn struct_to_map(s: &Struct) -> Map<String, Json> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

/// A time as a protobuf `Timestamp`.
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf `Timestamp` as a time; `None` when it is out of range.
pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single()
}

/// A result as its protobuf enum.
pub fn result_to_proto(r: Option<NodeResult>) -> v1::NodeResult {
    match r {
        None => v1::NodeResult::Unspecified,
        Some(NodeResult::Pass) => v1::NodeResult::Pass,
        Some(NodeResult::Fail) => v1::NodeResult::Fail,
        Some(NodeResult::Skip) => v1::NodeResult::Skip,
        Some(NodeResult::Incomplete) => v1::NodeResult::Incomplete,
    }
}

/// A protobuf result as a result; `None` for UNSPECIFIED or an unknown number.
pub fn result_from_proto(r: i32) -> Option<NodeResult> {
    match v1::NodeResult::try_from(r).ok()? {
        v1::NodeResult::Unspecified => None,
        v1::NodeResult::Pass => Some(NodeResult::Pass),
        v1::NodeResult::Fail => Some(NodeResult::Fail),
        v1::NodeResult::Skip => Some(NodeResult::Skip),
        v1::NodeResult::Incomplete => Some(NodeResult::Incomplete),
    }
}

/// A result tree as protobuf messages.
pub fn test_to_proto(t: &TestNode) -> v1::TestResult {
    v1::TestResult {
        name: t.name.clone(),
        result: result_to_proto(Some(t.result)) as i32,
        tests: t.tests.iter().map(test_to_proto).collect(),
        log_excerpt: t.log_excerpt.clone().unwrap_or_default(),
        measurement: t.measurement.unwrap_or_default(),
        has_measurement: t.measurement.is_some(),
        units: t.units.clone().unwrap_or_default(),
        error: t.error.clone().unwrap_or_default(),
    }
}

/// Protobuf test results as a result tree. A test with no valid result is `incomplete`.
pub fn test_from_proto(t: &v1::TestResult) -> TestNode {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    TestNode {
        name: t.name.clone(),
        result: result_from_proto(t.result).unwrap_or(NodeResult::Incomplete),
        tests: t.tests.iter().map(test_from_proto).collect(),
        log_excerpt: opt(&t.log_excerpt),
        measurement: t.has_measurement.then_some(t.measurement),
        units: opt(&t.units),
        error: opt(&t.error),
    }
}

/// Criteria as their protobuf message.
pub fn criteria_to_proto(c: &Criteria) -> v1::Criteria {
    v1::Criteria {
        device_type: c.device_type.clone().unwrap_or_default(),
        arch: c.arch.clone().unwrap_or_default(),
        driver: c.driver.clone().unwrap_or_default(),
        properties: c.properties.clone().into_iter().collect(),
        features: c.features.clone(),
        tags: c.tags.clone(),
        devices: c.devices.clone(),
        avoid_device_types: c.avoid_device_types.clone(),
        avoid_devices: c.avoid_devices.clone(),
    }
}

/// Protobuf criteria as criteria (empty strings mean "not set").
pub fn criteria_from_proto(c: &v1::Criteria) -> Criteria {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Criteria {
        device_type: opt(&c.device_type),
        arch: opt(&c.arch),
        driver: opt(&c.driver),
        properties: c.properties.clone().into_iter().collect(),
        features: c.features.clone(),
        tags: c.tags.clone(),
        devices: c.devices.clone(),
        avoid_device_types: c.avoid_device_types.clone(),
        avoid_devices: c.avoid_devices.clone(),
    }
}

/// A health as its protobuf enum.
pub fn health_to_proto(h: Health) -> v1::DeviceHealth {
    match h {
        Health::Good => v1::DeviceHealth::Good,
        Health::Unknown => v1::DeviceHealth::Unknown,
        Health::Bad => v1::DeviceHealth::Bad,
        Health::Maintenance => v1::DeviceHealth::Maintenance,
        Health::Retired => v1::DeviceHealth::Retired,
    }
}

/// A protobuf health as a health (unspecified or unknown numbers are `Unknown`).
pub fn health_from_proto(h: i32) -> Health {
    match v1::DeviceHealth::try_from(h) {
        Ok(v1::DeviceHealth::Good) => Health::Good,
        Ok(v1::DeviceHealth::Bad) => Health::Bad,
        Ok(v1::DeviceHealth::Maintenance) => Health::Maintenance,
        Ok(v1::DeviceHealth::Retired) => Health::Retired,
        _ => Health::Unknown,
    }
}

/// A device description as its protobuf message.
pub fn device_to_proto(d: &DeviceInfo, busy: bool) -> v1::Device {
    v1::Device {
        name: d.name.clone(),
        device_type: d.device_type.clone(),
        driver: d.driver.clone(),
        properties: d.properties.clone().into_iter().collect(),
        features: d.features.clone(),
        tags: d.tags.clone(),
        health: health_to_proto(d.health) as i32,
        busy,
        count: 1,
        health_reason: d.health_reason.clone(),
        last_check: d.last_check,
        failure_streak: d.failure_streak,
    }
}

/// A protobuf device as a device description.
pub fn device_from_proto(d: &v1::Device) -> DeviceInfo {
    DeviceInfo {
        name: d.name.clone(),
        device_type: d.device_type.clone(),
        driver: d.driver.clone(),
        properties: d.properties.clone().into_iter().collect(),
        features: d.features.clone(),
        tags: d.tags.clone(),
        health: health_from_proto(d.health),
        health_reason: d.health_reason.clone(),
        last_check: d.last_check,
        failure_streak: d.failure_streak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x", 1.5], "c": {"d": "e"}});
        let s = map_to_struct(v.as_object().unwrap());
        assert_eq!(Json::Object(struct_to_map(&s)), v);
    }

    #[test]
    fn tree_round_trip() {
        let mut leaf = TestNode::leaf("t", NodeResult::Fail);
        leaf.measurement = Some(2.5);
        leaf.units = Some("ms".into());
        let tree = TestNode::group("suite", vec![leaf]);
        assert_eq!(test_from_proto(&test_to_proto(&tree)), tree);
    }
}
