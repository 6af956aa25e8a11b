//! The device-type library: YAML files describing each device type (arch, mach, boot method,
//! dtb, compatible, features). Every file of the sources' device-types/ is built in (among
//! them one per KernelCI platform); directories named in the agent config add to them or
//! override them.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One device type.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    /// Its name (KernelCI's platform `base_name`).
    pub name: String,
    /// Architecture: x86_64, arm64, arm, riscv64, ...
    pub arch: String,
    /// Machine family.
    #[serde(default)]
    pub mach: Option<String>,
    /// How it boots: qemu, u-boot, grub, depthcharge, fastboot, none.
    #[serde(default)]
    pub boot_method: Option<String>,
    /// The device tree blob, relative to the kernel's dtbs.
    #[serde(default)]
    pub dtb: Option<String>,
    /// Device-tree compatible strings.
    #[serde(default)]
    pub compatible: Vec<String>,
    /// Capabilities.
    #[serde(default)]
    pub features: Vec<String>,
}

impl DeviceType {
    /// The properties a job's criteria can ask for.
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("arch".to_string(), self.arch.clone());
        for (k, v) in [
            ("mach", &self.mach),
            ("boot_method", &self.boot_method),
            ("dtb", &self.dtb),
        ] {
            if let Some(v) = v {
                p.insert(k.to_string(), v.clone());
            }
        }
        if !self.compatible.is_empty() {
            p.insert("compatible".to_string(), self.compatible.join(" "));
        }
        p
    }
}

// The files of device-types/ (listed by build.rs).
include!(concat!(env!("OUT_DIR"), "/device_types.rs"));

/// The device types known to an agent, by name.
#[derive(Debug, Clone, Default)]
pub struct Library {
    types: BTreeMap<String, DeviceType>,
}

fn parse(origin: &str, text: &str) -> anyhow::Result<DeviceType> {
    let t: DeviceType =
        yaml_serde::from_str(text).with_context(|| format!("device type file {origin}"))?;
    if t.name.is_empty() || t.arch.is_empty() {
        bail!("device type file {origin}: `name` and `arch` must not be empty");
    }
    Ok(t)
}

impl Library {
    /// The built-in types plus those in `dirs` (later files override earlier ones by name).
    pub fn load(dirs: &[impl AsRef<Path>]) -> anyhow::Result<Self> {
        let mut lib = Library::default();
        for (file, text) in BUILT_IN {
            let t = parse(&format!("(built in) {file}"), text)?;
            lib.types.insert(t.name.clone(), t);
        }
        for dir in dirs {
            let dir = dir.as_ref();
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read device-type directory {}", dir.display()))?;
            let mut files: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                let t = parse(&f.display().to_string(), &text)?;
                lib.types.insert(t.name.clone(), t);
            }
        }
        Ok(lib)
    }

    /// A device type by name.
    pub fn get(&self, name: &str) -> Option<&DeviceType> {
        self.types.get(name)
    }

    /// Every device type, by name.
    pub fn all(&self) -> impl Iterator<Item = &DeviceType> {
        self.types.values()
    }

    /// Every name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.types.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_load() {
        let lib = Library::load(&[] as &[&Path]).unwrap();
        let q = lib.get("qemu-x86_64").unwrap();
        assert_eq!(q.properties()["arch"], "x86_64");
        let rpi = lib.get("bcm2711-rpi-4-b").unwrap();
        assert_eq!(
            rpi.compatible,
            vec!["raspberrypi,4-model-b", "brcm,bcm2711"]
        );
    }

    #[test]
    fn repo_files_load_and_override() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.yaml"),
            "name: qemu-x86_64\narch: x86_64\nmach: custom\n",
        )
        .unwrap();
        let lib = Library::load(&[dir.path()]).unwrap();
        assert_eq!(
            lib.get("qemu-x86_64").unwrap().mach.as_deref(),
            Some("custom")
        );
        std::fs::write(
            dir.path().join("bad.yaml"),
            "name: y\narch: x\ncolour: red\n",
        )
        .unwrap();
        let e = Library::load(&[dir.path()]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `colour`"), "{e:#}");
    }
}
