// Calls to the public API: only this page's own origin, the key (typed once) kept in the tab's session storage.

const KEY = "easel.key";

/** The API key of this tab ("" while none was typed: an open stack). */
export const key = {
  get: () => sessionStorage.getItem(KEY) ?? "",
  set: (value) => (value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY)),
};

/** An API error: the status and the one error body's `message`, `type`, `param`. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.type = error?.type ?? null;
    this.param = error?.param ?? null;
    this.code = error?.code ?? null;
  }
}

function ownPath(path) {
  if (!path.startsWith("/") || path.startsWith("//")) throw new Error(`not this origin's path: ${path}`);
  return path;
}

function headers(extra = {}) {
  const found = key.get();
  return found ? { ...extra, Authorization: `Bearer ${found}` } : extra;
}

async function refusal(response) {
  const text = await response.text();
  try {
    return new ApiError(response.status, JSON.parse(text).error);
  } catch {
    return new ApiError(response.status, { message: text || response.statusText });
  }
}

/** `method path` with a JSON `body` (or a FormData `form`); the answer's JSON, or an ApiError. */
export async function call(method, path, body, { form, signal } = {}) {
  const init = { method, signal, credentials: "same-origin", headers: headers({ Accept: "application/json" }) };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(ownPath(path), init);
  if (!response.ok) throw await refusal(response);
  return response.status === 204 ? null : response.json();
}

/** `GET path` as a Blob (a video's MP4), or an ApiError. */
export async function fetchBlob(path) {
  const response = await fetch(ownPath(path), { credentials: "same-origin", headers: headers() });
  if (!response.ok) throw await refusal(response);
  return response.blob();
}

/** Whether `GET path` answers 2xx for this key (a scope probe). */
export async function allowed(path) {
  try {
    await call("GET", path);
    return true;
  } catch {
    return false;
  }
}

/** A job stream's final events, and the status each ends the job in. */
export const JOB_ENDS = { completed: "succeeded", failed: "failed", canceled: "canceled" };

/** The Server-Sent Events of `path` as {type, data} (read with fetch: EventSource cannot send the key). */
export async function* events(path, signal) {
  const response = await fetch(ownPath(path), { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await refusal(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) yield { type, data: JSON.parse(data) };
    }
  }
}
