// Easel Studio's entry: the key, what it may do (scopes probed with read-only calls), the sections as tabs.

import { allowed, call, key } from "./api.js";
import * as characters from "./characters.js";
import { $ } from "./dom.js";
import * as draw from "./draw.js";
import * as faces from "./faces.js";
import * as history from "./history.js";
import * as jobs from "./jobs.js";
import * as operate from "./operate.js";
import * as vectorize from "./vectorize.js";
import * as video from "./video.js";

const studio = { jobs: false, admin: false }; // what the key may do, shared with the sections
const LOADERS = {
  characters: () => characters.opened(),
  history: () => history.load(),
  jobs: () => jobs.load(),
  operate: () => operate.load(),
  video: () => video.loadModels().catch(() => {}), // a refused key: the default model alone
};

/** Show section `name` (its tab selected), and load what it shows. */
function showTab(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.section === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`#${tab.dataset.section}`).hidden = !selected;
  }
  LOADERS[name]?.();
}

/** Learn what the key may do; hide what it may not (Operate: admin keys only). */
async function probe() {
  const status = $("#key-status");
  status.textContent = "checking the key";
  try {
    await call("GET", "/v1/models");
  } catch (error) {
    status.textContent = error.status === 401 ? "This stack needs an API key: type it above." : error.message;
    $("#key").focus();
    return;
  }
  const [jobsOk, adminOk, facesOk] = await Promise.all([
    allowed("/v1/jobs?limit=1"),
    allowed("/v1/experiments"),
    faces.served(),
  ]);
  $("#tab-faces").hidden = !facesOk;
  studio.jobs = jobsOk;
  studio.admin = adminOk;
  $("#tab-jobs").hidden = !jobsOk;
  $("#tab-operate").hidden = !adminOk;
  if (!adminOk) {
    $("#operate").hidden = true;
    for (const id of ["readiness", "models", "lora-list"]) $(`#${id}`).replaceChildren();
  }
  const scopes = [jobsOk && "jobs", adminOk && "admin"].filter(Boolean);
  status.textContent = `${key.get() ? "Key in use" : "No key (an open stack)"}${scopes.length ? `: with ${scopes.join(", ")}` : ""}.`;
  await draw.refresh();
  const shown = document.querySelector("[role=tab][aria-selected=true]");
  if (shown?.hidden) showTab("draw");
}

function setUpKey() {
  $("#key").value = key.get();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    key.set($("#key").value.trim());
    probe();
  });
  $("#forget-key").addEventListener("click", () => {
    key.set("");
    $("#key").value = "";
    probe();
  });
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => showTab(tab.dataset.section));
    tab.addEventListener("keydown", (event) => {
      const visible = tabs.filter((t) => !t.hidden);
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = visible[(visible.indexOf(tab) + step + visible.length) % visible.length];
      next.focus();
      showTab(next.dataset.section);
    });
  }
}

setUpKey();
setUpTabs();
draw.setUp(studio);
history.setUp(showTab);
vectorize.setUp();
faces.setUp();
characters.setUp();
video.setUp();
jobs.setUp();
operate.setUp();
showTab("draw");
probe().finally(() => document.body.setAttribute("data-ready", "true"));
