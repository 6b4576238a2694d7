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
// Prints "Ready to accept HTTPS connections at HOST:PORT" once listening. SIGTERM/SIGINT close
// every connection and exit within 2 s.
"use strict";
const fs = require("fs");
const path = require("path");

const pkgDir = path.dirname(require.resolve("@vercel/cosmosdb-server/package.json"));
const internal = (rel) => require(path.join(pkgDir, "lib", rel));
const fixOn = (name) => !process.env[`NO_FIX_${name}`];

function parseArgs(argv) {
  const out = { port: 8081, host: "127.0.0.1", cert: null, key: null };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === "--port" || flag === "-p") { out.port = Number.parseInt(value, 10); i += 1; }
    else if (flag === "--host") { out.host = value; i += 1; }
    else if (flag === "--cert") { out.cert = value; i += 1; }
    else if (flag === "--key") { out.key = value; i += 1; }
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

// ---- server + KEEPALIVE -------------------------------------------------------------------
const { createHttpsServer } = require(pkgDir);
const options = { keepAlive: fixOn("KEEPALIVE") };
if (args.cert) options.cert = fs.readFileSync(args.cert);
if (args.key) options.key = fs.readFileSync(args.key);
const server = createHttpsServer(options);
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
// COSMOS_TEST_LOG_REQUESTS=1: one line per request, "REQ <kind> <method> <path>" (kind: batch,
// feed, query or plain), for tests that count what a gateway costs.
if (process.env.COSMOS_TEST_LOG_REQUESTS) {
  server.prependListener("request", (req) => {
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
