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
    /// How U-Boot boots this type over TFTP: the kernel's format and the load addresses.
    #[serde(default)]
    pub u_boot: Option<UBootType>,
}

/// The kernel formats U-Boot boots, each with its command.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// An arm64 (or riscv) `Image`: `booti`.
    Image,
    /// A 32-bit arm `zImage`: `bootz`.
    Zimage,
    /// A legacy `uImage` (made with mkimage): `bootm`.
    Uimage,
}

impl KernelFormat {
    /// U-Boot's command for this format.
    pub fn command(self) -> &'static str {
        match self {
            KernelFormat::Image => "booti",
            KernelFormat::Zimage => "bootz",
            KernelFormat::Uimage => "bootm",
        }
    }
}

/// U-Boot settings of a device type: the kernel's format and where kernel, ramdisk and dtb
/// are loaded (an address such as `0x82000000`, or a U-Boot variable such as
/// `${kernel_addr_r}`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UBootType {
    /// `image` (booti), `zimage` (bootz) or `uimage` (bootm).
    pub kernel_format: KernelFormat,
    /// Where the kernel goes. Default `${kernel_addr_r}`.
    #[serde(default = "default_kernel_addr")]
    pub kernel_addr: String,
    /// Where the ramdisk goes. Default `${ramdisk_addr_r}`.
    #[serde(default = "default_ramdisk_addr")]
    pub ramdisk_addr: String,
    /// Where the dtb goes, or where it already is when the job brings none (the board's own
    /// device tree: `${fdtcontroladdr}`). Default `${fdt_addr_r}`.
    #[serde(default = "default_dtb_addr")]
    pub dtb_addr: String,
}

fn default_kernel_addr() -> String {
    "${kernel_addr_r}".into()
}
fn default_ramdisk_addr() -> String {
    "${ramdisk_addr_r}".into()
}
fn default_dtb_addr() -> String {
    "${fdt_addr_r}".into()
}

/// Whether `a` is a load address U-Boot can take: hexadecimal (`0x82000000`) or one variable
/// (`${kernel_addr_r}`).
pub(crate) fn valid_address(a: &str) -> bool {
    let hex = a.strip_prefix("0x").is_some_and(|h| {
        !h.is_empty() && h.len() <= 16 && h.chars().all(|c| c.is_ascii_hexdigit())
    });
    let var = a
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .is_some_and(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    hex || var
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
    if let Some(u) = &t.u_boot {
        for (k, a) in [
            ("kernel_addr", &u.kernel_addr),
            ("ramdisk_addr", &u.ramdisk_addr),
            ("dtb_addr", &u.dtb_addr),
        ] {
            if !valid_address(a) {
                bail!(
                    "device type file {origin}: u_boot.{k} `{a}`: expected a hexadecimal address (0x82000000) or one U-Boot variable (${{kernel_addr_r}})"
                );
            }
        }
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

    #[test]
    fn u_boot_addresses_are_addresses() {
        let lib = Library::load(&[] as &[&Path]).unwrap();
        let u = lib.get("qemu-arm64-uboot").unwrap().u_boot.clone().unwrap();
        assert_eq!(u.kernel_format.command(), "booti");
        assert_eq!(u.dtb_addr, "${fdtcontroladdr}");
        for good in ["0x82000000", "${kernel_addr_r}"] {
            assert!(valid_address(good), "{good}");
        }
        for bad in [
            "",
            "0x",
            "82000000",
            "${a}; reset",
            "${a}${b}",
            "0x1 0x2",
            "$(x)",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
        let e = parse(
            "t",
            "name: t\narch: arm\nu_boot: {kernel_format: zimage, kernel_addr: '0x1; reset'}\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("u_boot.kernel_addr"), "{e:#}");
    }
}
