//! KernelCI's pipeline files load unchanged: files of the shapes kernelci-pipeline's
//! `config/` folder uses (commit e81bdeb: pipeline.yaml, jobs*.yaml, platforms*.yaml,
//! scheduler*.yaml, trees.yaml, rootfs.yaml, fragments.yaml), written here for labwire, with
//! the constructs that used to be refused or lost: priority words, merge keys inside a job's
//! `params`, platforms that inherit through a merged anchor that itself merges, a merge in
//! a scheduler entry's `event`, a list of DTBs, a mapping parameter, sections and runtimes
//! labwire has no use for.

use super::*;

const PIPELINE: &str = r#"
api:
  staging: {url: 'https://api.example.org', version: latest}
storage:
  shared: {storage_type: backend, base_url: 'https://files.example.org/'}
runtimes:
  lava-lab-a: &lava-lab
    lab_type: lava
    url: https://lava.example.org/
    priority_min: 40
    priority_max: 60
    notify: {callback: {token: lab-a-callback}}
  lava-pull-only:
    lab_type: lava
    notify: {callback: {token: lab-pull}}
  pull-labs-example:
    lab_type: pull_labs
    poll_interval: 45
    timeout: 7200
    storage_name: shared
    notify: {callback: {token: pull-labs-example}}
  k8s-builder:
    lab_type: kubernetes
    context: cluster-1
"#;

const JOBS: &str = r#"
_anchors:
  boot-job: &boot-job
    template: baseline.jinja2
    kind: job
    priority: medium
    kcidb_test_suite: boot
  suite-params: &suite-params
    boot_commands: nfs
    nfsroot: 'https://files.example.org/rootfs/{debarch}'
    workers: max
  suite-job: &suite-job
    template: suite-pull-labs.jinja2
    kind: job
    priority: low
    rules:
      tree: [mainline, next]
jobs:
  boot-arm64-pull: *boot-job
  boot-x86-pull: *boot-job
  suite-a:
    <<: *suite-job
    params:
      <<: *suite-params
      collection: "a"
      job_timeout: 90
  suite-b:
    <<: *suite-job
    priority: high
    params:
      <<: *suite-params
      collection: "b"
  kbuild-clang-arm64-allmodconfig:
    template: kbuild.jinja2
    kind: kbuild
    image: 'kernelci/clang:arm64'
    frequency: 1d
    params:
      <<: {arch: arm64, compiler: clang}
      defconfig: allmodconfig
      fragments: [lab-setup]
      flash_kernel: {url: 'https://files.example.org/k', image: 'kernel/Image'}
"#;

const PLATFORMS: &str = r#"
_anchors:
  arm64-device: &arm64-device
    arch: arm64
    boot_method: u-boot
    mach: generic
    params: &arm64-params
      console: ttyAMA0
  arm-device: &arm-device
    <<: *arm64-device
    arch: arm
    rules: &arm-rules
      defconfig: ['!allnoconfig']
platforms:
  board-one:
    <<: *arm-device
    mach: vendor
    dtb: dtbs/vendor/board-one.dtb
  board-two:
    <<: *arm-device
    dtb: [dtbs/vendor/board-two-a.dtb, dtbs/vendor/board-two-b.dtb]
    params:
      <<: *arm64-params
      short_name: two
    rules:
      <<: *arm-rules
      branch: ['mainline:master']
  qemu-x86_64:
    arch: x86_64
    boot_method: qemu
    mach: qemu
    context: {arch: x86_64, cpu: qemu64}
"#;

const SCHEDULER: &str = r#"
_anchors:
  kbuild-event: &kbuild-event
    channel: node
    kind: kbuild
    state: available
scheduler:
  - job: boot-arm64-pull
    event: &kbuild-arm64-event
      <<: *kbuild-event
      name: kbuild-gcc-arm64
    runtime: &pull-runtime
      type: pull_labs
      name: pull-labs-example
    platforms: &pull-platforms
      - board-one
      - board-two
  - job: suite-a
    event: *kbuild-arm64-event
    runtime: *pull-runtime
    platforms: *pull-platforms
  - job: suite-b
    event:
      <<: *kbuild-event
      name: kbuild-gcc-x86
    runtime: {type: lava, name: lava-lab-elsewhere}
    platforms: [qemu-x86_64]
  - job: boot-x86-pull
    event: {<<: *kbuild-event, name: kbuild-gcc-x86}
    runtime: *pull-runtime
    platforms: [qemu-x86_64]
"#;

const TREES: &str = r#"
trees:
  mainline: {url: 'https://git.example.org/linux.git'}
build_environments:
  gcc-14: {cc: gcc, cc_version: 14}
build_variants:
  gcc-14: &gcc-14 {build_environment: gcc-14}
fragments:
  lab-setup: {configs: ['CONFIG_X=y']}
rootfs:
  debian: {arch_list: [arm64, amd64]}
"#;

#[test]
fn kernelci_shaped_files_load_together_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, text) in [
        ("pipeline.yaml", PIPELINE),
        ("jobs.yaml", JOBS),
        ("platforms.yaml", PLATFORMS),
        ("scheduler.yaml", SCHEDULER),
        ("trees.yaml", TREES),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let l = PipelineConfig::load_files(&paths).unwrap();
    let c = &l.config;
    assert_eq!(
        (c.jobs.len(), c.platforms.len(), c.runtimes.len()),
        (5, 3, 4)
    );
    assert_eq!(c.scheduler.len(), 4);

    // Priority words are KernelCI's values; a job's own key wins over its anchor's.
    assert_eq!(c.jobs["boot-arm64-pull"].priority, Some(50));
    assert_eq!(c.jobs["suite-a"].priority, Some(0));
    assert_eq!(c.jobs["suite-b"].priority, Some(100));
    // A merge inside params brings the anchor's keys next to the job's own.
    let a = &c.jobs["suite-a"].params;
    assert_eq!(a["boot_commands"], "nfs");
    assert_eq!(a["workers"], "max");
    assert_eq!(a["collection"], "a");
    assert_eq!(a["job_timeout"], 90);
    assert!(c.jobs["suite-a"].rules.lists.contains_key("tree"));
    let k = &c.jobs["kbuild-clang-arm64-allmodconfig"];
    assert_eq!(k.params["arch"], "arm64");
    assert_eq!(
        param_value(&k.params["flash_kernel"]).unwrap(),
        r#"{"image":"kernel/Image","url":"https://files.example.org/k"}"#
    );
    assert_eq!(param_value(&k.params["fragments"]).unwrap(), "lab-setup");

    // Two levels of inheritance: arm-device's own arch, arm64-device's boot method.
    let one = &c.platforms["board-one"];
    assert_eq!(one.arch.as_deref(), Some("arm"));
    assert_eq!(one.boot_method.as_deref(), Some("u-boot"));
    assert_eq!(one.mach.as_deref(), Some("vendor"));
    assert_eq!(one.params["console"], "ttyAMA0");
    assert!(one.rules.lists.contains_key("defconfig"));
    let two = &c.platforms["board-two"];
    assert_eq!(two.arch.as_deref(), Some("arm"));
    assert_eq!(two.params["console"], "ttyAMA0");
    assert_eq!(two.params["short_name"], "two");
    assert!(two.rules.lists.contains_key("defconfig"));
    assert!(two.rules.lists.contains_key("branch"));
    assert_eq!(
        two.dtb.as_deref(),
        Some("dtbs/vendor/board-two-a.dtb,dtbs/vendor/board-two-b.dtb")
    );

    // Merged events match as written.
    assert_eq!(c.scheduler[0].event.kind.as_deref(), Some("kbuild"));
    assert_eq!(
        c.scheduler[0].event.name.as_deref(),
        Some("kbuild-gcc-arm64")
    );
    assert_eq!(c.scheduler[3].event.state.as_deref(), Some("available"));
    assert_eq!(
        c.runtime_type(&c.scheduler[0]).as_deref(),
        Some("pull_labs")
    );
    assert_eq!(c.runtime_type(&c.scheduler[2]).as_deref(), Some("lava"));

    // Nothing of a merge key is left over, and what is skipped is said.
    assert!(
        !l.warnings.iter().any(|w| w.contains("<<")),
        "{:?}",
        l.warnings
    );
    for section in [
        "api",
        "storage",
        "trees",
        "build_variants",
        "fragments",
        "rootfs",
    ] {
        assert!(
            l.warnings
                .iter()
                .any(|w| w.contains(&format!("`{section}`"))),
            "{section}: {:?}",
            l.warnings
        );
    }
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("`lava-lab-elsewhere` is not defined")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn a_priority_that_is_no_word_kernelci_knows_is_refused_with_its_line() {
    let e = format!(
        "{:#}",
        PipelineConfig::parse("jobs:\n  a:\n    kind: job\n    priority: urgent\n").unwrap_err()
    );
    assert!(e.contains("line 4") && e.contains("urgent"), "{e}");
}
