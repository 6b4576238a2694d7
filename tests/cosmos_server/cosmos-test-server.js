#!/usr/bin/env node
// The Cosmos DB protocol server the Cosmos backend's tests run against (tests only).
//
//   node tests/cosmos_server/cosmos-test-server.js --port PORT [--host 127.0.0.1]
//
// It runs @vercel/cosmosdb-server (pinned at exactly 1.0.1 in package.json: the fixes below
// replace handlers by their file names inside the package) with the gaps that the azure-cosmos
// Python SDK runs into fixed. Each fix can be switched off with NO_FIX_<NAME>=1 to see the stock
// behaviour:
//   READ       read of a missing document -> 404 (stock: 500 "Cannot read properties of undefined").
//   BATCH      transactional batch: the partition key comes from the request header (the SDK puts
//              none in the operations), Patch operations, more than 100 operations -> 400, and
//              all-or-nothing: the first failing operation rolls back every write of the batch and
//              the other operations answer 424 (stock: earlier writes stay).
//   FEED       change feed (A-IM: Incremental Feed), LatestVersion semantics: every document write
//              stamps a per-container, increasing _lsn; the feed returns the documents with
//              _lsn > If-None-Match in _lsn order, at most x-ms-max-item-count per page, etag
//              "<last lsn>"; 304 (etag = current lsn) when nothing is new; If-None-Match "*" means
//              from now; If-Modified-Since filters on _ts. Deletes are never reported and a
//              document written several times appears once, as its latest version.
//   KEEPALIVE  keep-alive connections (stock: "connection: close" on every response), kept idle
//              longer than aiohttp's 15 s so the client always closes first.
//
// FAULTS (off unless started with --faults or COSMOS_TEST_FAULTS=1; off, the server is exactly the
// above): fault injection controlled over HTTP, for tests whose Cosmos clients live in other
// processes (etcdgw gateways), out of reach of an in-process fault transport. See the FAULTS
// section below for the control API (POST/GET/DELETE /_faults).
//
// Prints "Ready to accept HTTPS connections at HOST:PORT" once listening. SIGTERM/SIGINT close
// every connection and exit within 2 s.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const pkgDir = path.dirname(require.resolve("@vercel/cosmosdb-server/package.json"));
const internal = (rel) => require(path.join(pkgDir, "lib", rel));
const fixOn = (name) => !process.env[`NO_FIX_${name}`];

function parseArgs(argv) {
  const out = { port: 8081, host: "127.0.0.1", cert: null, key: null, faults: false };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === "--port" || flag === "-p") { out.port = Number.parseInt(value, 10); i += 1; }
    else if (flag === "--host") { out.host = value; i += 1; }
    else if (flag === "--cert") { out.cert = value; i += 1; }
    else if (flag === "--key") { out.key = value; i += 1; }
    else if (flag === "--faults") { out.faults = true; }
    else { console.error(`unknown argument ${flag}`); process.exit(2); }
  }
  return out;
}
const args = parseArgs(process.argv.slice(2));

// ---- READ ---------------------------------------------------------------------------------
// The stock handler dereferences the document before checking that it exists. With the
// cross-partition header set it skips that check and falls through to its own 404.
if (fixOn("READ")) {
  const mod = internal("handler/read-document");
  const stock = mod.default;
  mod.default = (account, req, res, params) => {
    req.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
    return stock(account, req, res, params);
  };
}

// ---- FEED ---------------------------------------------------------------------------------
const Documents = internal("account/documents").default;
const Items = internal("account/items").default;
if (fixOn("FEED")) {
  // Every create/replace/upsert/patch of a document goes through _set.
  Documents.prototype._set = function setWithLsn(data) {
    this._lsn = (this._lsn || 0) + 1;
    return Items.prototype._set.call(this, { ...data, _lsn: this._lsn });
  };
  const mod = internal("handler/read-documents");
  const stock = mod.default;
  mod.default = async (account, req, res, params) => {
    const aim = String(req.headers["a-im"] || "").toLowerCase();
    if (aim !== "incremental feed") return stock(account, req, res, params);
    // The stock response writer answers every A-IM request with 304 and etag "1" on its way
    // out; without the header it sends what this handler returns.
    delete req.headers["a-im"];
    const collection = account.database(params.dbId).collection(params.collId);
    if (!collection.read()) { res.statusCode = 404; return { message: "collection not found" }; }
    const docs = collection.documents;
    const now = docs._lsn || 0;
    const inm = req.headers["if-none-match"];
    let after = 0;
    if (inm === "*") after = now;
    else if (inm) after = Number.parseInt(String(inm).replace(/"/g, ""), 10) || 0;
    const ims = req.headers["if-modified-since"];
    const sinceTs = ims ? Date.parse(ims) / 1000 : null;
    let max = Number.parseInt(String(req.headers["x-ms-max-item-count"] || "-1"), 10);
    if (!(max > 0)) max = 1000;
    const changed = [];
    for (const item of docs._data.values()) {
      const d = item.read();
      if (d && (d._lsn || 0) > after && (sinceTs === null || d._ts >= sinceTs)) changed.push(d);
    }
    changed.sort((a, b) => a._lsn - b._lsn);
    if (changed.length === 0) {
      res.statusCode = 304;
      res.setHeader("etag", `"${Math.max(after, now)}"`);
      return {};
    }
    const page = changed.slice(0, max);
    res.setHeader("etag", `"${page[page.length - 1]._lsn}"`);
    res.setHeader("x-ms-item-count", String(page.length));
    return { _rid: collection.read()._rid, Documents: page, _count: page.length };
  };
}

// ---- BATCH --------------------------------------------------------------------------------
if (fixOn("BATCH")) {
  const ops = internal("handler/_document-operations");
  const { patchOperation } = internal("handler/_patch-operations");
  const readJson = internal("json").default;
  const mod = internal("handler/batch-documents");
  const runOp = (collection, op) => {
    switch (op.operationType) {
      case "Create": return ops.createOperation(collection, op);
      case "Upsert": return ops.upsertOperation(collection, op);
      case "Read": return ops.readOperation(collection, op);
      case "Delete": return ops.deleteOperation(collection, op);
      case "Replace": return ops.replaceOperation(collection, op);
      case "Patch": {
        const body = op.resourceBody || {};
        return patchOperation(collection, {
          id: op.id, partitionKey: op.partitionKey, ifMatch: op.ifMatch,
          operations: body.operations || [], condition: body.condition,
        });
      }
      default:
        return { statusCode: 400, body: { message: `Operation type '${op.operationType}' is not supported in Batch.` } };
    }
  };
  mod.default = async (account, req, res, { dbId, collId }) => {
    const body = await readJson(req);
    const collection = account.database(dbId).collection(collId);
    if (!collection.read()) { res.statusCode = 404; return { message: "collection not found" }; }
    if (!Array.isArray(body)) { res.statusCode = 400; return { message: "Invalid request body" }; }
    if (body.length > 100) {
      res.statusCode = 400;
      return { code: "BadRequest", message: "Batch request has more operations than what is supported." };
    }
    const headerPk = req.headers["x-ms-documentdb-partitionkey"];
    const docs = collection.documents;
    // Single-threaded server: nothing else runs between here and the end of the loop, so a
    // copy of the maps and counters is a consistent snapshot to roll back to.
    const saved = { data: new Map(docs._data), index: new Map(docs._index), rid: docs._ridCount, lsn: docs._lsn };
    const results = [];
    let failedAt = -1;
    for (let i = 0; i < body.length; i += 1) {
      const op = { ...body[i] };
      if (op.partitionKey === undefined && headerPk) op.partitionKey = headerPk;
      const r = runOp(collection, op);
      if (r.statusCode >= 400) {
        failedAt = i;
        results.push({ statusCode: r.statusCode, requestCharge: 0 });
        break;
      }
      results.push({ statusCode: r.statusCode, requestCharge: 1, eTag: r.body ? r.body._etag : undefined, resourceBody: r.body });
    }
    if (failedAt < 0) return results;
    docs._data = saved.data;
    docs._index = saved.index;
    docs._ridCount = saved.rid;
    docs._lsn = saved.lsn;
    return body.map((_, i) => (i === failedAt ? results[failedAt] : { statusCode: 424, requestCharge: 0 }));
  };
}

// ---- FAULTS -------------------------------------------------------------------------------
// Armed over HTTP (no authentication: a loopback test server):
//   POST   /_faults  {"match", "action", "status", "substatus", "retryAfterMs", "count",
//                     "probability", "delayMs", "db"}  -> {"id": "f1"}   (400 on a bad rule)
//   GET    /_faults  -> {"rules": [{...the rule, "id", "fired"}], "seen": {kind: requests}}
//                     (seen: the document requests received so far per kind, faulted or not)
//   DELETE /_faults  -> clears every rule;  DELETE /_faults/<id> -> clears that one (404 if none)
// match (what a Cosmos request is, see classify()):
//   batch      POST .../docs with x-ms-cosmos-is-batch-request: true (every etcdgw commit)
//   feed       GET .../docs with an A-IM header (the change feed: the gateways' tails)
//   query      POST .../docs with x-ms-documentdb-isquery: true (or a query content type)
//   meta-read  GET .../docs/meta (etcdgw's meta document: read barriers, commit resolution)
//   read       GET of any other single document
//   write      POST/PUT/PATCH/DELETE of documents that is neither a query nor a batch
//   any        every document request: all of the above
// Only document requests (paths /dbs/<db>/colls/<coll>/docs[/<id>]) ever match, even for "any":
// the account read (GET /), databases, collections and pkranges never do. The SDK reads those
// when a client opens (and the account again after some errors); a fault there would break a
// gateway's startup, or the SDK's endpoint bookkeeping, rather than the protocol under test. A
// whole-server outage is SIGSTOP/SIGCONT of this process (tests/support/cosmos.py pause/resume).
// db (optional): only requests under /dbs/<db>/, for tests sharing one server.
// action (every one waits delayMs first, if given):
//   status  answer at once with `status` and a Cosmos-shaped error body, WITHOUT executing the
//           request; 429 always carries x-ms-retry-after-ms (retryAfterMs, default 0) and
//           x-ms-substatus (default 3200, "request rate is large"), others carry them if given.
//   lose    execute the request (a write is applied) and then destroy the connection instead of
//           sending the response: a lost response, whose outcome the client cannot know.
//   delay   execute it after delayMs.
//   hang    read the request, never execute it, never answer (the client's deadline fires).
// count: how many matching requests the rule applies to (default 1; -1 until cleared). A request
// the probability draw (default 1) spares is not counted and the next rule is tried. Rules are
// tried in the order they were armed; at most one applies to a request. Exhausted rules stay
// listed (with their "fired") until cleared. Every application prints
// "FAULT <id> <action> <kind> <method> <path>".
// Single-threaded as the fixes above assume: a rule is chosen synchronously when the request
// arrives; the handler then runs as it would have, whole, only later (delay) or with its answer
// dropped (lose). A delayed request whose client gave up meanwhile is still executed once its body
// had arrived.
const MATCHES = ["batch", "feed", "query", "meta-read", "read", "write", "any"];
const ACTIONS = ["status", "lose", "delay", "hang"];
const ERROR_CODES = {
  400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 408: "RequestTimeout",
  409: "Conflict", 410: "Gone", 412: "PreconditionFailed", 413: "RequestEntityTooLarge",
  423: "Locked", 424: "FailedDependency", 429: "TooManyRequests", 449: "RetryWith",
  500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout",
};
const DOC_PATH = /^\/dbs\/([^/]+)\/colls\/[^/]+\/docs(?:\/([^/]+))?$/;

function isControl(req) {
  const p = normalPath(req.url);
  return p === "/_faults" || p.startsWith("/_faults/");
}

// As the router sees it: no query string, no leading "//" (the SDKs send one), no trailing "/".
function normalPath(url) {
  let p = String(url || "/").split("?")[0].replace(/^\/\/+/, "/");
  while (p.length > 1 && p.endsWith("/")) p = p.slice(0, -1);
  return p;
}

// {kind, db} of a document request (kind one of MATCHES but "any"), null for anything else.
function classify(req) {
  const m = DOC_PATH.exec(normalPath(req.url));
  if (!m) return null;
  const flag = (name) => String(req.headers[name] || "").toLowerCase() === "true";
  const db = decodeURIComponent(m[1]);
  const docId = m[2] === undefined ? null : decodeURIComponent(m[2]);
  const contentType = String(req.headers["content-type"] || "").toLowerCase();
  let kind;
  if (flag("x-ms-cosmos-is-batch-request")) kind = "batch";
  else if (req.headers["a-im"]) kind = "feed";
  else if (req.method === "POST" && (flag("x-ms-documentdb-isquery")
    || contentType.startsWith("application/query+json"))) kind = "query";
  else if (req.method === "GET" && docId === "meta") kind = "meta-read";
  else if (req.method === "GET") kind = "read";
  else kind = "write";
  return { kind, db };
}

function installFaults(server) {
  const rules = [];
  const seen = Object.fromEntries(MATCHES.filter((k) => k !== "any").map((k) => [k, 0]));
  let nextId = 1;
  const keepAlive = fixOn("KEEPALIVE"); // as the server below is created

  const send = (res, status, body, headers = {}) => {
    res.statusCode = status;
    res.setHeader("content-type", "application/json");
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    res.end(JSON.stringify(body));
  };
  const readBody = (req) => new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
    req.on("error", reject);
  });

  // A rule from a POST body, or a string saying what is wrong with it.
  const parseRule = (r) => {
    if (!r || typeof r !== "object" || Array.isArray(r)) return "the body must be a JSON object";
    const known = ["match", "action", "status", "substatus", "retryAfterMs", "count",
      "probability", "delayMs", "db"];
    const unknown = Object.keys(r).filter((k) => !known.includes(k));
    if (unknown.length) return `unknown field(s) ${unknown.join(", ")}`;
    if (!MATCHES.includes(r.match)) return `match must be one of ${MATCHES.join(", ")}`;
    if (!ACTIONS.includes(r.action)) return `action must be one of ${ACTIONS.join(", ")}`;
    const int = (name, dflt, min) => {
      const v = r[name] === undefined ? dflt : r[name];
      return Number.isInteger(v) && v >= min ? v : undefined;
    };
    const rule = {
      match: r.match, action: r.action, status: int("status", 0, 0),
      substatus: int("substatus", r.status === 429 ? 3200 : 0, 0),
      retryAfterMs: int("retryAfterMs", 0, 0), count: int("count", 1, -1),
      probability: r.probability === undefined ? 1 : r.probability,
      delayMs: int("delayMs", 0, 0), db: r.db === undefined ? null : r.db,
    };
    for (const name of ["status", "substatus", "retryAfterMs", "count", "delayMs"]) {
      if (rule[name] === undefined) return `${name} must be an integer (count >= -1, others >= 0)`;
    }
    if (rule.action === "status" && !(rule.status >= 400 && rule.status <= 599)) {
      return "action status needs a status in 400..599";
    }
    if (typeof rule.probability !== "number" || !(rule.probability >= 0 && rule.probability <= 1)) {
      return "probability must be a number in 0..1";
    }
    if (rule.db !== null && (typeof rule.db !== "string" || !rule.db)) return "db must be a name";
    return rule;
  };

  const control = async (req, res) => {
    const p = normalPath(req.url);
    let body = "";
    try { body = await readBody(req); } catch (e) { return; }
    if (p === "/_faults" && req.method === "POST") {
      let parsed;
      try { parsed = JSON.parse(body || "null"); } catch (e) { parsed = undefined; }
      const rule = parseRule(parsed);
      if (typeof rule === "string") return send(res, 400, { code: "BadRequest", message: rule });
      rule.id = `f${nextId}`;
      nextId += 1;
      rule.fired = 0;
      rules.push(rule);
      return send(res, 200, { id: rule.id });
    }
    if (p === "/_faults" && req.method === "GET") return send(res, 200, { rules, seen });
    if (p === "/_faults" && req.method === "DELETE") {
      const cleared = rules.length;
      rules.length = 0;
      return send(res, 200, { cleared });
    }
    if (req.method === "DELETE") {
      const i = rules.findIndex((r) => `/_faults/${r.id}` === p);
      if (i < 0) return send(res, 404, { code: "NotFound", message: `no rule at ${p}` });
      rules.splice(i, 1);
      return send(res, 200, { cleared: 1 });
    }
    return send(res, 405, { code: "MethodNotAllowed", message: `${req.method} ${p}` });
  };

  // The rule that applies to this request (its count taken), or null.
  const take = (kind, db) => {
    for (const rule of rules) {
      if (rule.count >= 0 && rule.fired >= rule.count) continue;
      if (rule.match !== "any" && rule.match !== kind) continue;
      if (rule.db !== null && rule.db !== db) continue;
      if (rule.probability < 1 && !(Math.random() < rule.probability)) continue;
      rule.fired += 1;
      return rule;
    }
    return null;
  };

  const errorBody = (rule, activityId) => {
    const code = ERROR_CODES[rule.status] || "Error";
    const text = `injected by cosmos-test-server.js fault ${rule.id}`;
    return { code, message: `Message: {"Errors":["${text}"]}\r\nActivityId: ${activityId}` };
  };

  const apply = (rule, req, res, stock) => {
    if (rule.action === "delay") return stock();
    if (rule.action === "hang") { req.resume(); return undefined; }
    if (rule.action === "status") {
      const activityId = crypto.randomUUID();
      const headers = {
        "x-ms-activity-id": activityId, "x-ms-request-charge": "0",
        connection: keepAlive ? "keep-alive" : "close",
      };
      if (rule.status === 429 || rule.retryAfterMs) {
        headers["x-ms-retry-after-ms"] = String(rule.retryAfterMs);
      }
      if (rule.substatus) headers["x-ms-substatus"] = String(rule.substatus);
      // Read the whole request first: the client is not cut off while still sending, and the
      // keep-alive connection stays usable for its next request.
      const answer = () => send(res, rule.status, errorBody(rule, activityId), headers);
      return readBody(req).then(answer, () => {});
    }
    // lose: the handlers answer with one res.end() once the request is executed (the stock
    // writer sets headers, then ends). Headers are only buffered until then, so destroying the
    // socket there, instead of ending, sends not one byte of the response.
    const dropped = () => { req.socket.destroy(); return res; };
    res.writeHead = dropped;
    res.write = () => { req.socket.destroy(); return false; };
    res.end = dropped;
    return stock();
  };

  const stockListeners = server.listeners("request");
  server.removeAllListeners("request");
  server.on("request", (req, res) => {
    const stock = () => { for (const listener of stockListeners) listener.call(server, req, res); };
    if (isControl(req)) return control(req, res);
    const c = classify(req);
    if (c === null) return stock();
    seen[c.kind] += 1;
    const rule = take(c.kind, c.db);
    if (rule === null) return stock();
    console.log(`FAULT ${rule.id} ${rule.action} ${c.kind} ${req.method} ${normalPath(req.url)}`);
    if (rule.delayMs > 0) {
      setTimeout(() => apply(rule, req, res, stock), rule.delayMs);
      return undefined;
    }
    return apply(rule, req, res, stock);
  });
}

// ---- server + KEEPALIVE -------------------------------------------------------------------
const { createHttpsServer } = require(pkgDir);
const options = { keepAlive: fixOn("KEEPALIVE") };
if (args.cert) options.cert = fs.readFileSync(args.cert);
if (args.key) options.key = fs.readFileSync(args.key);
const server = createHttpsServer(options);
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
const faultsOn = args.faults || process.env.COSMOS_TEST_FAULTS === "1";
if (faultsOn) installFaults(server);
// COSMOS_TEST_LOG_REQUESTS=1: one line per request, "REQ <kind> <method> <path>" (kind: batch,
// feed, query or plain), for tests that count what a gateway costs. (Calls of the FAULTS control
// endpoint are not Cosmos requests: not logged.)
if (process.env.COSMOS_TEST_LOG_REQUESTS) {
  server.prependListener("request", (req) => {
    if (faultsOn && isControl(req)) return;
    const flag = (name) => String(req.headers[name] || "").toLowerCase() === "true";
    const kind = flag("x-ms-cosmos-is-batch-request") ? "batch"
      : req.headers["a-im"] ? "feed" : flag("x-ms-documentdb-isquery") ? "query" : "plain";
    console.log(`REQ ${kind} ${req.method} ${req.url}`);
  });
}
server.listen(args.port, args.host, () => {
  console.log(`Ready to accept HTTPS connections at ${args.host}:${server.address().port}`);
});
function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
