//! Tests of the agent config as a whole: keys named in errors, the shipped example, hostile
//! files.

mod basics {
    use crate::config::*;

    const BASE: &str = "lab: lab-a\ncoordinator: {url: 'https://127.0.0.1:7443', ca: ca.pem, cert: a.pem, key: a.key}\n";

    #[test]
    fn board_farm_settings_are_checked() {
        let board = |tftp: &str, ty: &str, driver: &str| {
            AgentConfig::parse(&format!(
                "{BASE}{tftp}devices:\n  - name: b\n    device_type: {ty}\n    driver:\n      type: serial\n      console: {{telnet: {{address: 'h:1'}}}}\n{driver}"
            ))
        };
        let pdu =
            "      power: {pdudaemon: {url: 'http://127.0.0.1:16421', hostname: pdu1, port: 2}}\n";
        let uboot = "      boot: {preset: u-boot, u_boot: {bootargs: 'console=ttyAMA0,115200'}}\n";
        let tftp = "tftp: {root: /srv/tftp, server: 10.0.0.1}\n";
        // The whole stack: pdudaemon, the TFTP boot typed by the agent.
        board(tftp, "qemu-arm64-uboot", &format!("{pdu}{uboot}")).unwrap();
        let err = |r: anyhow::Result<AgentConfig>| format!("{:#}", r.unwrap_err());
        // Both kinds of power, or none.
        let e = err(board(
            "",
            "qemu-arm64",
            &format!("{pdu}      power_on_command: ['true']\n      power_off_command: ['true']\n"),
        ));
        assert!(
            e.contains("devices[0] (b).driver.power: give either"),
            "{e}"
        );
        let e = err(board("", "qemu-arm64", ""));
        assert!(e.contains("the board's power is missing"), "{e}");
        let e = err(board("", "qemu-arm64", &pdu.replace("http://", "ftp://")));
        assert!(e.contains("driver.power.pdudaemon.url"), "{e}");
        // No U-Boot commands: only with a `tftp:` section and a device type that says how.
        let e = err(board("", "qemu-arm64-uboot", &format!("{pdu}{uboot}")));
        assert!(e.contains("boot.u_boot.commands"), "{e}");
        let e = err(board(tftp, "qemu-arm64", &format!("{pdu}{uboot}")));
        assert!(e.contains("has no `u_boot`"), "{e}");
        let e = err(board(
            tftp,
            "qemu-arm64-uboot",
            &format!(
                "{pdu}{}",
                uboot.replace("'console=ttyAMA0,115200'", "\"x'; reset; '\"")
            ),
        ));
        assert!(e.contains("u_boot.bootargs"), "{e}");
        let e = err(board(
            "tftp: {root: /srv/tftp, server: '10.0.0.1; reset'}\n",
            "qemu-arm64-uboot",
            &format!("{pdu}{uboot}"),
        ));
        assert!(e.contains("tftp.server"), "{e}");
    }

    #[test]
    fn secrets_are_checked_and_short_ones_warned_about() {
        let board = |settings: &str, secret: &str, password: &str| {
            AgentConfig::parse(&format!(
                "{BASE}devices:\n  - name: b\n    device_type: qemu-x86_64\n    settings: {settings}\n    secret_settings: {secret}\n    driver:\n      type: serial\n      console: {{tcp: {{address: 'h:1'}}}}\n      power_on_command: ['true']\n      power_off_command: ['true']\n      login: {{username: root, password: '{password}'}}\n"
            ))
        };
        let cfg = board("{pdu: long-enough-secret, port: '3'}", "[pdu]", "root").unwrap();
        let secrets: Vec<String> = cfg.devices[0].secrets().into_iter().map(|s| s.0).collect();
        assert_eq!(secrets, ["long-enough-secret", "root"]);
        let w = cfg.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("devices[0] (b).driver.login.password is shorter than 8 characters"),
            "{w:?}"
        );
        let e = board("{pdu: x}", "[nope]", "long-enough-pw").unwrap_err();
        assert!(
            format!("{e:#}").contains(
                "devices[0] (b).secret_settings[0]: `nope` is not one of the device's settings"
            ),
            "{e:#}"
        );
        let e = AgentConfig::parse(&format!("{BASE}artifacts: {{file_dirs: [relative/dir]}}\n"))
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("artifacts.file_dirs[0] `relative/dir`"),
            "{e:#}"
        );
        let e = AgentConfig::parse(&format!("{BASE}state: {{keep_jobs: soon}}\n")).unwrap_err();
        assert!(format!("{e:#}").contains("state.keep_jobs"), "{e:#}");
    }

    #[test]
    fn good_config() {
        let cfg = AgentConfig::parse(&format!(
            "{BASE}devices:\n  - name: host\n    device_type: lab-host\n    driver: {{type: shell, command: [sh, -c, 'echo \"$1\"', sh, '{{params.msg}}']}}\n"
        ))
        .unwrap();
        assert_eq!(cfg.devices[0].driver.kind(), "shell");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus: 1\n", "unknown field `bogus`"),
            (
                "devices:\n  - {name: h, device_type: nope, driver: {type: shell, command: ['true']}}\n",
                "devices[0] (h).device_type: `nope`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: telnet}}\n",
                "unknown variant `telnet`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: ['true'], colour: red}}\n",
                "unknown field `colour`",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, 'x{params.a}']}}\n",
                "whole arguments",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [sh, -c, '{params.a}']}}\n",
                "driver.command[2] `{params.a}`: `sh -c` runs this argument as its script",
            ),
            (
                "devices:\n  - {name: h, device_type: lab-host, driver: {type: shell, command: [echo, '{device.port}']}}\n",
                "names no setting",
            ),
            ("limits: {job_timeout: forever}\n", "limits.job_timeout"),
            (
                "lava:\n  - {name: l, url: 'ftp://x/', token: t}\n",
                "lava[0] (l).url `ftp://x/`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/'}\n",
                "lava[0] (l): `token` or `token_file` is required",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, token_file: /t}\n",
                "not both",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, device_types: some}\n",
                "expected `all` or a list",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, colour: red}\n",
                "unknown field `colour`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t}\n  - {name: l, url: 'http://y/', token: t}\n",
                "lava[1] (l).name: `l` is used by two",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, poll: 10s, poll_max: 1s}\n",
                "lava[0] (l).poll/poll_max",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, device_type_settings: {qemu: {kernel_args: 'a\"b'}}}\n",
                "lava[0] (l).device_type_settings.qemu.kernel_args: `\\\"` is not allowed",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, device_type_settings: {qemu: {login: {password: x}}}}\n",
                "missing field `username`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, notify: {listen: 'localhost'}}\n",
                "notify.listen",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, notify: {listen: '127.0.0.1:9', url: 'ftp://a/'}}\n",
                "lava[0] (l).notify.url `ftp://a/`",
            ),
            (
                "lava:\n  - {name: l, url: 'http://x/', token: t, notify: {listen: '127.0.0.1:9'}}\n  - {name: m, url: 'http://x/', token: t, notify: {listen: '127.0.0.1:9'}}\n",
                "lava[1] (m).notify.listen: 127.0.0.1:9 is already lava (l)'s",
            ),
        ];
        for (extra, want) in cases {
            let e = AgentConfig::parse(&format!("{BASE}{extra}")).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{extra:?}: {msg}");
        }
    }

    fn with_coordinator(link: &str) -> anyhow::Result<AgentConfig> {
        AgentConfig::parse(&format!(
            "lab: lab-a\ncoordinator: {{{link}ca: ca.pem, cert: a.pem, key: a.key}}\n"
        ))
    }

    #[test]
    fn one_coordinator_url_or_a_list_of_replicas() {
        let one = with_coordinator("url: 'https://c.example:7443', ").unwrap();
        assert_eq!(
            one.coordinator.addresses(),
            vec![("coordinator.url".to_string(), "https://c.example:7443")]
        );
        let two = with_coordinator("urls: ['https://a.example:7443', 'https://10.0.0.2:7443'], ")
            .unwrap();
        assert_eq!(
            two.coordinator.addresses(),
            vec![
                ("coordinator.urls[0]".to_string(), "https://a.example:7443"),
                ("coordinator.urls[1]".to_string(), "https://10.0.0.2:7443"),
            ]
        );
        let cases = [
            (
                "url: 'https://a:1', urls: ['https://b:1'], ",
                "coordinator: give either `url` (one coordinator) or `urls` (its replicas), not both",
            ),
            ("", "coordinator: `url` (https://HOST:PORT) or `urls`"),
            ("urls: [], ", "coordinator.urls: list at least one"),
            (
                "urls: ['https://a:1', 'http://b:1'], ",
                "coordinator.urls[1] `http://b:1`: expected https://HOST:PORT",
            ),
            (
                "urls: ['https://a:1', 'https://'], ",
                "coordinator.urls[1] `https://`: expected https://HOST:PORT",
            ),
            (
                "urls: ['https://a:1', 'https://a:1'], ",
                "coordinator.urls[1] `https://a:1`: listed twice",
            ),
            ("urls: 'https://a:1', ", "coordinator.urls"),
            (
                "url: 'ftp://a:1', ",
                "coordinator.url `ftp://a:1`: expected https://HOST:PORT",
            ),
        ];
        let same = |a: &str, b: &str| {
            let (a, b) = (with_coordinator(a).unwrap(), with_coordinator(b).unwrap());
            a.coordinator.same_link(&b.coordinator)
        };
        assert!(same("url: 'https://a:1', ", "urls: ['https://a:1'], "));
        assert!(!same(
            "url: 'https://a:1', ",
            "urls: ['https://a:1', 'https://b:1'], "
        ));
        assert!(!same(
            "urls: ['https://b:1', 'https://a:1'], ",
            "urls: ['https://a:1', 'https://b:1'], "
        ));
        for (link, want) in cases {
            let e = with_coordinator(link).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{link:?}: {msg}");
        }
    }
}

mod example_tests {
    #[test]
    fn the_shipped_example_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.yaml");
        let cfg = crate::config::AgentConfig::load(std::path::Path::new(path)).unwrap();
        assert_eq!(cfg.devices.len(), 3);
        assert_eq!(cfg.devices[1].driver.kind(), "serial");
        // The board farm's board: pdudaemon power, the TFTP boot typed by the agent.
        assert_eq!(cfg.devices[2].driver.kind(), "serial");
        assert!(cfg.tftp.is_some());
    }

    /// The commented-out `urls:` example, in place of `url:`, loads too.
    #[test]
    fn the_urls_example_loads_uncommented() {
        let text = include_str!("../../../config/agent.yaml");
        let url = "  url: https://coordinator.example.org:7443\n";
        let urls =
            "  # urls: [https://coord-a.example.org:7443, https://coord-b.example.org:7443]\n";
        assert!(text.contains(url) && text.contains(urls));
        let swapped = text
            .replace(url, "")
            .replace(urls, &urls.replacen("# ", "", 1));
        let cfg = crate::config::AgentConfig::parse(&swapped).unwrap();
        let got: Vec<&str> = cfg
            .coordinator
            .addresses()
            .into_iter()
            .map(|(_, u)| u)
            .collect();
        assert_eq!(
            got,
            [
                "https://coord-a.example.org:7443",
                "https://coord-b.example.org:7443"
            ]
        );
    }

    /// The commented-out `lava:` example, uncommented, loads too (its templates_dir left
    /// out: the folder does not exist here).
    #[test]
    fn the_lava_example_loads_uncommented() {
        let text = include_str!("../../../config/agent.yaml");
        let start = text.find("# lava:").expect("lava example");
        // The example runs up to the next blank line.
        let lava: String = text[start..]
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.contains("templates_dir:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let rest = &text[start..];
        let after = rest.find("\n\n").map_or("", |i| &rest[i..]);
        let cfg =
            crate::config::AgentConfig::parse(&format!("{}{lava}{after}", &text[..start])).unwrap();
        assert_eq!(cfg.lava.len(), 1);
        let l = &cfg.lava[0];
        assert_eq!(l.name, "lab-lava");
        assert_eq!(l.boot_methods["my-board"], "u-boot");
        let q = &l.device_type_settings["qemu"];
        assert_eq!(q.login.as_ref().map(|l| l.username.as_str()), Some("root"));
        assert_eq!(q.kernel_args.as_deref(), Some("console=ttyS0,115200"));
        assert_eq!(l.notify.as_ref().map(|n| n.listen.port()), Some(8950));
        assert!(l.device_types.offers("qemu") && !l.device_types.offers("x15"));
    }
}

mod hostile_input {
    use crate::config::*;
    use proptest::prelude::*;

    const GOOD: &str = include_str!("../../../config/agent.yaml");

    #[test]
    fn deep_nesting_and_huge_files_are_refused_not_fatal() {
        let deep = format!("lab: {}x{}\n", "[".repeat(5_000), "]".repeat(5_000));
        let e = AgentConfig::parse(&deep).unwrap_err();
        assert!(!format!("{e:#}").is_empty());
        let deep_map = format!("lab: x\nsettings:{}\n", " {a:".repeat(5_000));
        assert!(AgentConfig::parse(&deep_map).is_err());
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("agent.yaml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let e = AgentConfig::load(&big).unwrap_err();
        assert!(format!("{e:#}").contains("too big"), "{e:#}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random bytes never make the loader panic.
        #[test]
        fn random_text_never_panics(s in "\\PC{0,400}") {
            let _ = AgentConfig::parse(&s);
        }

        /// The shipped example, cut anywhere or with a line removed or a byte changed, is
        /// either still valid or refused with an error; never a panic.
        #[test]
        fn damaged_example_never_panics(cut in 0usize..GOOD.len(), drop_line in 0usize..200, byte in 0usize..GOOD.len(), b in any::<u8>()) {
            let _ = AgentConfig::parse(&GOOD[..GOOD.floor_char_boundary(cut)]);
            let without: String = GOOD.lines().enumerate().filter(|(i, _)| *i != drop_line).map(|(_, l)| format!("{l}\n")).collect();
            let _ = AgentConfig::parse(&without);
            let mut bytes = GOOD.as_bytes().to_vec();
            bytes[byte] = b;
            let _ = AgentConfig::parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
