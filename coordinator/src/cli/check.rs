//! `labwire-coordinator check-config`: validates config files, each recognised by its
//! top-level keys; errors name the file, the line and the key.

use crate::config::CoordinatorConfig;
use anyhow::Context;
use std::path::{Path, PathBuf};

/// What kind of config file a file is, by its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigKind {
    /// coordinator.yaml
    Coordinator,
    /// A scheduler file in the KernelCI pipeline format.
    Pipeline,
    /// placement.yaml
    Placement,
}

/// Recognises a config file by its top-level keys.
pub(crate) fn config_kind(path: &Path) -> anyhow::Result<ConfigKind> {
    let text = crate::config::read_config_text(path)?;
    let v: yaml_serde::Value =
        yaml_serde::from_str(&text).with_context(|| format!("in {}", path.display()))?;
    let keys: Vec<&str> = v
        .as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    let any = |names: &[&str]| keys.iter().any(|k| names.contains(k));
    // KernelCI's pipeline config folder also has files with only `trees:`, `fragments:`,
    // `rootfs:` or `build_configs:`; they are pipeline files whose sections labwire skips.
    let mut pipeline_keys = vec!["jobs", "platforms", "runtimes", "scheduler"];
    pipeline_keys.extend_from_slice(crate::pipeline_config::SKIPPED_TOP);
    Ok(if any(&pipeline_keys) {
        ConfigKind::Pipeline
    } else if any(&["labs", "pins", "preferences", "defaults"]) {
        ConfigKind::Placement
    } else {
        ConfigKind::Coordinator
    })
}

/// `check-config`: with no file, the coordinator's config and the files it names; with
/// files, those (scheduler files are checked together, as the coordinator would load them).
pub(super) fn check_config(
    cfg: &CoordinatorConfig,
    own: Option<&Path>,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let (mut pipeline, mut placement) = (Vec::new(), Vec::new());
    if files.is_empty() {
        labwire_common::outln!(
            "{}: ok",
            own.map(|p| p.display().to_string())
                .unwrap_or_else(|| "coordinator config (defaults)".into())
        )?;
        pipeline.extend(cfg.pipeline.iter().cloned());
        placement.extend(cfg.placement.iter().cloned());
    }
    for f in files {
        match config_kind(f)? {
            ConfigKind::Coordinator => {
                let c = CoordinatorConfig::load(f)?;
                labwire_common::outln!("{}: ok (coordinator config)", f.display())?;
                for p in c.pipeline.iter().chain(c.placement.iter()) {
                    if !p.exists() {
                        anyhow::bail!(
                            "{}: names {} which does not exist",
                            f.display(),
                            p.display()
                        );
                    }
                }
            }
            ConfigKind::Pipeline => pipeline.push(f.clone()),
            ConfigKind::Placement => placement.push(f.clone()),
        }
    }
    if !pipeline.is_empty() {
        let loaded = crate::pipeline_config::PipelineConfig::load_files(&pipeline)?;
        for w in &loaded.warnings {
            labwire_common::outln!("note: {w}")?;
        }
        let c = &loaded.config;
        labwire_common::outln!(
            "{}: ok (scheduler config: {} jobs, {} platforms, {} runtimes, {} scheduler entries)",
            pipeline
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c.jobs.len(),
            c.platforms.len(),
            c.runtimes.len(),
            c.scheduler.len()
        )?;
    }
    for p in &placement {
        let pl = crate::placement::Placement::load(p)?;
        labwire_common::outln!(
            "{}: ok (placement: {} labs, {} preferences, {} pins)",
            p.display(),
            pl.labs.len(),
            pl.preferences.len(),
            pl.pins.len()
        )?;
    }
    Ok(())
}
