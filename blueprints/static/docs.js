// Renders openapi.json: one collapsible block per operation, with its parameters, its answers'
// schemas and a form to try it. No dependencies, nothing fetched from other hosts.
"use strict";

const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const kid of kids) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return node;
};

function resolve(spec, schema, depth = 0) {
  // Inline $refs (bounded depth) so a schema reads as one JSON value.
  if (!schema || depth > 6) return schema;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve(spec, spec.components.schemas[name], depth + 1);
  }
  if (Array.isArray(schema)) return schema.map((s) => resolve(spec, s, depth + 1));
  if (typeof schema !== "object") return schema;
  const out = {};
  for (const [k, v] of Object.entries(schema)) out[k] = resolve(spec, v, depth + 1);
  return out;
}

function paramTable(params) {
  const table = el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"),
    el("th", {}, "required"), el("th", {}, "schema")));
  for (const p of params) {
    table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "yes" : ""), el("td", {}, el("code", {}, JSON.stringify(p.schema)))));
  }
  return table;
}

function tryForm(spec, path, method, op) {
  const form = el("form");
  const inputs = {};
  for (const p of op.parameters || []) {
    inputs[p.name] = el("input", { name: p.name, placeholder: p.required ? "required" : "optional" });
    form.append(el("div", {}, el("label", {}, `${p.name} (${p.in}) `), inputs[p.name]));
  }
  let body = null;
  if (op.requestBody) {
    body = el("textarea", { rows: 5, cols: 70, placeholder: "JSON body" });
    form.append(el("div", {}, body));
  }
  const out = el("pre");
  form.append(el("button", { type: "submit" }, "Send"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let url = "." + path;
    const query = new URLSearchParams();
    for (const p of op.parameters || []) {
      const value = inputs[p.name].value;
      if (!value) continue;
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(value));
      else query.set(p.name, value);
    }
    const headers = { "Content-Type": "application/json" };
    const key = document.getElementById("apikey").value;
    if (key) headers["X-API-Key"] = key;
    const started = performance.now();
    try {
      const res = await fetch(url + (query.toString() ? "?" + query : ""),
        { method: method.toUpperCase(), headers, body: body ? body.value : undefined });
      const text = await res.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
      out.textContent = `${res.status} in ${Math.round(performance.now() - started)} ms\n` +
        `X-Request-ID: ${res.headers.get("X-Request-ID")}\n\n${shown}`;
    } catch (err) {
      out.textContent = String(err);
    }
  });
  return form;
}

function render(spec) {
  document.getElementById("title").textContent = `${spec.info.title} (v${spec.info.version})`;
  document.getElementById("desc").textContent = spec.info.description || "";
  const root = document.getElementById("ops");
  root.textContent = "";
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const body = el("div", { class: "body" });
      if ((op.parameters || []).length) body.append(el("h4", {}, "Parameters"), paramTable(op.parameters));
      if (op.requestBody) {
        const schema = resolve(spec, op.requestBody.content["application/json"].schema);
        body.append(el("h4", {}, "Body"), el("pre", {}, JSON.stringify(schema, null, 2)));
      }
      body.append(el("h4", {}, "Answers"));
      for (const [status, res] of Object.entries(op.responses)) {
        const content = res.content && res.content["application/json"];
        const schema = content ? JSON.stringify(resolve(spec, content.schema), null, 2) : "(no body)";
        body.append(el("details", {}, el("summary", {}, `${status}: ${res.description}`), el("pre", {}, schema)));
      }
      body.append(el("h4", {}, "Try it"), tryForm(spec, path, method, op));
      root.append(el("details", { class: "op" },
        el("summary", {}, el("span", { class: `m ${method}` }, method), el("code", {}, "/api/v1" + path),
          " ", op.summary || ""), body));
    }
  }
}

fetch("openapi.json").then((r) => r.json()).then(render).catch((err) => {
  document.getElementById("ops").textContent = `Could not load openapi.json: ${err}`;
});
