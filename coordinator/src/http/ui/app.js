// labwire dashboard: follows the coordinator's event stream (/ui/stream, from the sequence
// number the page was rendered at) and updates the open page without reloading it:
// state and result badges of every node shown, new children in a node's tree, new checkouts,
// and the labs and queue pages (their main part is fetched again, at most once a second).
"use strict";
(function () {
  const live = document.getElementById("live");
  const seq = document.body.dataset.seq || "0";
  const path = location.pathname;
  // Pages made of counts and lists are fetched again (their main part) on events.
  const refreshWhole = path === "/ui/labs" || path === "/ui/queue" || path === "/ui/checkouts";
  let refreshTimer = null;

  function text(el, t) { el.textContent = t; }

  function badge(cls, field, value) {
    const s = document.createElement("span");
    s.className = "badge " + cls + value;
    s.dataset.field = field;
    s.textContent = value;
    return s;
  }

  function updateNode(n) {
    const id = String(n.id);
    document.querySelectorAll('[data-node-id="' + id + '"]').forEach(function (el) {
      // Only the node's own badges, not those of its children.
      el.querySelectorAll("[data-field]").forEach(function (b) {
        if (b.closest("[data-node-id]") !== el) return;
        if (b.dataset.field === "state") { b.className = "badge state s-" + n.state; text(b, n.state); }
        if (b.dataset.field === "result") { const r = n.result || ""; b.className = "badge result r-" + r; text(b, r); }
      });
      el.classList.add("flash");
      setTimeout(function () { el.classList.remove("flash"); }, 1500);
    });
    if (n.parent != null && !document.querySelector('li[data-node-id="' + id + '"]')) {
      document.querySelectorAll('ul[data-children-of="' + n.parent + '"]').forEach(function (ul) {
        const li = document.createElement("li");
        li.dataset.nodeId = id;
        li.className = "flash";
        const k = document.createElement("span"); k.className = "kind"; k.textContent = n.kind;
        const a = document.createElement("a"); a.href = "/ui/node/" + id; a.textContent = n.name;
        const sub = document.createElement("ul"); sub.dataset.childrenOf = id;
        li.append(k, " ", a, " ", badge("state s-", "state", n.state), " ",
                  badge("result r-", "result", n.result || ""), sub);
        ul.appendChild(li);
      });
    }
    if (n.kind === "checkout" && path === "/ui/checkouts" && !document.querySelector('tr[data-node-id="' + id + '"]')) {
      const tbody = document.querySelector("#checkouts tbody");
      if (tbody) {
        const empty = tbody.querySelector("tr.empty");
        if (empty) empty.remove();
        const tr = document.createElement("tr");
        tr.dataset.nodeId = id;
        tr.className = "flash";
        const rev = (n.data && n.data.kernel_revision) || {};
        const cells = [null, rev.tree || "", rev.branch || "", (rev.commit || "").slice(0, 12), null, "new", n.created || ""];
        cells.forEach(function (c, i) {
          const td = document.createElement("td");
          if (i === 0) { const a = document.createElement("a"); a.href = "/ui/node/" + id; a.textContent = id; td.append(a); }
          else if (i === 4) { td.append(badge("state s-", "state", n.state), " ", badge("result r-", "result", n.result || "")); }
          else td.textContent = c;
          tr.append(td);
        });
        tbody.prepend(tr);
      }
    }
  }

  function refreshMain() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      fetch(location.href, { credentials: "same-origin" }).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (!html) return;
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.querySelector("main");
        if (fresh) document.querySelector("main").replaceWith(fresh);
      });
    }, 1000);
  }

  if (!window.EventSource || !live) return;
  const es = new EventSource("/ui/stream?from=" + encodeURIComponent(seq));
  es.onopen = function () { live.className = "live on"; text(live, "● live"); };
  es.onerror = function () { live.className = "live"; text(live, "○ reconnecting"); };
  function onEvent(ev) {
    let ce;
    try { ce = JSON.parse(ev.data); } catch (e) { return; }
    if (ce && ce.data) updateNode(ce.data);
    live.dataset.lastEvent = ev.lastEventId;
    text(live, "● live · event " + ev.lastEventId);
    // The page's own node finished: show its final facts and log.
    const own = document.querySelector("h1[data-node-id]");
    if (refreshWhole || (own && ce && ce.data && String(ce.data.id) === own.dataset.nodeId && ce.data.state === "done")) {
      refreshMain();
    }
  }
  ["org.labwire.node.created", "org.labwire.node.updated"].forEach(function (t) {
    es.addEventListener(t, onEvent);
  });
  es.addEventListener("message", onEvent);
})();
