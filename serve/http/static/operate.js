// Operate (admin keys only): the stack's readiness, its models (added, replaced, removed, their circuit and fallback
// chain), LoRA upload and removal.

import { call } from "./api.js";
import { curlForm, curlJson, showCalls } from "./calls.js";
import { $, h } from "./dom.js";
import { loadLoras, showError } from "./draw.js";

function table(headings, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, ...headings.map((heading) => h("th", { scope: "col" }, heading)))),
    h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((cell) => h("td", {}, cell))))),
  );
}

async function readiness() {
  const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  const models = Object.entries(body.models ?? {}).map(([name, ready]) => [name, ready ? "ready" : "not ready"]);
  $("#readiness").replaceChildren(
    h("p", { role: "status" }, response.ok ? "The stack is ready." : `Not ready (${response.status}).`),
    table(["Triton model", "state"], models),
  );
}

/** `change` (a call), then the models again; `done` said once it is made, or its refusal below the table. */
async function changed(change, done, shown) {
  showCalls($("#model-call"), [["curl", shown]]);
  $("#models-error").textContent = "";
  $("#models-status").textContent = "";
  try {
    await change();
    await models();
    $("#models-status").textContent = done;
  } catch (error) {
    $("#models-error").textContent = error.message;
    await models();
  }
}

function chainCell(m) {
  const id = `chain-${m.id}`;
  const input = h("input", { id, value: (m.fallback ?? []).join(","), placeholder: "none", autocomplete: "off" });
  const chain = () => input.value.split(",").map((link) => link.trim()).filter(Boolean);
  const path = `/v1/models/${encodeURIComponent(m.id)}/fallback`;
  const set = () =>
    changed(
      () => call("PUT", path, { chain: chain() }),
      `${m.id}'s fallback chain: ${chain().join(", ") || "none"}`,
      curlJson(path, { chain: chain() }, undefined, "PUT"),
    );
  return h(
    "span",
    { class: "row" },
    h("label", { for: id, class: "visually-hidden" }, `Fallback chain of ${m.id}`),
    input,
    h("button", { type: "button", onclick: set }, `Set chain of ${m.id}`),
  );
}

async function models() {
  const list = (await call("GET", "/v1/models")).data;
  const remove = (m) => {
    const path = `/v1/models/${encodeURIComponent(m.id)}`;
    return changed(() => call("DELETE", path), `${m.id} removed`, curlJson(path, undefined, undefined, "DELETE"));
  };
  $("#models").replaceChildren(
    table(
      ["model", "family", "native size", "loaded", "version", "circuit", "fallback", "remove"],
      list.map((m) => [
        m.id,
        m.family,
        m.native_size,
        m.loaded ? "yes" : "no",
        String(m.version),
        m.circuit,
        chainCell(m),
        h("button", { type: "button", onclick: () => remove(m) }, `Remove ${m.id}`),
      ]),
    ),
  );
}

/** Add a model from a built engine folder (`replace`: serve it as the named model's next version). */
async function modelSent(event, replace = false) {
  event.preventDefault();
  const form = $("#model-form");
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
  const name = $("#model-name").value.trim();
  const engineDir = $("#model-engine_dir").value.trim();
  $("#model-status").textContent = replace ? "replacing" : "adding";
  const path = replace ? `/v1/models/${encodeURIComponent(name)}` : "/v1/models";
  const sent = replace ? { engine_dir: engineDir } : { name, engine_dir: engineDir };
  showCalls($("#model-call"), [["curl", curlJson(path, sent, undefined, replace ? "PUT" : "POST")]]);
  try {
    const done = await call(replace ? "PUT" : "POST", path, sent);
    $("#model-status").textContent = `${done.id ?? name}: ${replace ? "replaced" : "added"}`;
  } catch (error) {
    $("#model-status").textContent = "refused";
    showError(form, Object.assign(error, { param: error.param && `model-${error.param}` }), $("#model-error"));
  }
  await models();
}

function updateModelCall() {
  const body = { name: $("#model-name").value || "NAME", engine_dir: $("#model-engine_dir").value || "/path/to/engines" };
  showCalls($("#model-call"), [["curl", curlJson("/v1/models", body)]]);
}

async function loras() {
  const list = (await call("GET", "/v1/loras")).data;
  const remove = async (name) => {
    const path = `/v1/loras/${encodeURIComponent(name)}`;
    showCalls($("#lora-call"), [["curl", curlJson(path, undefined, undefined, "DELETE")]]);
    try {
      await call("DELETE", path);
    } catch (error) {
      $("#lora-error").textContent = error.message;
    }
    await loras();
  };
  $("#lora-list").replaceChildren(
    table(
      ["LoRA", "model", "status", "source", "bytes", "remove"],
      list.map((l) => [
        l.name,
        l.model,
        l.status,
        l.source,
        String(l.bytes ?? ""),
        l.source === "upload" ? h("button", { type: "button", onclick: () => remove(l.name) }, `Remove ${l.name}`) : "",
      ]),
    ),
  );
}

async function upload(event) {
  event.preventDefault();
  const form = $("#lora-form");
  for (const error of form.querySelectorAll(".error")) error.textContent = "";
  const data = new FormData();
  const file = $("#lora-file").files[0];
  data.set("name", $("#lora-name").value);
  if (file) data.set("file", file, file.name);
  if ($("#lora-model").value) data.set("model", $("#lora-model").value);
  data.set("visibility", $("#lora-visibility").value);
  $("#lora-status").textContent = "uploading";
  try {
    const added = await call("POST", "/v1/loras", undefined, { form: data });
    $("#lora-status").textContent = `${added.name}: ${added.status}`;
    await Promise.all([loras(), loadLoras()]);
  } catch (error) {
    $("#lora-status").textContent = "refused";
    const param = { file: "lora-file", name: "lora-name", model: "lora-model" }[error.param] ?? error.param;
    showError(form, Object.assign(error, { param }), $("#lora-error"));
  }
}

function updateCall() {
  const fields = { name: $("#lora-name").value || "NAME", file: `@${$("#lora-file").files[0]?.name ?? "lora.safetensors"}` };
  showCalls($("#lora-call"), [["curl", curlForm("/v1/loras", fields)]]);
}

/** Fill the Operate section (called only for a key that may administer the stack). */
export async function load() {
  await Promise.all([readiness(), models(), loras()]).catch((error) => ($("#operate-error").textContent = error.message));
}

/** Wire the Operate section. */
export function setUp() {
  $("#model-form").addEventListener("submit", (event) => modelSent(event));
  $("#model-replace").addEventListener("click", (event) => modelSent(event, true));
  $("#model-form").addEventListener("input", updateModelCall);
  updateModelCall();
  $("#lora-form").addEventListener("submit", upload);
  $("#lora-form").addEventListener("input", updateCall);
  $("#operate-refresh").addEventListener("click", load);
  updateCall();
}
