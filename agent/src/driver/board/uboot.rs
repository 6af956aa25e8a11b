//! The TFTP boot the agent types at U-Boot's prompt when a serial device's `u_boot.commands`
//! is empty: the board's address (DHCP or `ipaddr`), the TFTP server, the kernel, ramdisk and
//! dtb fetched from the job's staged folder to the device type's load addresses, the ramdisk's
//! size taken from `${filesize}`, and the boot command of the device type's kernel format
//! (`booti`, `bootz`, `bootm`). Nothing here comes from the job but which files it brought.

use super::config::UBootConfig;
use crate::device_types::{KernelFormat, UBootType};

/// The U-Boot variable that keeps the ramdisk's size between its `tftp` and the boot.
const RD_SIZE: &str = "labwire_rd_size";

/// The commands (with `{tftp.NAME}` placeholders, expanded like any boot text) for a job that
/// staged a kernel and, when `ramdisk`/`dtb`, those too.
pub(crate) fn tftp_boot(u: &UBootConfig, t: &UBootType, ramdisk: bool, dtb: bool) -> Vec<String> {
    let mut c = vec!["setenv autoload no".to_string()];
    match &u.ipaddr {
        Some(ip) => c.push(format!("setenv ipaddr {ip}")),
        None => c.push("dhcp".into()),
    }
    c.push("setenv serverip {tftp.server}".into());
    c.push(format!("tftp {} {{tftp.kernel}}", t.kernel_addr));
    let rd = if ramdisk {
        c.push(format!("tftp {} {{tftp.ramdisk}}", t.ramdisk_addr));
        c.push(format!("setenv {RD_SIZE} ${{filesize}}"));
        match t.kernel_format {
            // A legacy image carries its size in its header (a ramdisk wrapped by mkimage).
            KernelFormat::Uimage => t.ramdisk_addr.clone(),
            KernelFormat::Image | KernelFormat::Zimage => {
                format!("{}:${{{RD_SIZE}}}", t.ramdisk_addr)
            }
        }
    } else {
        "-".to_string()
    };
    if dtb {
        c.push(format!("tftp {} {{tftp.dtb}}", t.dtb_addr));
    }
    if let Some(args) = &u.bootargs {
        c.push(format!("setenv bootargs '{args}'"));
    }
    c.push(format!(
        "{} {} {rd} {}",
        t.kernel_format.command(),
        t.kernel_addr,
        t.dtb_addr
    ));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(f: KernelFormat) -> UBootType {
        UBootType {
            kernel_format: f,
            kernel_addr: "${kernel_addr_r}".into(),
            ramdisk_addr: "0x44000000".into(),
            dtb_addr: "${fdtcontroladdr}".into(),
        }
    }

    #[test]
    fn the_boot_command_follows_the_kernel_format() {
        let u = UBootConfig {
            bootargs: Some("console=ttyAMA0,115200".into()),
            ..Default::default()
        };
        let c = tftp_boot(&u, &ty(KernelFormat::Image), true, false);
        assert_eq!(
            c,
            vec![
                "setenv autoload no",
                "dhcp",
                "setenv serverip {tftp.server}",
                "tftp ${kernel_addr_r} {tftp.kernel}",
                "tftp 0x44000000 {tftp.ramdisk}",
                "setenv labwire_rd_size ${filesize}",
                "setenv bootargs 'console=ttyAMA0,115200'",
                "booti ${kernel_addr_r} 0x44000000:${labwire_rd_size} ${fdtcontroladdr}",
            ]
        );
        let u = UBootConfig {
            ipaddr: Some("10.0.0.5".into()),
            ..Default::default()
        };
        let c = tftp_boot(&u, &ty(KernelFormat::Zimage), false, true);
        assert_eq!(c[1], "setenv ipaddr 10.0.0.5");
        assert!(c.contains(&"tftp ${fdtcontroladdr} {tftp.dtb}".to_string()));
        assert_eq!(
            c.last().unwrap(),
            "bootz ${kernel_addr_r} - ${fdtcontroladdr}"
        );
        let c = tftp_boot(&u, &ty(KernelFormat::Uimage), true, true);
        assert_eq!(
            c.last().unwrap(),
            "bootm ${kernel_addr_r} 0x44000000 ${fdtcontroladdr}"
        );
    }
}
