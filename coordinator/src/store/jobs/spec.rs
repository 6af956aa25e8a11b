//! What a job asks for, checked before it is queued: the spec's fields (name, artifacts,
//! parser, parameter names), and the parts of it shown in the job node's data.

use crate::error::{Error, Result};
use labwire_common::Criteria;
use labwire_proto::v1;
use serde_json::{Map, Value, json};

/// The spec's visible parts as node data, for people reading the node.
pub(super) fn spec_data(spec: &v1::JobSpec, criteria: &Criteria) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "criteria".into(),
        serde_json::to_value(criteria).unwrap_or_default(),
    );
    if !spec.params.is_empty() {
        m.insert("params".into(), json!(spec.params));
    }
    if !spec.commands.is_empty() {
        m.insert("commands".into(), json!(spec.commands));
    }
    if !spec.artifacts.is_empty() {
        let a: Map<String, Value> = spec
            .artifacts
            .iter()
            .map(|(k, v)| (k.clone(), json!({"url": v.url, "sha256": v.sha256})))
            .collect();
        m.insert("inputs".into(), Value::Object(a));
    }
    if let Some(d) = &criteria.driver {
        m.insert("runtime".into(), d.clone().into());
    }
    m.insert("priority".into(), spec.priority.into());
    if spec.timeout_seconds > 0 {
        m.insert("timeout_seconds".into(), spec.timeout_seconds.into());
    }
    m
}

/// Whether `k` may name a job parameter: letters, digits and underscores, not empty (it
/// becomes part of an environment variable name on the agent).
pub(crate) fn valid_param_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a job spec before it is queued; errors name the field.
pub(crate) fn validate_spec(spec: &v1::JobSpec) -> Result<()> {
    if spec.name.trim().is_empty() {
        return Err(Error::Invalid("spec.name must not be empty".into()));
    }
    crate::submit_limits::check_spec(spec)?;
    for (k, a) in &spec.artifacts {
        let scheme_ok = ["http://", "https://", "file://"]
            .iter()
            .any(|s| a.url.starts_with(s));
        if !scheme_ok {
            return Err(Error::Invalid(format!(
                "spec.artifacts.{k}.url `{}` must be an http, https or file URL",
                a.url
            )));
        }
        if !a.sha256.is_empty()
            && (a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::Invalid(format!(
                "spec.artifacts.{k}.sha256 must be 64 hexadecimal digits"
            )));
        }
    }
    if !matches!(
        spec.parser.as_str(),
        "" | "auto" | "ktap" | "lava" | "kmsg" | "pattern" | "none"
    ) {
        return Err(Error::Invalid(format!(
            "spec.parser `{}` is not one of auto, ktap, lava, kmsg, pattern, none",
            spec.parser
        )));
    }
    for k in spec.params.keys() {
        if !valid_param_key(k) {
            return Err(Error::Invalid(format!(
                "spec.params key `{k}` must be letters, digits and underscores"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod request_validation {
    use super::*;
    use crate::store::jobs::NewJob;
    use proptest::prelude::*;

    fn any_spec() -> impl Strategy<Value = v1::JobSpec> {
        (
            "\\PC{0,20}",
            proptest::collection::hash_map("[a-zA-Z_0-9 .;$-]{0,8}", "\\PC{0,30}", 0..4),
            proptest::collection::hash_map(
                "[a-z]{1,6}",
                ("\\PC{0,30}", "[0-9a-fA-Fg]{0,66}"),
                0..3,
            ),
            "\\PC{0,10}",
            any::<i32>(),
            any::<u32>(),
        )
            .prop_map(
                |(name, params, arts, parser, priority, timeout)| v1::JobSpec {
                    name,
                    params: params.into_iter().collect(),
                    artifacts: arts
                        .into_iter()
                        .map(|(k, (url, sha256))| (k, v1::Artifact { url, sha256 }))
                        .collect(),
                    parser,
                    priority,
                    timeout_seconds: timeout,
                    ..Default::default()
                },
            )
    }

    proptest! {
        // Each case opens a fresh store; on PostgreSQL that is a new database, so fewer.
        #![proptest_config(ProptestConfig::with_cases(
            if std::env::var("LABWIRE_TEST_STORE").as_deref() == Ok("postgres") { 25 } else { 200 }
        ))]

        /// Whatever a client sends, submission either queues the job with exactly that spec
        /// or refuses it with an `Invalid` error naming a `spec.` field; it never panics and
        /// never half-writes (a refused job leaves no node behind).
        #[test]
        fn submissions_are_validated(spec in any_spec()) {
            let (_d, store) = crate::store::temp_store();
            let s2 = spec.clone();
            let res = store.write_blocking(move |w| w.submit_job(NewJob { spec: s2, parent: None, submitter: String::new(), owner: String::new(), ..Default::default() }));
            let nodes = store.read_blocking(|c| crate::store::nodes::query_nodes(c, &crate::store::NodeFilter { limit: 10, ..Default::default() })).unwrap();
            match res {
                Ok((_, row)) => {
                    prop_assert_eq!(row.spec, spec);
                    prop_assert_eq!(nodes.len(), 1);
                }
                Err(Error::Invalid(msg)) => {
                    prop_assert!(msg.contains("spec."), "{}", msg);
                    prop_assert!(nodes.is_empty());
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
    }
}
