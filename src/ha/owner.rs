//! Which retained discovery configs are this gateway's, and the order in which a change is
//! published.
//!
//! A config is ours when its device block names this gateway (`identifiers` or `via_device` is
//! `fieldbridge:{gateway}…`): never by topic, since `garage`'s node `garage_2_x` (device `2_x`)
//! is also `garage_2`'s (device `x`).
//!
//! Changes go out as one ordered sequence, so that Home Assistant keeps its entity ids and logs
//! nothing (homeassistant/components/mqtt/discovery.py and entity.py, 2025.4):
//!
//! - entity → device mode (HA's documented migration): `{"migrate_discovery": true}` on each old
//!   entity config (the entity is unloaded, its registry entry kept), the device config (the
//!   entity comes back under the same unique id, so with the same entity id), then the old
//!   configs removed.
//! - device → entity mode (HA's documented rollback): `migrate_discovery` on the device config,
//!   then the device config removed, then the entity configs. HA's removal of a device config
//!   removes every entity it has discovered under that node id, and in the layout of README "Topics"
//!   both modes share the node `{gateway}_{device}`: removed after the entity configs (HA's
//!   order) it would take the new entities (a "conflicting discovery message" warning each);
//!   removed when nothing is left under the node, HA warns "No device components to cleanup".
//!   So a placeholder device config with one throw-away entity goes first, and the removal
//!   takes only that.
//! - anything else of ours that is no longer configured is removed after the new configs are
//!   out.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value as Json, json};

use super::discovery::Message;
use super::entity::ids;

/// The gateway a discovery payload belongs to, if it is a fieldbridge one.
pub fn owner(payload: &Json) -> Option<&str> {
    let dev = payload.get("dev").or_else(|| payload.get("device"))?;
    if let Some(via) = dev.get("via_device").and_then(Json::as_str) {
        return ids::owner(via);
    }
    let identifiers = dev.get("identifiers").or_else(|| dev.get("ids"))?;
    let first = match identifiers {
        Json::Array(a) => a.first()?.as_str()?,
        Json::String(s) => s.as_str(),
        _ => return None,
    };
    ids::owner(first)
}

/// `{prefix}/device/{node}/config`: a device-mode topic.
pub fn is_device_topic(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .and_then(|t| t.strip_prefix("/device/"))
        .is_some_and(|rest| rest.split('/').count() == 2)
}

/// A retained message to publish: topic and payload (empty: remove).
pub type Step = (String, String);

fn migrate(topic: &str) -> Step {
    (
        topic.to_string(),
        json!({ "migrate_discovery": true }).to_string(),
    )
}

fn remove(topic: &str) -> Step {
    (topic.to_string(), String::new())
}

/// The device config that stands in for `old` while it is rolled back: its device and origin
/// with one throw-away copy of its first entity (same platform, so HA has it loaded and adds it
/// at once), new unique id, no suggested entity id.
fn placeholder(old: &Json) -> Option<Json> {
    let cmps = old.get("cmps")?.as_object()?;
    let (_, first) = cmps.iter().min_by(|a, b| a.0.cmp(b.0))?;
    let mut c = first.as_object()?.clone();
    let uid = c.get("unique_id")?.as_str()?.to_string();
    c.insert("unique_id".into(), json!(format!("{uid}:mode-switch")));
    c.insert("name".into(), json!("Switching discovery mode"));
    c.remove("object_id");
    c.remove("default_entity_id");
    let mut m = Map::new();
    for key in ["dev", "o", "availability", "availability_mode", "qos"] {
        if let Some(v) = old.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    m.insert("cmps".into(), json!({ "mode-switch": c }));
    Some(Json::Object(m))
}

/// The ordered messages that take the broker from `old` (configs of ours it holds) to `new`.
pub fn plan(prefix: &str, old: &[Message], new: &[Message]) -> Vec<Step> {
    let new_topics: HashSet<&str> = new.iter().map(|m| m.topic.as_str()).collect();
    let mut new_kind: HashMap<String, bool> = HashMap::new();
    for m in new {
        let device = is_device_topic(prefix, &m.topic);
        for uid in m.unique_ids() {
            new_kind.insert(uid, device);
        }
    }
    let mut before = Vec::new();
    let mut after = Vec::new();
    let under_prefix = format!("{prefix}/");
    for o in old
        .iter()
        .filter(|o| !new_topics.contains(o.topic.as_str()))
    {
        let device = is_device_topic(prefix, &o.topic);
        // Under another (an earlier) prefix a config is only removed.
        let switching = o.topic.starts_with(&under_prefix)
            && o.unique_ids()
                .iter()
                .any(|u| new_kind.get(u).is_some_and(|d| *d != device));
        match (switching, device) {
            (true, true) => {
                before.push(migrate(&o.topic));
                if let Some(p) = placeholder(&o.payload) {
                    before.push((o.topic.clone(), p.to_string()));
                }
                before.push(remove(&o.topic));
            }
            (true, false) => {
                before.push(migrate(&o.topic));
                after.push(remove(&o.topic));
            }
            (false, _) => after.push(remove(&o.topic)),
        }
    }
    let mut steps = before;
    steps.extend(new.iter().map(|m| (m.topic.clone(), m.payload.to_string())));
    steps.extend(after);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: Json) -> Message {
        Message {
            topic: topic.into(),
            payload,
        }
    }

    fn entity(node: &str, point: &str, uid: &str) -> Message {
        msg(
            &format!("ha/sensor/{node}/{point}/config"),
            json!({"unique_id": uid, "device": {"identifiers": ["fieldbridge:gw:d"], "via_device": "fieldbridge:gw"}}),
        )
    }

    fn device(node: &str, uids: &[&str]) -> Message {
        let cmps: Map<String, Json> = uids
            .iter()
            .map(|u| {
                (
                    format!("{u}-sensor"),
                    json!({"p": "sensor", "unique_id": u, "object_id": "x"}),
                )
            })
            .collect();
        msg(
            &format!("ha/device/{node}/config"),
            json!({"dev": {"identifiers": ["fieldbridge:gw:d"], "via_device": "fieldbridge:gw"}, "o": {"name": "fieldbridge"}, "cmps": cmps}),
        )
    }

    #[test]
    fn ownership_is_read_from_the_payload_not_the_topic() {
        let garage_2 = json!({"dev": {"identifiers": ["fieldbridge:garage_2:x"], "via_device": "fieldbridge:garage_2"}});
        assert_eq!(owner(&garage_2), Some("garage_2"));
        let gateway = json!({"device": {"identifiers": ["fieldbridge:garage"]}});
        assert_eq!(owner(&gateway), Some("garage"));
        let other = json!({"device": {"identifiers": ["zigbee2mqtt_0x00158d"], "via_device": "zigbee2mqtt_bridge_0x00"}});
        assert_eq!(owner(&other), None);
        assert_eq!(owner(&json!({"name": "no device"})), None);
    }

    #[test]
    fn entity_to_device_migrates_then_publishes_then_removes() {
        let old = vec![entity("gw_d", "a", "u:a"), entity("gw_d", "b", "u:b")];
        let new = vec![device("gw_d", &["u:a", "u:b"])];
        let steps = plan("ha", &old, &new);
        let topics: Vec<(&str, &str)> = steps
            .iter()
            .map(|(t, p)| {
                let kind = if p.is_empty() {
                    "remove"
                } else if p.contains("migrate_discovery") {
                    "migrate"
                } else {
                    "config"
                };
                (t.as_str(), kind)
            })
            .collect();
        assert_eq!(
            topics,
            vec![
                ("ha/sensor/gw_d/a/config", "migrate"),
                ("ha/sensor/gw_d/b/config", "migrate"),
                ("ha/device/gw_d/config", "config"),
                ("ha/sensor/gw_d/a/config", "remove"),
                ("ha/sensor/gw_d/b/config", "remove"),
            ]
        );
    }

    #[test]
    fn device_to_entity_clears_the_device_config_through_a_placeholder_first() {
        let old = vec![device("gw_d", &["u:a", "u:b"])];
        let new = vec![entity("gw_d", "a", "u:a"), entity("gw_d", "b", "u:b")];
        let steps = plan("ha", &old, &new);
        assert_eq!(steps.len(), 5);
        assert_eq!(steps[0].1, "{\"migrate_discovery\":true}");
        let placeholder: Json = serde_json::from_str(&steps[1].1).unwrap();
        assert_eq!(
            placeholder["cmps"]["mode-switch"]["unique_id"],
            "u:a:mode-switch"
        );
        assert!(
            placeholder["cmps"]["mode-switch"]
                .get("object_id")
                .is_none()
        );
        assert_eq!(steps[2], ("ha/device/gw_d/config".into(), String::new()));
        assert_eq!(steps[3].0, "ha/sensor/gw_d/a/config");
        assert_eq!(steps[4].0, "ha/sensor/gw_d/b/config");
    }

    #[test]
    fn configs_that_left_are_removed_after_the_new_ones() {
        let old = vec![entity("gw_d", "a", "u:a"), entity("gw_d", "gone", "u:gone")];
        let new = vec![entity("gw_d", "a", "u:a")];
        let steps = plan("ha", &old, &new);
        assert_eq!(
            steps
                .iter()
                .map(|(t, p)| (t.as_str(), p.is_empty()))
                .collect::<Vec<_>>(),
            vec![
                ("ha/sensor/gw_d/a/config", false),
                ("ha/sensor/gw_d/gone/config", true)
            ]
        );
        assert!(is_device_topic("ha", "ha/device/gw_d/config"));
        assert!(!is_device_topic("ha", "ha/sensor/gw_d/a/config"));
        assert!(!is_device_topic("ha", "ha/device/node/obj/config"));
    }
}
