// Jobs: the key's background jobs (GET /v1/jobs), the open ones' progress live from their event streams, and cancel.

import { JOB_ENDS, call, events } from "./api.js";
import { curlJson, showCalls } from "./calls.js";
import { $, h } from "./dom.js";

const OPEN = ["queued", "running"];
const FOLLOWED = 4; // open jobs followed live: a browser keeps 6 connections to a host, and the page needs the rest
let following = null; // aborts the streams of the jobs listed now (a new list follows its own)

async function cancel(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}/cancel`;
  showCalls($("#jobs-call"), [["curl", curlJson(path, undefined)]]);
  try {
    await call("POST", path);
  } catch (error) {
    $("#jobs-error").textContent = error.message;
  }
  await load();
}

function showProgress(cell, { step, total, stage }) {
  const what = stage === "interpolate" ? " pairs interpolated" : ""; // a video's second stage, after its steps
  cell.replaceChildren(h("progress", { max: total || 1, value: step, "aria-label": `progress of ${cell.dataset.job}` }), ` ${step} of ${total}${what}`);
}

/** Follow job `id`'s event stream: its row's status and progress as they change; the list again when it ends. */
async function follow(id, row, signal) {
  try {
    for await (const event of events(`/v1/jobs/${encodeURIComponent(id)}/events`, signal)) {
      if (event.type === "state") row.status.textContent = event.data.status;
      if (event.type === "running") row.status.textContent = "running";
      const at = event.type === "state" ? event.data.progress : event.type === "progress" ? event.data : null;
      if (at?.total) showProgress(row.progress, at);
      if (event.type in JOB_ENDS) return load();
    }
  } catch (error) {
    if (!signal.aborted) $("#jobs-error").textContent = error.message;
  }
}

/** The newest page of the key's jobs; the newest open ones followed live. */
export async function load() {
  following?.abort();
  following = new AbortController();
  $("#jobs-error").textContent = "";
  try {
    const page = await call("GET", "/v1/jobs?limit=20");
    const rows = page.data.map((job) => {
      const row = { status: h("td", {}, job.status), progress: h("td", { "data-job": job.id }) };
      showProgress(row.progress, job.progress);
      const open = OPEN.includes(job.status);
      const cancelButton = open ? h("button", { type: "button", onclick: () => cancel(job.id) }, `Cancel ${job.id}`) : "";
      row.element = h("tr", {}, h("td", {}, job.id), row.status, row.progress, h("td", {}, new Date(job.created_at * 1000).toLocaleTimeString()), h("td", {}, cancelButton));
      return { job, row, open };
    });
    $("#jobs-list").replaceChildren(...rows.map(({ row }) => row.element));
    for (const { job, row } of rows.filter(({ open }) => open).slice(0, FOLLOWED)) follow(job.id, row, following.signal);
  } catch (error) {
    $("#jobs-error").textContent = error.message;
  }
}

/** Wire the Jobs section. */
export function setUp() {
  $("#jobs-refresh").addEventListener("click", load);
}
