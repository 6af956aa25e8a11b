//! What a labwire job becomes in LAVA: the variables of its job definition, checked. Job
//! parameters are hostile: artifacts must be `http(s)` URLs (LAVA would read a `file:` URL
//! from the worker's own disk), a kernel command line may not carry quotes or LAVA
//! placeholders, commands reach the board's shell only as the job's own commands with
//! parameters quoted ([`super::steps`]). The login comes from the device type's settings,
//! never from the job.

use super::config::LavaConfig;
use super::templates::{ArtifactVar, JobInfo, JobVars, LoginVar, Timeouts, check_kernel_args};
use crate::driver::JobContext;

/// The device type a definition is for.
pub(crate) struct Target<'a> {
    /// The `lava:` entry.
    pub(crate) cfg: &'a LavaConfig,
    /// The lab's name.
    pub(crate) lab: &'a str,
    /// The LAVA device type.
    pub(crate) device_type: &'a str,
    /// Its template.
    pub(crate) boot_method: &'a str,
}

/// The variables of a job's definition, or why the job cannot run (an `invalid_job` error).
pub(crate) fn vars(
    t: &Target<'_>,
    ctx: &JobContext,
    notify_url: Option<String>,
) -> Result<JobVars, String> {
    let spec = &ctx.spec;
    let minutes = ctx.timeout.as_secs().div_ceil(60).max(1);
    let params: std::collections::BTreeMap<String, String> =
        spec.params.clone().into_iter().collect();
    if let Some(k) = params.get("kernel_args") {
        check_kernel_args(k).map_err(|e| format!("job parameter `kernel_args`: {e}"))?;
    }
    if let Some(a) = params.get("qemu_arch")
        && (a.is_empty() || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(format!(
            "job parameter `qemu_arch` `{a}`: expected an architecture name (amd64, arm64, ...)"
        ));
    }
    let mut artifacts = std::collections::BTreeMap::new();
    for (role, a) in &spec.artifacts {
        let scheme = url::Url::parse(&a.url).map(|u| u.scheme().to_string());
        if !matches!(scheme.as_deref(), Ok("http" | "https")) {
            return Err(format!(
                "artifact `{role}` ({}): LAVA jobs take http and https URLs only (LAVA would read a file: URL from its worker's own disk)",
                a.url
            ));
        }
        artifacts.insert(
            role.clone(),
            ArtifactVar::new(
                a.url.clone(),
                Some(a.sha256.clone()).filter(|s| !s.is_empty()),
            ),
        );
    }
    let settings = t.cfg.device_type_settings.get(t.device_type);
    let prompts = match params.get("prompt") {
        Some(p) if !p.is_empty() => vec![p.clone()],
        _ => settings
            .map(|s| s.prompts.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| vec!["/ #".to_string()]),
    };
    let login = settings.and_then(|s| s.login.as_ref()).map(|l| LoginVar {
        username: l.username.clone(),
        password: l.password.as_ref().map(|p| p.0.clone()),
        login_prompt: l.login_prompt.clone(),
        password_prompt: l.password_prompt.clone(),
    });
    let test_steps = super::steps::build(ctx.job, &params, &spec.commands)?;
    Ok(JobVars {
        device_type: t.device_type.to_string(),
        boot_method: t.boot_method.to_string(),
        job: JobInfo {
            id: ctx.job,
            attempt: ctx.attempt,
            name: spec.name.clone(),
        },
        params,
        artifacts,
        commands: spec.commands.clone(),
        test_steps,
        prompts,
        login,
        kernel_args: settings.and_then(|s| s.kernel_args.clone()),
        notify_url,
        timeouts: Timeouts {
            job: minutes,
            action: minutes.min(15),
            test: minutes,
        },
        priority: if spec.priority > 0 {
            spec.priority.min(100) as u8
        } else {
            t.cfg.priority
        },
        visibility: t.cfg.visibility.clone(),
        lab: t.lab.to_string(),
    })
}
