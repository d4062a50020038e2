// ferry's Cockpit page: this node's services, live, from io.ferry.Helper1
// on the system bus (ObjectManager, PropertiesChanged of State, the Step
// signal); actions that reach other nodes (relocate, the cluster view) run
// `ferry` as the logged-in user with cockpit.spawn, never as root.
"use strict";

const BUS = "io.ferry.Helper1";
const ROOT = "/io/ferry/Helper1";
const SVC_IFACE = "io.ferry.Helper1.Service";
const MGR_IFACE = "io.ferry.Helper1.Manager";
const ERR_PREFIX = "io.ferry.Helper1.Error.";

let client = null;
let nodeName = "";
const services = {}; // object path -> view

function $(root, sel) { return root.querySelector(sel); }

// A bus error in ferry's own words, as the CLI prints it: a refusal reads
// "not authorized: <polkit action> …", never a raw exception.
function busMessage(ex) {
    const name = (ex && ex.name) || "";
    const msg = (ex && ex.message) || String(ex);
    if (name === ERR_PREFIX + "NotAuthorized") {
        const m = msg.match(/for (io\.ferry\.[a-z.-]+)/);
        return "not authorized: " + (m ? m[1] + " (" + msg + ")" : msg);
    }
    if (name.startsWith(ERR_PREFIX))
        return name.slice(ERR_PREFIX.length) + ": " + msg;
    return msg;
}

function showError(text) {
    const e = document.getElementById("error");
    e.textContent = text;
    e.hidden = !text;
}

function pad(s, n) { s = String(s); return s.length >= n ? s : s + " ".repeat(n - s.length); }

// The tutorial's status tree (core/src/status.rs render_tree), for this
// node: sync and hb compare with peers, which `ferry status` does.
function merge(a, b) {
    if (a === "n/a") return b;
    if (b === "n/a") return a;
    if (a === "warn" || b === "warn") return "warn";
    return a === b ? a : "warn";
}

function stateHere(r) {
    const [rid, state, , comments] = r;
    if (rid.startsWith("lease#") && state === "warn" && (comments[0] || "").startsWith("held by "))
        return "down";
    return state;
}

function availOf(resources) { return resources.map(stateHere).reduce(merge, "n/a") }

function renderTree(name, resources) {
    const avail = availOf(resources);
    const rank = { container: 0, vg: 1, fs: 2, ip: 3 };
    const kind = rid => rank[rid.split("#")[0]] ?? 4;
    const rs = resources.slice().sort((a, b) => kind(a[0]) - kind(b[0]));
    const out = [name, pad("overall", 26) + avail, pad("|- avail", 26) + avail];
    rs.forEach((r, i) => {
        const last = i + 1 === rs.length;
        const [rid, state, label, comments] = r;
        out.push("|  " + (last ? "'- " : "|- ") + pad(rid, 15) + ".... " + pad(state, 9) + label);
        const lead = last ? "|" : "|  |  |";
        for (const c of comments)
            for (const line of c.replace(/\n$/, "").split("\n"))
                out.push(pad(lead, 35) + "# " + line);
    });
    return out.join("\n");
}

function ms(t0) { return Math.round(performance.now() - t0); }

function addStep(v, where, step, took, result) {
    const tr = document.createElement("tr");
    const t0 = v.action ? v.action.t0 : v.pageT0;
    [String(ms(t0)), where, step, took, result].forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 4 && text.startsWith("failed")) td.className = "failed";
        tr.appendChild(td);
    });
    $(v.el, ".steps tbody").appendChild(tr);
}

function setResult(v, cls, text) {
    const r = $(v.el, ".result");
    r.className = "result " + cls;
    r.textContent = text;
    r.hidden = false;
}

// Status and audit, read again whenever the helper says something moved;
// a burst of steps (ferry start is ~10 calls) is read once, and not at all
// while this page's own action runs (reading status runs vgs and docker in
// the helper: the action would only get slower).
function refresh(v) {
    clearTimeout(v.timer);
    v.timer = setTimeout(() => {
        if (v.action) return;
        client.call(v.path, SVC_IFACE, "Status", [])
                .then(([res]) => {
                    $(v.el, ".tree").textContent = renderTree(v.name, res);
                    setBadge(v, availOf(res));
                })
                .catch(ex => { $(v.el, ".tree").textContent = busMessage(ex) });
        client.call(v.path, SVC_IFACE, "AuditLog", [])
                .then(([lines]) => {
                    const a = $(v.el, ".audit");
                    a.textContent = lines.length ? lines.join("\n") : "(no audit records since the helper started)";
                    a.scrollTop = a.scrollHeight;
                })
                .catch(ex => { $(v.el, ".audit").textContent = busMessage(ex) });
    }, 60);
}

// Where the service runs on every node: over ssh, so through ferry.
function refreshCluster(v) {
    cockpit.spawn(["ferry", "status", v.name, "--all-nodes"], { err: "message" })
            .then(out => { $(v.el, ".cluster").textContent = out.trimEnd() })
            .catch(ex => { $(v.el, ".cluster").textContent = "ferry: " + (ex.message || ex.problem) });
}

// The badge: the State property (PropertiesChanged), or the status just
// read, whichever came last.
function updateHeader(v) { setBadge(v, v.proxy.State || "?") }

function setBadge(v, st) {
    const b = $(v.el, ".state");
    b.textContent = st;
    b.className = "badge state " + st.replace("/", "");
    v.el.dataset.state = st;
}

function fillTargets(v) {
    const sel = $(v.el, ".target");
    const nodes = (v.proxy.Nodes || []).filter(n => n !== nodeName);
    sel.textContent = "";
    for (const n of nodes) {
        const o = document.createElement("option");
        o.value = o.textContent = n;
        sel.appendChild(o);
    }
    $(v.el, ".relocate").disabled = nodes.length === 0;
}

// Run one ferry action as the logged-in user; its output lines are its
// steps, shown as they arrive with the time since the click.
function runFerry(v, argv) {
    if (v.action) return;
    v.action = { t0: performance.now(), buf: "" };
    v.el.dataset.action = "running";
    $(v.el, ".steps tbody").textContent = "";
    $(v.el, ".downtime").hidden = true;
    v.el.querySelectorAll("button").forEach(b => { b.disabled = true });
    const cmd = ["ferry"].concat(argv);
    setResult(v, "running", "running: " + cmd.join(" "));
    const line = l => {
        if (!l.trim()) return;
        addStep(v, "ferry", l, "", "");
        const m = l.match(/downtime (\d+) ms/);
        if (m) {
            const d = $(v.el, ".downtime");
            d.textContent = "downtime " + m[1] + " ms";
            d.hidden = false;
        }
    };
    const done = (ok, text) => {
        if (v.action.buf) line(v.action.buf);
        setResult(v, ok ? "ok" : "failed", text);
        v.el.dataset.action = ok ? "ok" : "failed";
        v.action = null;
        v.el.querySelectorAll("button").forEach(b => { b.disabled = false });
        fillTargets(v);
        refresh(v);
        refreshCluster(v);
    };
    cockpit.spawn(cmd, { err: "message" })
            .stream(data => {
                const a = v.action;
                a.buf += data;
                const lines = a.buf.split("\n");
                a.buf = lines.pop();
                lines.forEach(line);
            })
            .then(() => done(true, cmd.join(" ") + ": done in " + ms(v.action.t0) + " ms"))
            .catch(ex => {
                // ferry's own message (its stderr), and its exit status
                const why = (ex.message || ex.problem || String(ex)).trim();
                const status = ex.exit_status != null ? " (exit " + ex.exit_status + ")" : "";
                done(false, cmd.join(" ") + " failed" + status + ":\n" + why);
            });
}

function addService(proxy) {
    if (services[proxy.path]) return services[proxy.path];
    const el = document.getElementById("service-tpl").content.firstElementChild.cloneNode(true);
    const v = { path: proxy.path, proxy, name: proxy.Name, el, action: null, timer: null, pageT0: performance.now() };
    el.dataset.service = v.name;
    $(el, ".name").textContent = v.name;
    const cluster = document.createElement("pre");
    cluster.className = "cluster";
    $(el, ".tree").after(cluster);
    $(el, ".start").addEventListener("click", () => runFerry(v, ["start", v.name]));
    $(el, ".stop").addEventListener("click", () => runFerry(v, ["stop", v.name]));
    $(el, ".relocate").addEventListener("click", () => runFerry(v, ["relocate", v.name, "--to", $(el, ".target").value]));
    services[proxy.path] = v;
    document.getElementById("services").appendChild(el);
    updateHeader(v);
    fillTargets(v);
    refresh(v);
    refreshCluster(v);
    return v;
}

function removeService(proxy) {
    const v = services[proxy.path];
    if (!v) return;
    v.el.remove();
    delete services[proxy.path];
}

function start() {
    client = cockpit.dbus(BUS, { bus: "system" });
    client.addEventListener("close", (ev, options) => {
        showError("lost the system bus connection" + (options.problem ? ": " + options.problem : ""));
    });
    const mgr = client.proxy(MGR_IFACE, ROOT);
    mgr.wait(() => {
        if (!mgr.valid) {
            showError("io.ferry.Helper1 is not on the system bus: is ferry-helper running?");
            return;
        }
        nodeName = mgr.NodeName;
        document.getElementById("node").textContent = nodeName;
        document.getElementById("conn").textContent = "ferry-helper " + mgr.Version +
            " · live: State changes and each step arrive as D-Bus signals";
        Object.values(services).forEach(fillTargets);
    });
    const proxies = client.proxies(SVC_IFACE, ROOT);
    proxies.addEventListener("added", (ev, p) => addService(p));
    proxies.addEventListener("removed", (ev, p) => removeService(p));
    proxies.addEventListener("changed", (ev, p) => {
        const v = services[p.path];
        if (!v) return;
        updateHeader(v);
        refresh(v);
        if (!v.action) refreshCluster(v);
    });
    proxies.wait(() => {
        Object.values(proxies).forEach(addService);
        document.body.dataset.ready = "1";
    });
    // One signal per privileged call, whoever made it (this page, `ferry`
    // in a shell, a peer's relocation): the step list and a fresh status.
    client.subscribe({ interface: SVC_IFACE, member: "Step" }, (path, iface, signal, args) => {
        const v = services[path];
        if (!v) return;
        const [rid, action, result, message, elapsed] = args;
        addStep(v, nodeName, (rid ? rid + " " : "") + action, elapsed + " ms",
                result + (message ? ": " + message : ""));
        refresh(v);
    });
}

document.addEventListener("DOMContentLoaded", start);
