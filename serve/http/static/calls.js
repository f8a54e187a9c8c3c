// "Show the call": the request behind an action, as curl and as the openai Python client, with a copy button.

import { h } from "./dom.js";
import { key } from "./api.js";

const OPENAI_ARGS = ["prompt", "model", "n", "size", "response_format", "quality", "style", "user"];
/** What `client.images.generate` takes as its own arguments; every other field goes in `extra_body`. */

function shellQuote(text) {
  return `'${text.replaceAll("'", `'"'"'`)}'`;
}

function python(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") return String(value);
  const inner = `${indent}    `;
  if (Array.isArray(value)) return `[${value.map((item) => python(item, indent)).join(", ")}]`;
  const items = Object.entries(value).map(([name, item]) => `${inner}${JSON.stringify(name)}: ${python(item, inner)},`);
  return items.length ? `{\n${items.join("\n")}\n${indent}}` : "{}";
}

function authLines() {
  return key.get() ? [`  -H "Authorization: Bearer $EASEL_KEY"`] : [];
}

/** `POST path` with a JSON body, as curl; `save`: a Python line that writes the answer's first image; `method`:
 * another method than POST (a body of `undefined`: none). */
export function curlJson(path, body, save, method = "POST") {
  const named = method !== "POST" || body === undefined; // curl's own: POST with -d, GET without
  const lines = [`curl -s${named ? ` -X ${method}` : ""} ${location.origin}${path}`, ...authLines()];
  if (body !== undefined) lines.push(`  -H 'Content-Type: application/json'`, `  -d ${shellQuote(JSON.stringify(body))}`);
  const text = lines.join(" \\\n");
  return save ? `${text} \\\n  | python -c ${shellQuote(save)}` : text;
}

/** `POST path` with a form (`fields`: name -> value; a value starting with @ is a file), as curl. */
export function curlForm(path, fields) {
  const lines = [`curl -s ${location.origin}${path}`, ...authLines()];
  for (const [name, value] of Object.entries(fields)) lines.push(`  -F ${shellQuote(`${name}=${value}`)}`);
  return lines.join(" \\\n");
}

const SAVE_PNG =
  'import base64, json, sys; open("image.png", "wb").write(base64.b64decode(json.load(sys.stdin)["data"][0]["b64_json"]))';

const GRPC_FIELDS = [
  "prompt", "negative_prompt", "size", "n", "num_inference_steps", "guidance_scale", "seed", "scheduler",
  "output_format", "vectorize_tier", "priority", "loras", "ip_adapter_image", "ip_adapter_scale",
  "ip_adapter_scale_json", "image", "mask", "strength", "outpaint", "controlnets", "guidance_cutoff", "cache_interval",
  "model", "user", "approximate_cache", "upscale", "ip_adapters", "response_format", "output_compression", "metadata",
  "prompts", "character", "identity",
];
/** `GenerateRequest`'s fields (serve/grpc_api/easel.proto; tests/unit/test_studio.py holds them equal). */

/** A generation's body as the gRPC `Generate` call (the repository's stub), or null when a field has no gRPC twin. */
function grpcCall(body) {
  if (!Object.keys(body).every((name) => GRPC_FIELDS.includes(name))) return null;
  return [
    ...grpcLines(),
    `request = json_format.ParseDict(${python(body)}, easel_pb2.GenerateRequest())`,
    "for event in easel.Generate(request, metadata=metadata):",
    '    if event.HasField("result"):  # before it: progress {step, total}',
    '        open("image.png", "wb").write(event.result.images[0].data)',
  ].join("\n");
}

/** The openai client's preamble after `imports`: a client of this stack (its key from `EASEL_KEY`). */
function openaiLines(imports) {
  return [
    imports,
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url="${location.origin}/v1", api_key=os.environ.get("EASEL_KEY", "none"))`,
  ];
}

/** A generation's body as curl (saving image.png), as the openai client and, where every field has one, gRPC. */
export function generationCalls(body) {
  const own = Object.fromEntries(Object.entries(body).filter(([name]) => OPENAI_ARGS.includes(name)));
  const extra = Object.fromEntries(Object.entries(body).filter(([name]) => !OPENAI_ARGS.includes(name)));
  const args = Object.entries(own).map(([name, value]) => `    ${name}=${python(value, "    ")},`);
  if (Object.keys(extra).length) args.push(`    extra_body=${python(extra, "    ")},`);
  const client = [
    ...openaiLines("import base64, os"),
    "answer = client.images.generate(",
    ...args,
    ")",
    'open("image.png", "wb").write(base64.b64decode(answer.data[0].b64_json))',
  ].join("\n");
  const grpc = grpcCall(body);
  return [
    ["curl", curlJson("/v1/images/generations", body, SAVE_PNG)],
    ["Python (openai)", client],
    ...(grpc ? [["Python (gRPC)", grpc]] : []),
  ];
}

/** `text` with each long base64 run (an image's bytes) cut short to be read; Copy takes the whole call. */
function shortened(text) {
  return text.replace(/[A-Za-z0-9+/]{200,}={0,2}/g, (run) => `${run.slice(0, 24)}...(${run.length} characters: Copy has them all)`);
}

/** The gRPC preamble: the repository's stub, a channel to `EASEL_GRPC` (default this host's gRPC port). */
function grpcLines() {
  return [
    "import os",
    "",
    "import grpc",
    "from google.protobuf import json_format",
    "from serve.grpc_api import easel_pb2, easel_pb2_grpc  # in the Easel repository: the stub of easel.proto",
    "",
    `easel = easel_pb2_grpc.EaselStub(grpc.insecure_channel(os.environ.get("EASEL_GRPC", "${location.hostname}:9000")))`,
    `metadata = ${key.get() ? '[("authorization", f"Bearer {os.environ[\'EASEL_KEY\']}")]' : "[]"}`,
  ];
}

/** A video's JSON body (`POST /v1/videos`) as curl, as the openai client and as gRPC, each saving video.mp4. */
export function videoCalls(body) {
  const { prompt, ...extra } = body;
  const client = [
    ...openaiLines("import os, time"),
    `video = client.videos.create(prompt=${python(prompt)}, extra_body=${python(extra)})`,
    'while (video := client.videos.retrieve(video.id)).status in ("queued", "in_progress"):',
    "    time.sleep(1)",
    'client.videos.download_content(video.id).write_to_file("video.mp4")',
  ].join("\n");
  const grpc = [
    "import time",
    ...grpcLines(),
    `video = easel.CreateVideo(json_format.ParseDict(${python(body)}, easel_pb2.VideoRequest()), metadata=metadata)`,
    'while video.status in ("queued", "in_progress"):',
    "    time.sleep(1)",
    "    video = easel.GetVideo(easel_pb2.VideoId(video_id=video.id), metadata=metadata)",
    'content = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=video.id), metadata=metadata)',
    'open("video.mp4", "wb").write(content.data)',
  ].join("\n");
  return [
    ["curl", curlJson("/v1/videos", body)],
    ["Python (openai)", client],
    ["Python (gRPC)", grpc],
  ];
}

/** A raster vectorized at `tier`, as gRPC's `Vectorize` (the file `name` read), saving image.svg. */
export function vectorizeGrpc(name, tier) {
  return [
    ...grpcLines(),
    `request = easel_pb2.VectorizeRequest(image=open(${python(name)}, "rb").read(), tier=${python(tier)}, validate=True)`,
    'open("image.svg", "w").write(easel.Vectorize(request, metadata=metadata).svg)',
  ].join("\n");
}

/** A feedback body (`POST /v1/feedback`) as curl and as gRPC's `Feedback`. */
export function feedbackCalls(body) {
  const grpc = [
    ...grpcLines(),
    `print(easel.Feedback(json_format.ParseDict(${python(body)}, easel_pb2.FeedbackRequest()), metadata=metadata))`,
  ].join("\n");
  return [
    ["curl", curlJson("/v1/feedback", body)],
    ["Python (gRPC)", grpc],
  ];
}

/** Show `calls` ([title, text] pairs) in `where`, each with a copy button (an image's base64 shown shortened). */
export function showCalls(where, calls) {
  where.replaceChildren(
    ...calls.map(([title, text]) => {
      const code = h("code", {}, shortened(text));
      const status = h("span", { class: "copied", role: "status" });
      const copy = async () => {
        try {
          await navigator.clipboard.writeText(text);
          status.textContent = "copied";
        } catch {
          code.textContent = text; // the whole call, to be copied by hand
          getSelection().selectAllChildren(code);
          status.textContent = "selected: press Ctrl+C";
        }
      };
      return h(
        "figure",
        { class: "call" },
        h("figcaption", {}, title, " ", h("button", { type: "button", onclick: copy }, `Copy ${title}`), " ", status),
        h("pre", {}, code),
      );
    }),
  );
}
