//! How KTAP subtests and documents end: a result line closes the innermost subtest (its
//! result combined with its members', its plan checked), a subtest left without one is cut
//! (`incomplete`, with the tests its plan still promised), a closed subtest is handed out and
//! filed under its parent, and a document's end checks the top-level plan.

use super::*;

impl Ktap {
    /// The result line of the innermost subtest.
    pub(super) fn close_top(&mut self, no: u64, raw: &[u8], r: ResultLine<'_>, out: &mut Out) {
        if self.stack.len() < 2 {
            return;
        }
        let Some(mut b) = self.stack.pop() else {
            return;
        };
        let pidx = self.stack.len() - 1;
        let p = &mut self.stack[pidx];
        p.done += 1;
        check_number(p.done, r.num, no, out);
        // A `Name`: no allocation when the tree is not kept and the name is short.
        let name = Name::given(r.name)
            .or_else(|| b.name.take().and_then(|n| Name::given(n.as_bytes())))
            .or_else(|| p.hint.take().and_then(|h| Name::given(h.as_bytes())))
            .unwrap_or_else(|| Name::number(r.num.unwrap_or(p.done)));
        p.hint = None;
        let own = r.result();
        let mut result = match b.children.tally.result() {
            None => own,
            Some(kids) => combine(own, kids),
        };
        let mut error = None;
        if let Some(reason) = b.bailed.take() {
            if result != NodeResult::Fail {
                result = NodeResult::Incomplete;
            }
            error = Some(reason);
        }
        if let Some(plan) = b.plan {
            if b.done < plan {
                out.issues.push(
                    no,
                    format!("{name}: planned {plan} subtests, {} reported", b.done),
                );
                if matches!(result, NodeResult::Pass | NodeResult::Skip) {
                    result = NodeResult::Incomplete;
                }
                error.get_or_insert_with(|| {
                    format!("planned {plan} subtests but only {} reported", b.done)
                });
            } else if b.done > plan {
                out.issues.push(
                    no,
                    format!("{name}: planned {plan} subtests, {} reported", b.done),
                );
            }
        }
        let log_excerpt = match result {
            NodeResult::Fail | NodeResult::Incomplete => {
                // The parent's lines came before the subtest's.
                let mut ex = std::mem::take(&mut p.diag);
                ex.append(&b.diag);
                ex.push(raw);
                ex.text()
            }
            NodeResult::Skip => Some(excerpt_line(raw)),
            NodeResult::Pass => None,
        };
        p.diag.clear();
        if out.keep_tree {
            let mut node = TestNode::leaf(String::from(name), result);
            node.error = error;
            node.log_excerpt = log_excerpt;
            self.finish_block(pidx, b, node, no, out);
            return;
        }
        // No tree: hand the result out without building a `TestNode`.
        let node = CompletedNode {
            name,
            result,
            details: Details {
                log_excerpt,
                error,
                ..Details::default()
            }
            .boxed(),
        };
        if out.progress {
            self.ensure_path(pidx);
        }
        let p = &self.stack[pidx];
        let parent = (!p.root).then_some(p.id);
        let path = p.path.as_ref().unwrap_or(&self.root_path);
        out.emit_node(b.id, parent, path, node, b.children.count == 0, no);
        self.children_mut(pidx).record(result, None);
    }

    /// The innermost subtest ended without its result line.
    pub(super) fn cut_top(&mut self, no: u64, reason: &str, out: &mut Out) {
        let keep = out.keep_tree;
        if self.stack.len() < 2 {
            return;
        }
        if out.progress {
            self.ensure_path(self.stack.len() - 1);
        }
        let Some(mut b) = self.stack.pop() else {
            return;
        };
        self.cut = true;
        let mut excerpt = b.diag.text();
        if let Some(plan) = b.plan
            && b.done < plan
        {
            let name = b
                .hint
                .take()
                .or_else(|| diag_test_name(&b.diag, self.leadin.as_ref()))
                .unwrap_or_else(|| (b.done + 1).to_string());
            let mut leaf =
                TestNode::leaf(b.children.unique_name(keep, name), NodeResult::Incomplete);
            leaf.error = Some(reason.to_string());
            leaf.log_excerpt = excerpt.take();
            let id = out.new_id();
            let path = b.path.as_ref().unwrap_or(&self.root_path);
            out.emit(id, Some(b.id), path, &leaf, true, no);
            b.children.push(keep, leaf);
            // The tests the plan promised after it never ran: each is `incomplete` too, as
            // kunit.py counts them ("missing expected subtest"), up to a bound that a
            // hostile plan cannot turn into memory.
            let missing = plan - b.done - 1;
            let listed = missing.min(MAX_MISSING);
            for k in 0..listed {
                let num = b.done + 2 + k;
                let mut leaf = TestNode::leaf(
                    b.children.unique_name(keep, num.to_string()),
                    NodeResult::Incomplete,
                );
                leaf.error = Some(format!("missing expected subtest {num} of 1..{plan}"));
                let id = out.new_id();
                out.emit(id, Some(b.id), path, &leaf, true, no);
                b.children.push(keep, leaf);
            }
            if missing > listed {
                out.issues.push(
                    no,
                    format!(
                        "{} more missing subtests of the plan 1..{plan} not listed",
                        missing - listed
                    ),
                );
            }
        }
        let pidx = self.stack.len() - 1;
        let p = &mut self.stack[pidx];
        p.done += 1;
        let name = b.name.take().unwrap_or_else(|| p.done.to_string());
        let mut node = TestNode::leaf(name, NodeResult::Incomplete);
        node.error = Some(reason.to_string());
        node.log_excerpt = excerpt;
        self.finish_block(pidx, b, node, no, out);
    }

    /// Hands out a closed subtest and files it under its parent.
    pub(super) fn finish_block(
        &mut self,
        pidx: usize,
        b: Block,
        mut node: TestNode,
        no: u64,
        out: &mut Out,
    ) {
        let keep = out.keep_tree;
        if out.progress {
            self.ensure_path(pidx);
        }
        let p = &self.stack[pidx];
        let parent = (!p.root).then_some(p.id);
        let path = p
            .path
            .clone()
            .unwrap_or_else(|| Arc::clone(&self.root_path));
        let children = self.children_mut(pidx);
        node.name = children.unique_name(keep, node.name);
        let result = node.result;
        let kept = out
            .emit_owned(b.id, parent, &path, node, b.children.count == 0, no)
            .map(|mut n| {
                n.tests = b.children.nodes;
                n
            });
        children.record(result, kept);
    }

    /// Closes the current document: open subtests are incomplete, an unmet top-level
    /// plan makes the run incomplete.
    pub(super) fn end_document(&mut self, no: u64, reason: &str, out: &mut Out) {
        while self.stack.len() > 1 {
            self.cut_top(no, reason, out);
        }
        if let Some(root) = self.stack.pop()
            && let Some(plan) = root.plan
        {
            if root.done < plan {
                self.cut = true;
                out.issues.push(
                    root.line,
                    format!(
                        "the plan 1..{plan} was not met: {} top-level results reported",
                        root.done
                    ),
                );
            } else if root.done > plan {
                out.issues.push(
                    root.line,
                    format!(
                        "the plan 1..{plan} was exceeded: {} top-level results reported",
                        root.done
                    ),
                );
            }
        }
    }
}
