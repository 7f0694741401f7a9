#!/usr/bin/env node
// An Immich-exact client of a machine-learning server: requests are built the way
// Immich's server builds them (server/src/repositories/machine-learning.repository.ts,
// v1.135: `new FormData()`, `entries` as JSON text first, then the file as a `Blob`
// under `image` or the query under `text`, posted with `fetch` to `new URL('/predict',
// url)`), and `/ping` is asked as its health check does.
//
//   node client.mjs URL ping
//   node client.mjs URL batch CASES.json
//   node client.mjs URL parallel CASES.json
//   node client.mjs URL,URL,... failover CASES.json
//   node client.mjs URL bench CASES.json CONCURRENCY SECONDS
//
// CASES.json is an array of {entries | raw_entries, image: PATH | text: STRING}.
// `batch` prints one {status, body} per case, in order (body parsed as JSON when it is);
// `parallel` the same, with every case sent at once (as Immich's concurrent jobs do).
// `failover` sends the cases one by one over a list of URLs as Immich's server does:
// healthy URLs first, then unhealthy ones, in list order; a network error or a non-2xx
// answer marks a URL unhealthy and the next is tried. Each answer says which URL gave it.
// `bench` sends the cases round-robin from CONCURRENCY callers for SECONDS and prints
// {requests, errors, seconds, throughput, p50_ms, p99_ms}.
import { readFile } from "node:fs/promises";

const [url, mode, ...rest] = process.argv.slice(2);
if (!url || !mode) {
  console.error("usage: client.mjs URL ping | batch CASES.json | parallel CASES.json | bench CASES.json CONCURRENCY SECONDS");
  process.exit(2);
}

async function formOf(c, files) {
  const form = new FormData();
  form.append("entries", c.raw_entries ?? JSON.stringify(c.entries));
  if (c.image !== undefined) {
    let bytes = files.get(c.image);
    if (!bytes) {
      bytes = await readFile(c.image);
      files.set(c.image, bytes);
    }
    form.append("image", new Blob([new Uint8Array(bytes)]));
  } else if (c.text !== undefined) {
    form.append("text", c.text);
  }
  return form;
}

async function predict(c, files, base = url) {
  const response = await fetch(new URL("/predict", base), {
    method: "POST",
    body: await formOf(c, files),
  });
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: kept as text
  }
  return { status: response.status, body };
}

async function ping() {
  const response = await fetch(new URL("/ping", url), { signal: AbortSignal.timeout(2000) });
  return { status: response.status, body: await response.text() };
}

async function bench(cases, concurrency, seconds) {
  const files = new Map();
  const latencies = [];
  let errors = 0;
  let next = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  async function caller() {
    while (performance.now() < end) {
      const c = cases[next++ % cases.length];
      const t0 = performance.now();
      try {
        const r = await predict(c, files);
        if (r.status !== 200) errors++;
      } catch {
        errors++;
      }
      latencies.push(performance.now() - t0);
    }
  }
  await Promise.all(Array.from({ length: concurrency }, caller));
  const elapsed = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return {
    requests: latencies.length,
    errors,
    seconds: elapsed,
    throughput: latencies.length / elapsed,
    p50_ms: at(0.5),
    p99_ms: at(0.99),
  };
}

let out;
if (mode === "ping") {
  out = await ping();
} else if (mode === "batch") {
  const cases = JSON.parse(await readFile(rest[0], "utf8"));
  const files = new Map();
  out = [];
  for (const c of cases) out.push(await predict(c, files));
} else if (mode === "parallel") {
  const cases = JSON.parse(await readFile(rest[0], "utf8"));
  const files = new Map();
  out = await Promise.all(cases.map((c) => predict(c, files)));
} else if (mode === "failover") {
  const cases = JSON.parse(await readFile(rest[0], "utf8"));
  const files = new Map();
  const urls = url.split(",");
  const healthy = new Map(urls.map((u) => [u, true]));
  out = [];
  for (const c of cases) {
    const order = [...urls.filter((u) => healthy.get(u)), ...urls.filter((u) => !healthy.get(u))];
    let answer = { status: 0, body: "every URL failed" };
    for (const u of order) {
      try {
        const r = await predict(c, files, u);
        if (r.status >= 200 && r.status < 300) {
          answer = { ...r, url: u };
          break;
        }
        answer = { ...r, url: u };
      } catch (e) {
        answer = { status: 0, body: String(e), url: u };
      }
      healthy.set(u, false);
    }
    out.push(answer);
  }
} else if (mode === "bench") {
  const cases = JSON.parse(await readFile(rest[0], "utf8"));
  out = await bench(cases, Number(rest[1] ?? 1), Number(rest[2] ?? 5));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
console.log(JSON.stringify(out));
