//! Where an artifact link may lead. Artifact URLs come from submitters and labs, so the
//! coordinator vouches only for its own paths: a path on this coordinator (`/logs/7/1`) is a
//! link on the dashboard and a redirect of `GET /node/{id}/artifacts/{name}`; an absolute
//! `https://` or `http://` URL is shown as a link *with the URL in plain view*, never as a
//! redirect (no open redirect through the coordinator's name); anything else, a
//! protocol-relative `//host/x` included, is shown as text.

use crate::model::{Node, NodeKind};
use serde::Serialize;

/// Whether `url` is a path on this coordinator: one leading `/`, not `//` or `/\` (which
/// browsers take as another host), no control characters or spaces.
pub(crate) fn local_path(url: &str) -> bool {
    let b = url.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Whether `url` is an absolute web URL that may be shown as a link.
fn web_url(url: &str) -> bool {
    let rest = ["https://", "http://"].iter().find_map(|p| {
        url.get(..p.len())
            .filter(|s| s.eq_ignore_ascii_case(p))
            .map(|_| &url[p.len()..])
    });
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// One artifact on a node page.
#[derive(Debug, Serialize)]
pub(super) struct Artifact {
    name: String,
    url: String,
    /// A link on this coordinator.
    href: Option<String>,
    /// A link elsewhere, shown with its URL.
    external: Option<String>,
}

/// A node's artifacts as the node page shows them.
pub(super) fn artifacts(node: &Node) -> Vec<Artifact> {
    node.artifacts
        .iter()
        .map(|(name, url)| {
            let is_log = name == "log" || url.starts_with("/logs/");
            let href = if is_log && node.kind == NodeKind::Job {
                Some(format!("/ui/log/{}", node.id.0))
            } else {
                local_path(url).then(|| url.clone())
            };
            let external = (href.is_none() && web_url(url)).then(|| url.clone());
            Artifact {
                name: name.clone(),
                url: url.clone(),
                href,
                external,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_paths_are_local() {
        for ok in ["/logs/7/1", "/node/3", "/a?b=c"] {
            assert!(local_path(ok), "{ok}");
        }
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://other.example/k",
            "javascript:alert(1)",
            "",
            "logs/7",
            "/a\nb",
            "/a b",
        ] {
            assert!(!local_path(bad), "{bad}");
        }
    }

    #[test]
    fn web_urls_are_absolute_http() {
        assert!(web_url("https://storage.example/kernel/Image"));
        assert!(web_url("HTTP://storage.example/x"));
        for bad in [
            "https://",
            "//host/x",
            "ftp://x/y",
            "javascript:x",
            "https://a b",
        ] {
            assert!(!web_url(bad), "{bad}");
        }
    }
}
