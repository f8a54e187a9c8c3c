// Characters: made once from pictures (POST /v1/characters), listed and deleted; Draw then names one (`character`,
// or its face as `identity`).

import { call } from "./api.js";
import { curlJson, showCalls } from "./calls.js";
import { $, fileBase64, h } from "./dom.js";
import { loadCharacters } from "./draw.js";

let pictures = []; // the chosen pictures, base64

function body() {
  const made = { name: $("#characters-name").value.trim(), images: pictures, face: $("#characters-face").value };
  if ($("#characters-model").value) made.model = $("#characters-model").value;
  const lora = $("#characters-lora").value.trim();
  if (lora) made.lora = { name: lora, scale: Number($("#characters-lora-scale").value) };
  for (const field of ["trigger_words", "note"]) {
    const text = $(`#characters-${field}`).value.trim();
    if (text) made[field] = text;
  }
  return made;
}

function updateCall() {
  showCalls($("#characters-call"), [["curl", curlJson("/v1/characters", body())]]);
}

function showRefusal(error) {
  const field = String(error.param ?? "").split(".")[0];
  const place = (field && $(`#characters-${CSS.escape(field)}-error`)) || $("#characters-error");
  place.textContent = error.message;
}

/** One character of the list: what it keeps, and a button that deletes it. */
function card(character) {
  const kept = [`${character.model}`, `${character.images} picture(s)`];
  if (character.face) kept.push("its face");
  if (character.lora) kept.push(`LoRA ${character.lora.name} at ${character.lora.scale}`);
  if (character.trigger_words) kept.push(`"${character.trigger_words}"`);
  const remove = h("button", { type: "button", "aria-label": `Delete ${character.name}` }, "Delete");
  remove.addEventListener("click", () => forget(character.name));
  return h(
    "li",
    { class: "character", "data-name": character.name },
    h("strong", {}, character.name),
    h("span", {}, ` ${kept.join(", ")} (${character.visibility})`),
    character.note ? h("p", {}, character.note) : "",
    remove,
  );
}

/** The key's characters (and the shared ones) listed; Draw's choices follow. */
export async function load() {
  const found = (await call("GET", "/v1/characters")).data;
  $("#characters-list").replaceChildren(...found.map(card));
  await loadCharacters().catch(() => {});
  return found;
}

/** The models and LoRAs the form offers (GET /v1/models, GET /v1/loras). */
async function loadChoices() {
  const select = $("#characters-model");
  const kept = select.value;
  const models = (await call("GET", "/v1/models")).data;
  select.replaceChildren(
    h("option", { value: "" }, "the stack's default"),
    ...models.map((model) => h("option", { value: model.id }, `${model.id} (${model.family})`)),
  );
  select.value = models.some((model) => model.id === kept) ? kept : "";
  const loras = (await call("GET", "/v1/loras").catch(() => ({ data: [] }))).data;
  $("#characters-loras").replaceChildren(
    ...loras.filter((lora) => lora.status === "ready").map((lora) => h("option", { value: lora.name })),
  );
}

async function forget(name) {
  $("#characters-status").textContent = `deleting ${name}`;
  try {
    await call("DELETE", `/v1/characters/${encodeURIComponent(name)}`);
    $("#characters-status").textContent = `${name}: deleted`;
  } catch (error) {
    $("#characters-status").textContent = "refused";
    showRefusal(error);
  }
  await load().catch(() => {});
}

async function make(event) {
  event.preventDefault();
  for (const error of document.querySelectorAll("#characters-form .error")) error.textContent = "";
  $("#characters-status").textContent = "making";
  try {
    const made = await call("POST", "/v1/characters", body());
    const face = made.face ? ", its face kept" : "";
    $("#characters-status").textContent = `${made.name}: made from ${made.images} picture(s)${face}`;
    await load();
  } catch (error) {
    $("#characters-status").textContent = "refused";
    showRefusal(error);
  }
}

/** Wire the Characters section. */
export function setUp() {
  $("#characters-images").addEventListener("change", async () => {
    pictures = await Promise.all([...$("#characters-images").files].map(fileBase64));
    updateCall();
  });
  $("#characters-form").addEventListener("submit", make);
  $("#characters-form").addEventListener("input", updateCall);
  updateCall();
}

/** What the tab shows when opened: its choices and the list. */
export function opened() {
  return Promise.all([loadChoices(), load()]).catch(() => {});
}
