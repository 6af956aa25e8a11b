//! YAML merge keys (`<<`) resolved at any depth, the way KernelCI's pipeline files use them:
//! inside a job's `params`, in a scheduler entry, and merged anchors that themselves merge
//! (`<<: *arm-device` where `arm-device` has `<<: *arm64-device`).
//!
//! yaml_serde's own `apply_merge` copies a merged mapping's unresolved `<<` into the target
//! and never looks at it again, so a nested merge is lost; here a merged mapping is resolved
//! first, then merged. The rules are YAML 1.1's: keys written in the mapping win over merged
//! ones, and in `<<: [*a, *b]` the earlier mapping wins.

use yaml_serde::Value;

/// Resolves every `<<` in `v`. An error names where the bad merge is (`jobs.x.params`) and
/// what it merged instead of a mapping.
pub(crate) fn resolve(v: &mut Value) -> Result<(), String> {
    resolve_at(v, &mut Vec::new())
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".into(),
    }
}

fn where_(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        path.join(".").replace(".[", "[")
    }
}

fn what(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn resolve_at(v: &mut Value, path: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::Mapping(m) => {
            let merge = m.remove("<<");
            for (k, val) in m.iter_mut() {
                path.push(key_name(k));
                resolve_at(val, path)?;
                path.pop();
            }
            let Some(src) = merge else {
                return Ok(());
            };
            let sources = match src {
                Value::Sequence(s) => s,
                other => vec![other],
            };
            for mut s in sources {
                // The merged mapping's own merges first: that is what a nested merge means.
                resolve_at(&mut s, path)?;
                match s {
                    Value::Mapping(sm) => {
                        for (k, val) in sm {
                            m.entry(k).or_insert(val);
                        }
                    }
                    other => {
                        return Err(format!(
                            "`<<` in {} merges {}; it must merge a mapping (an anchor such as *name) or a list of them",
                            where_(path),
                            what(&other)
                        ));
                    }
                }
            }
            Ok(())
        }
        Value::Sequence(s) => {
            for (i, x) in s.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                resolve_at(x, path)?;
                path.pop();
            }
            Ok(())
        }
        Value::Tagged(t) => resolve_at(&mut t.value, path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(text: &str) -> Value {
        let mut v: Value = yaml_serde::from_str(text).unwrap();
        resolve(&mut v).unwrap();
        v
    }

    #[test]
    fn a_merged_anchor_that_merges_brings_both_levels() {
        let v = resolved(
            "a: &a {arch: arm64, boot_method: u-boot, mach: generic}\n\
             b: &b {<<: *a, arch: arm, dtb: x.dtb}\n\
             c: {<<: *b, mach: imx}\n",
        );
        let c = &v["c"];
        assert_eq!(c["arch"], Value::from("arm"));
        assert_eq!(c["boot_method"], Value::from("u-boot"));
        assert_eq!(c["dtb"], Value::from("x.dtb"));
        assert_eq!(c["mach"], Value::from("imx"));
        assert!(c.get("<<").is_none());
    }

    #[test]
    fn merges_inside_nested_mappings_and_lists_are_resolved() {
        let v = resolved(
            "p: &p {boot_commands: nfs, workers: max}\n\
             jobs:\n  x:\n    params:\n      <<: *p\n      tst_cmdfiles: smoketest\n\
             scheduler:\n  - <<: {job: x}\n    event: {<<: {channel: node}, kind: kbuild}\n",
        );
        assert_eq!(
            v["jobs"]["x"]["params"]["boot_commands"],
            Value::from("nfs")
        );
        assert_eq!(
            v["jobs"]["x"]["params"]["tst_cmdfiles"],
            Value::from("smoketest")
        );
        assert_eq!(v["scheduler"][0]["job"], Value::from("x"));
        assert_eq!(v["scheduler"][0]["event"]["channel"], Value::from("node"));
    }

    #[test]
    fn own_keys_win_and_the_first_of_several_merges_wins() {
        let v = resolved(
            "a: &a {k: 1, only_a: 1}\nb: &b {k: 2, only_b: 2}\nc: {<<: [*a, *b], own: 3}\nd: {<<: *a, k: 9}\n",
        );
        assert_eq!(v["c"]["k"], Value::from(1));
        assert_eq!(v["c"]["only_b"], Value::from(2));
        assert_eq!(v["c"]["own"], Value::from(3));
        assert_eq!(v["d"]["k"], Value::from(9));
    }

    #[test]
    fn merging_something_else_than_a_mapping_is_refused_with_its_place() {
        let mut v: Value = yaml_serde::from_str("jobs:\n  x:\n    params: {<<: [1]}\n").unwrap();
        let e = resolve(&mut v).unwrap_err();
        assert!(e.contains("jobs.x.params") && e.contains("a number"), "{e}");
    }
}
