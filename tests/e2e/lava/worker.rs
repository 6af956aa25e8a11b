//! A stand-in for lava-dispatcher in tests/e2e/lava.rs: it speaks lava-server's worker protocol
//! (`/scheduler/internal/v1/`: ping, fetch the job, set it running, post log lines, finish
//! it) and plays each job from its definition. The test cases it reports are the
//! `lava-test-case NAME` steps of the job's inline test definitions, in suites named
//! `N_NAME` as LAVA names them; a step containing `exit 1` fails. A job whose name contains
//! `hang` runs until it is cancelled; `slow` runs until the test releases it; `infra` ends
//! Incomplete with an Infrastructure error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct TestWorker {
    pub base: url::Url,
    pub name: String,
    pub token: String,
    pub http: reqwest::Client,
    /// Lets `slow` jobs finish.
    pub release: Arc<AtomicBool>,
}

struct Play {
    token: String,
    name: String,
    definition: yaml_serde::Value,
    lines: usize,
    finished: bool,
}

fn line(lvl: &str, msg: serde_json::Value) -> String {
    let l = serde_json::json!({"dt": "2026-01-01T00:00:00.000000", "lvl": lvl, "msg": msg});
    format!("- {l}")
}

impl TestWorker {
    async fn post(&self, path: &str, token: &str, form: &[(&str, &str)]) {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let r = self
            .http
            .post(self.base.join(path).unwrap())
            .header("LAVA-Token", token)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("worker POST");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "worker POST {path}: {status} {text}");
    }

    async fn get(&self, path: &str, token: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.base.join(path).unwrap())
            .header("LAVA-Token", token)
            .send()
            .await
            .expect("worker GET");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "worker GET {path}: {status} {text}");
        serde_json::from_str(&text).expect("worker JSON")
    }

    async fn logs(&self, id: i64, p: &mut Play, lines: Vec<String>) {
        let text = lines.join("\n");
        let index = p.lines.to_string();
        self.post(
            &format!("scheduler/internal/v1/jobs/{id}/logs/"),
            &p.token.clone(),
            &[("lines", &text), ("index", &index)],
        )
        .await;
        p.lines += lines.len();
    }

    async fn finish(&self, id: i64, p: &mut Play, result: &str, error_type: &str) {
        let token = p.token.clone();
        self.post(
            &format!("scheduler/internal/v1/jobs/{id}/"),
            &token,
            &[
                ("state", "Finished"),
                ("result", result),
                ("error_type", error_type),
                ("description", "{}"),
                (
                    "errors",
                    if error_type.is_empty() {
                        ""
                    } else {
                        "tftp timed out (test worker)"
                    },
                ),
            ],
        )
        .await;
        p.finished = true;
    }

    /// The test cases of the job's inline test definitions: (suite, case, result).
    fn cases(def: &yaml_serde::Value) -> Vec<(String, String, &'static str)> {
        let re = regex::Regex::new(r"lava-test-case (\S+)").unwrap();
        let mut out = Vec::new();
        let mut n = 0;
        for action in def["actions"].as_sequence().into_iter().flatten() {
            for d in action["test"]["definitions"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                let suite = format!("{n}_{}", d["name"].as_str().unwrap_or("?"));
                n += 1;
                for step in d["repository"]["run"]["steps"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                {
                    let step = step.as_str().unwrap_or("");
                    for c in re.captures_iter(step) {
                        let name = c[1].trim_matches('"').to_string();
                        if name.starts_with('$') {
                            continue;
                        }
                        let r = if step.contains("exit 1") {
                            "fail"
                        } else {
                            "pass"
                        };
                        out.push((suite.clone(), name, r));
                    }
                }
            }
        }
        out
    }

    async fn complete(&self, id: i64, p: &mut Play) {
        let mut lines = Vec::new();
        for (suite, case, result) in Self::cases(&p.definition) {
            lines.push(line(
                "target",
                format!("<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={case} RESULT={result}>").into(),
            ));
            lines.push(line(
                "results",
                serde_json::json!({"definition": suite, "case": case, "result": result}),
            ));
        }
        if p.name.contains("infra") {
            lines.push(line("error", "tftp timed out (test worker)".into()));
            lines.push(line(
                "results",
                serde_json::json!({"definition": "lava", "case": "job", "result": "fail",
                    "error_type": "Infrastructure", "error_msg": "tftp timed out (test worker)"}),
            ));
            self.logs(id, p, lines).await;
            self.finish(id, p, "fail", "Infrastructure").await;
        } else {
            lines.push(line(
                "results",
                serde_json::json!({"definition": "lava", "case": "job", "result": "pass"}),
            ));
            self.logs(id, p, lines).await;
            self.finish(id, p, "pass", "").await;
        }
    }

    /// Runs until `stop`, pinging every 500 ms.
    pub async fn run(self, version: String, stop: tokio_util::sync::CancellationToken) {
        let mut plays: HashMap<i64, Play> = HashMap::new();
        loop {
            let ping = self
                .get(
                    &format!(
                        "scheduler/internal/v1/workers/{}/?version={version}",
                        self.name
                    ),
                    &self.token.clone(),
                )
                .await;
            for s in ping["start"].as_array().into_iter().flatten() {
                let id = s["id"].as_i64().expect("id");
                if plays.contains_key(&id) {
                    continue;
                }
                let token = s["token"].as_str().expect("token").to_string();
                let job = self
                    .get(&format!("scheduler/internal/v1/jobs/{id}/"), &token)
                    .await;
                let definition: yaml_serde::Value =
                    yaml_serde::from_str(job["definition"].as_str().expect("definition"))
                        .expect("definition YAML");
                let name = definition["job_name"].as_str().unwrap_or("").to_string();
                let mut p = Play {
                    token: token.clone(),
                    name,
                    definition,
                    lines: 0,
                    finished: false,
                };
                self.post(
                    &format!("scheduler/internal/v1/jobs/{id}/"),
                    &token,
                    &[("state", "Running")],
                )
                .await;
                let boot = vec![
                    line("info", "start: 1 tmpfs-deploy (timeout 00:10:00)".into()),
                    line("target", "Linux version 6.1.0-labwire (test worker)".into()),
                    line("target", "/ # ".into()),
                    line(
                        "results",
                        serde_json::json!({"definition": "lava", "case": "auto-login-action", "result": "pass", "duration": "1.50"}),
                    ),
                    line(
                        "results",
                        serde_json::json!({"definition": "lava", "case": "kernel-messages", "result": "pass"}),
                    ),
                ];
                self.logs(id, &mut p, boot).await;
                if !p.name.contains("hang") && !p.name.contains("slow") {
                    self.complete(id, &mut p).await;
                }
                plays.insert(id, p);
            }
            for c in ping["cancel"].as_array().into_iter().flatten() {
                let id = c["id"].as_i64().expect("id");
                let token = c["token"].as_str().expect("token").to_string();
                let mut p = plays.remove(&id).unwrap_or(Play {
                    token,
                    name: String::new(),
                    definition: yaml_serde::Value::Null,
                    lines: 0,
                    finished: false,
                });
                self.finish(id, &mut p, "fail", "Canceled").await;
            }
            if self.release.load(Ordering::SeqCst) {
                let ids: Vec<i64> = plays
                    .iter()
                    .filter(|(_, p)| p.name.contains("slow") && !p.finished)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    let mut p = plays.remove(&id).unwrap();
                    self.complete(id, &mut p).await;
                    plays.insert(id, p);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
