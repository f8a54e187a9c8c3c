// Jobs: the key's background jobs (GET /v1/jobs) with their progress, and cancel.

import { call } from "./api.js";
import { $, h } from "./dom.js";

const OPEN = ["queued", "running"];

async function cancel(id) {
  try {
    await call("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
  } catch (error) {
    $("#jobs-error").textContent = error.message;
  }
  await load();
}

/** The newest page of the key's jobs. */
export async function load() {
  $("#jobs-error").textContent = "";
  try {
    const page = await call("GET", "/v1/jobs?limit=20");
    $("#jobs-list").replaceChildren(
      ...page.data.map((job) =>
        h(
          "tr",
          {},
          h("td", {}, job.id),
          h("td", {}, job.status),
          h("td", {}, h("progress", { max: job.progress.total || 1, value: job.progress.step, "aria-label": `progress of ${job.id}` }), ` ${job.progress.step} of ${job.progress.total}`),
          h("td", {}, new Date(job.created_at * 1000).toLocaleTimeString()),
          h("td", {}, OPEN.includes(job.status) ? h("button", { type: "button", onclick: () => cancel(job.id) }, `Cancel ${job.id}`) : ""),
        ),
      ),
    );
  } catch (error) {
    $("#jobs-error").textContent = error.message;
  }
}

/** Wire the Jobs section. */
export function setUp() {
  $("#jobs-refresh").addEventListener("click", load);
}
