// mreg contract v1 conformance test, written as another team would: it loads only the
// .proto files under protos/ (no generated code, nothing from the repository's Python)
// and runs the whole flow against a running blob service and metadata service.
//
//   MREG_BLOB_ADDR=127.0.0.1:50052 MREG_METADATA_ADDR=127.0.0.1:50051 node tests/node/conformance.mjs
//
// Over TLS, as the Python client does: MREG_CA_CERT=ca.pem (PEM file of the CAs to trust; TLS
// on), MREG_TLS=1 (TLS with the system's roots), and MREG_CLIENT_CERT/MREG_CLIENT_KEY (PEM files
// of a client certificate and its key, for services that require mutual TLS).
//
// With authentication on, MREG_TOKEN=<token> is sent as "authorization: Bearer <token>" on every
// call (a writer of the entity "node-conformance" suffices), and a last step checks the refusals:
// a call without a token is UNAUTHENTICATED, one outside the token's scope PERMISSION_DENIED.
//
// Prints one line per step and exits non-zero with a message on the first failure.
// Dependencies (pinned in package-lock.json): `npm ci --prefix tests/node` (`make install`).

import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTOS = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const DEADLINE_MS = 30_000;
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const ERROR_DOMAIN = "metadata.mreg.dev";

// ---------------------------------------------------------------------------------------
// Reporting

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

function checkEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

// JSON values equal whatever their key order.
function checkSameJson(actual, expected, what) {
  check(jcs(actual) === jcs(expected), `${what}: expected ${jcs(expected)}, got ${jcs(actual)}`);
}

let stepNumber = 0;

async function step(name, body) {
  stepNumber += 1;
  const label = `${String(stepNumber).padStart(2, " ")}. ${name}`;
  try {
    const summary = await body();
    console.log(`ok   ${label}${summary ? ` -- ${summary}` : ""}`);
  } catch (error) {
    console.log(`FAIL ${label}`);
    const detail = error instanceof Failure ? error.message : (error?.stack ?? String(error));
    console.error(`\nconformance FAILED at step ${stepNumber} (${name}):\n  ${detail}`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------------------------------
// RFC 8785 (JCS) and the canonical manifest digest, as the metadata proto specifies it.

function jcs(value) {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isFinite(value)) throw new Failure(`JCS cannot encode ${value}`);
      // ECMAScript Number.prototype.toString, which JSON.stringify uses (-0 -> "0").
      return JSON.stringify(value);
    case "string":
      // Escapes only '"', '\\' and U+0000..U+001F (\b \t \n \f \r or \u00xx), as JCS requires.
      return JSON.stringify(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map(jcs).join(",")}]`;
      // Array.prototype.sort compares strings by UTF-16 code units, which is JCS's order.
      const keys = Object.keys(value).sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${jcs(value[k])}`).join(",")}}`;
    }
    default:
      throw new Failure(`JCS cannot encode a ${typeof value}`);
  }
}

// entries: [{path, hash, size, metadata (a plain JSON object or undefined)}]
function canonicalManifest(entries) {
  const sorted = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a.path, "utf8"), Buffer.from(b.path, "utf8")));
  const objects = sorted.map((e) => {
    const o = { digest: e.hash, path: e.path, size: Number(e.size) };
    if (e.metadata && Object.keys(e.metadata).length > 0) o.metadata = e.metadata;
    return o;
  });
  return Buffer.from(jcs(objects), "utf8");
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

// ---------------------------------------------------------------------------------------
// google.protobuf.Struct <-> plain JSON. proto-loader takes the google/protobuf well-known
// types from protobufjs's bundled descriptors, whose field names are camelCase whatever
// keepCase says: Value's fields (and its oneof `kind`) are nullValue, numberValue, ...

function toValue(v) {
  if (v === null) return { nullValue: "NULL_VALUE" };
  if (typeof v === "number") return { numberValue: v };
  if (typeof v === "string") return { stringValue: v };
  if (typeof v === "boolean") return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}

function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(v) {
  switch (v.kind) {
    case "nullValue":
      return null;
    case "numberValue":
    case "stringValue":
    case "boolValue":
      return v[v.kind];
    case "listValue":
      return (v.listValue.values ?? []).map(fromValue);
    case "structValue":
      return fromStruct(v.structValue);
    default:
      throw new Failure(`unknown google.protobuf.Value kind ${v.kind}`);
  }
}

function fromStruct(s) {
  if (!s) return {};
  return Object.fromEntries(Object.entries(s.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

// ---------------------------------------------------------------------------------------
// The contract: protos/ and nothing else.

const packageDefinition = protoLoader.loadSync(
  [
    "mreg/blob/v1/blob_service.proto",
    "mreg/metadata/v1/metadata_service.proto",
    "mreg/metadata/v1/token_service.proto",
  ],
  { includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true },
);
const api = grpc.loadPackageDefinition(packageDefinition);

// google.rpc.Status and its details, from the vendored google/rpc protos; the
// google/protobuf well-known types (any, duration) come bundled with protobufjs.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => (existsSync(join(PROTOS, target)) ? join(PROTOS, target) : target);
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const RpcStatus = rpcRoot.lookupType("google.rpc.Status");

// The google.rpc.Status of a failed call (from its grpc-status-details-bin trailer), with
// its details unpacked by type URL. Without the trailer: the code and message, no details.
function statusDetails(error) {
  const [raw] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!raw) return { code: error.code, message: error.details, details: [], trailer: false };
  const status = RpcStatus.toObject(RpcStatus.decode(raw), { longs: Number, defaults: true });
  check(status.code === error.code, `google.rpc.Status.code ${status.code} differs from the call's ${error.code}`);
  const details = (status.details ?? []).map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = rpcRoot.lookupType(typeName);
    return { typeName, value: type.toObject(type.decode(any.value), { longs: Number, defaults: true }) };
  });
  return { ...status, details, trailer: true };
}

const detailOf = (status, typeName) => status.details.find((d) => d.typeName === typeName)?.value;

async function expectError(promise, code) {
  try {
    await promise;
  } catch (error) {
    check(
      error.code === code,
      `expected ${grpc.status[code]}, got ${grpc.status[error.code] ?? error.code}: ${error.details}`,
    );
    return error;
  }
  throw new Failure(`expected ${grpc.status[code]}, but the call succeeded`);
}

// Asserts the documented error model: an ErrorInfo with the service's domain and reason.
function checkErrorInfo(status, reason, metadata = {}) {
  check(
    status.trailer,
    `${grpc.status[status.code]} "${status.message}" has no grpc-status-details-bin trailer (google.rpc.Status)`,
  );
  const info = detailOf(status, "google.rpc.ErrorInfo");
  check(
    info,
    `${grpc.status[status.code]} "${status.message}" carries no google.rpc.ErrorInfo ` +
      `(details: ${JSON.stringify(status.details.map((d) => d.typeName))})`,
  );
  checkEqual(info.domain, ERROR_DOMAIN, "ErrorInfo.domain");
  checkEqual(info.reason, reason, "ErrorInfo.reason");
  for (const [key, value] of Object.entries(metadata)) {
    checkEqual(info.metadata?.[key], value, `ErrorInfo.metadata["${key}"] of ${reason}`);
  }
  return `${info.domain} ${info.reason}`;
}

// ---------------------------------------------------------------------------------------
// Calls

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolvePromise, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (error, response) =>
      error ? reject(error) : resolvePromise(response),
    );
  });
}

// Sends the messages on a Write stream, half-closes, and returns the WriteResponse.
function writeStream(blobs, messages) {
  return new Promise((resolvePromise, reject) => {
    const call = blobs.Write({ deadline: Date.now() + DEADLINE_MS }, (error, response) =>
      error ? reject(error) : resolvePromise(response),
    );
    for (const message of messages) call.write(message);
    call.end();
  });
}

function readStream(blobs, request) {
  return new Promise((resolvePromise, reject) => {
    const chunks = [];
    const call = blobs.Read(request, { deadline: Date.now() + DEADLINE_MS });
    call.on("data", (response) => chunks.push(response.data));
    call.on("error", reject);
    call.on("end", () => resolvePromise(chunks));
  });
}

// Reads `count` messages from a Watch stream, then cancels it.
function watchFirst(metadataClient, request, count, headers) {
  return new Promise((resolvePromise, reject) => {
    const messages = [];
    const call = metadataClient.Watch(request, headers, { deadline: Date.now() + DEADLINE_MS });
    call.on("data", (message) => {
      messages.push(message);
      if (messages.length === count) {
        call.cancel();
        resolvePromise(messages);
      }
    });
    call.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED || messages.length < count) reject(error);
    });
    call.on("end", () => reject(new Failure(`Watch ended after ${messages.length} messages`)));
  });
}

// ---------------------------------------------------------------------------------------
// The flow

const blobAddr = process.env.MREG_BLOB_ADDR;
const metadataAddr = process.env.MREG_METADATA_ADDR;
if (!blobAddr || !metadataAddr) {
  console.error("usage: MREG_BLOB_ADDR=host:port MREG_METADATA_ADDR=host:port node tests/node/conformance.mjs");
  process.exit(2);
}

// Plaintext unless a CA, a client certificate or MREG_TLS asks for TLS (the Python client's rule).
function channelCredentials(env) {
  const pem = (name) => (env[name] ? readFileSync(env[name]) : null);
  const ca = pem("MREG_CA_CERT");
  const cert = pem("MREG_CLIENT_CERT");
  const key = pem("MREG_CLIENT_KEY");
  if ((cert === null) !== (key === null)) {
    console.error("MREG_CLIENT_CERT and MREG_CLIENT_KEY go together: set both or neither");
    process.exit(2);
  }
  const tls = ["1", "true", "yes"].includes((env.MREG_TLS ?? "").toLowerCase());
  if (!tls && ca === null && cert === null) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(ca, key, cert);
}

// Adds "authorization: Bearer <token>" to every call; an interceptor rather than call
// credentials, which grpc-js sends only over TLS (the token works on loopback plaintext too).
function bearer(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

const credentials = channelCredentials(process.env);
const token = process.env.MREG_TOKEN ?? "";
const clientOptions = token ? { interceptors: [bearer(token)] } : {};
const blobs = new api.mreg.blob.v1.BlobService(blobAddr, credentials, clientOptions);
const registry = new api.mreg.metadata.v1.MetadataService(metadataAddr, credentials, clientOptions);

// A project of its own, so the run sees only what it made, on a server shared with others.
const ENTITY = "node-conformance";
const PROJECT = `run-${randomBytes(6).toString("hex")}`;
const headers = new grpc.Metadata();
headers.set("mreg-entity", ENTITY);
headers.set("mreg-project", PROJECT);
headers.set("mreg-actor", "conformance.mjs");
const call = (method, request) => unary(registry, method, request, headers);
const tokens = new api.mreg.metadata.v1.TokenService(metadataAddr, credentials, clientOptions);
const caller = await unary(tokens, "GetCaller", {});
tokens.close();
const actor = caller.authentication_enabled ? caller.token.name : "conformance.mjs";
const digestOf = (f) => ({ hash: f.hash, size_bytes: f.size });

const workdir = mkdtempSync(join(tmpdir(), "mreg-node-conformance-"));
process.on("exit", () => rmSync(workdir, { recursive: true, force: true }));

let capabilities;
let files;
let manifest;
let version1;
let version2;
let registeredModel;
let link;
const errors = {};

console.log(`mreg conformance: blob ${blobAddr}, metadata ${metadataAddr}, project ${ENTITY}/${PROJECT}`);

await step("manifest digest test vectors (RFC 8785 JCS)", () => {
  const { vectors } = JSON.parse(readFileSync(join(PROTOS, "mreg/metadata/v1/testdata/manifest_digest_vectors.json")));
  check(vectors.length > 0, "no test vectors");
  for (const v of vectors) {
    for (const e of v.manifest) {
      if (e.content === undefined) continue;
      const content = Buffer.from(e.content, "utf8");
      checkEqual(sha256(content), e.digest.hash, `${v.name}: sha256 of ${e.path}`);
      checkEqual(content.length, e.digest.size_bytes, `${v.name}: size of ${e.path}`);
    }
    const entries = v.manifest.map((e) => ({
      path: e.path,
      hash: e.digest.hash,
      size: e.digest.size_bytes,
      metadata: e.metadata,
    }));
    const canonical = canonicalManifest(entries);
    check(
      canonical.toString("utf8") === v.canonical_json,
      `${v.name}: canonical form\n    got      ${canonical}\n    expected ${v.canonical_json}`,
    );
    checkEqual(sha256(canonical), v.digest, `${v.name}: digest`);
  }
  return `${vectors.length} vectors: ${vectors.map((v) => v.name).join(", ")}`;
});

await step("BlobService.GetCapabilities", async () => {
  capabilities = await unary(blobs, "GetCapabilities", {});
  checkEqual(capabilities.digest_function, "DIGEST_FUNCTION_SHA256", "digest_function");
  for (const field of [
    "max_batch_total_size_bytes",
    "max_batch_blobs",
    "max_receive_message_size_bytes",
    "read_chunk_size_bytes",
    "write_chunk_size_bytes",
  ]) {
    check(capabilities[field] > 0, `${field} is ${capabilities[field]}, not positive`);
  }
  return (
    `sha256, batch ${capabilities.max_batch_total_size_bytes} B, ` +
    `read chunk ${capabilities.read_chunk_size_bytes} B, write chunk ${capabilities.write_chunk_size_bytes} B`
  );
});

await step("hash files in Node (SHA-256)", () => {
  const chunk = capabilities.write_chunk_size_bytes;
  const largeSize = Math.max(2 * chunk, 1 << 20) + 123_457; // several Write chunks, over 1 MiB
  const contents = {
    "config.json": Buffer.from(JSON.stringify({ layers: 50, run: PROJECT }) + "\n"),
    "README.md": Buffer.from(`# conformance ${PROJECT}\n`),
    "weights/model.bin": randomBytes(largeSize),
    "empty.txt": Buffer.alloc(0),
  };
  files = {};
  for (const [path, data] of Object.entries(contents)) {
    const onDisk = join(workdir, path.replaceAll("/", "_"));
    writeFileSync(onDisk, data);
    const bytes = readFileSync(onDisk);
    files[path] = { path, bytes, hash: sha256(bytes), size: bytes.length };
  }
  checkEqual(files["empty.txt"].hash, EMPTY_SHA256, "sha256 of the empty file");
  return Object.values(files)
    .map((f) => `${f.path} ${f.size} B ${f.hash.slice(0, 12)}`)
    .join("; ");
});

await step("BlobService.FindMissingBlobs", async () => {
  const all = Object.values(files);
  const { missing_blob_digests } = await unary(blobs, "FindMissingBlobs", { blob_digests: all.map(digestOf) });
  const missing = new Set(missing_blob_digests.map((d) => `${d.hash}/${d.size_bytes}`));
  for (const f of all) {
    const expected = f.size !== 0; // the empty blob is always present
    check(missing.has(`${f.hash}/${f.size}`) === expected, `${f.path}: missing should be ${expected}`);
  }
  return `${missing.size} of ${all.length} missing (the empty blob is always present)`;
});

await step("BlobService.BatchUpdateBlobs (small files)", async () => {
  const small = [files["config.json"], files["README.md"]];
  const { responses } = await unary(blobs, "BatchUpdateBlobs", {
    requests: small.map((f) => ({ digest: digestOf(f), data: f.bytes })),
  });
  checkEqual(responses.length, small.length, "number of responses");
  responses.forEach((r, i) => {
    checkEqual(r.digest.hash, small[i].hash, `response ${i} digest`);
    check(r.status === null || r.status.code === 0, `${small[i].path}: status ${JSON.stringify(r.status)}`);
  });
  return `${small.length} blobs stored`;
});

await step("BlobService.Write (chunked, resumed) + QueryWriteStatus", async () => {
  const f = files["weights/model.bin"];
  const chunk = capabilities.write_chunk_size_bytes;
  const upload_id = randomUUID(); // 1 to 128 letters, digits, '-' or '_'
  const digest = digestOf(f);
  const messages = [];
  for (let offset = 0; offset < f.size; offset += chunk) {
    const data = f.bytes.subarray(offset, Math.min(offset + chunk, f.size));
    messages.push({ upload_id, digest, write_offset: offset, data, finish_write: offset + data.length === f.size });
  }
  check(messages.length >= 2, `expected several chunks, got ${messages.length}`);
  // First stream: one chunk, then a half-close without finish_write; the bytes are kept.
  const first = { ...messages[0], finish_write: false };
  const partial = await writeStream(blobs, [first]);
  checkEqual(partial.committed_size, first.data.length, "committed_size after a half-closed first chunk");
  const status = await unary(blobs, "QueryWriteStatus", { upload_id, digest });
  checkEqual([status.committed_size, status.complete], [first.data.length, false], "QueryWriteStatus mid-upload");
  // Second stream: the same upload continues from committed_size with the rest.
  const done = await writeStream(blobs, messages.slice(1));
  checkEqual(done.committed_size, f.size, "committed_size at the end");
  const final = await unary(blobs, "QueryWriteStatus", { upload_id, digest });
  checkEqual(final.complete, true, "QueryWriteStatus.complete after finish_write");
  const { missing_blob_digests } = await unary(blobs, "FindMissingBlobs", { blob_digests: [digest] });
  checkEqual(missing_blob_digests.length, 0, "missing digests after the upload");
  return `${f.size} B in ${messages.length} chunks, resumed at ${status.committed_size}`;
});

await step("MetadataService.CreateVersion + CommitVersion (headers mreg-entity/mreg-project)", async () => {
  const created = await call("CreateVersion", {
    parent: "resnet", // entity and project come from the headers
    type: "model",
    description: "pushed by the Node conformance test",
    tags: ["node"],
    metadata: toStruct({ framework: "grpc-js" }),
    request_id: randomUUID(),
  });
  checkEqual(created.version.state, "VERSION_STATE_PENDING", "state of the new version");
  check(created.version.uid, "the pending version has no uid");
  const entryMetadata = {
    "weights/model.bin": { lr: 0.1, eps: 1e-7, scale: 1.0, big: 1e21, größe: { k: [1.5, true, null] }, "😀": "x" },
  };
  manifest = Object.values(files).map((f) => ({ path: f.path, hash: f.hash, size: f.size, metadata: entryMetadata[f.path] }));
  const response = await call("CommitVersion", {
    uid: created.version.uid,
    manifest: manifest.map((e) => ({
      path: e.path,
      digest: { hash: e.hash, size_bytes: e.size },
      metadata: e.metadata ? toStruct(e.metadata) : null,
    })),
    aliases: ["candidate"],
    request_id: randomUUID(),
  });
  version1 = response.version;
  checkEqual(response.created, true, "created");
  checkEqual(version1.name, `${ENTITY}/${PROJECT}/resnet:v0`, "committed version name");
  checkEqual(version1.state, "VERSION_STATE_COMMITTED", "state");
  checkEqual(version1.index, 0, "index (indexes start at v0)");
  checkEqual(version1.file_count, manifest.length, "file_count");
  checkEqual(version1.size_bytes, manifest.reduce((n, e) => n + e.size, 0), "size_bytes");
  checkEqual([...version1.aliases].sort(), ["candidate", "latest"], "aliases");
  const returned = version1.manifest.map((e) => e.path);
  checkEqual(returned, [...returned].sort(), "manifest sorted by path");
  checkSameJson(fromStruct(version1.manifest.find((e) => e.path === "weights/model.bin").metadata), entryMetadata["weights/model.bin"], "entry metadata round trip");
  return `${version1.name}, ${version1.file_count} files`;
});

await step("manifest digest: server == canonical form computed in Node", () => {
  const canonical = canonicalManifest(manifest);
  const expected = sha256(canonical);
  checkEqual(version1.digest, expected, `Version.digest of ${canonical}`);
  return expected;
});

await step("second version in one call (CommitVersion with new_version, content already stored)", async () => {
  const f = files["config.json"];
  const response = await call("CommitVersion", {
    new_version: { parent: "resnet", type: "model", tags: ["one-call"] },
    manifest: [{ path: f.path, digest: digestOf(f) }],
    request_id: randomUUID(),
  });
  version2 = response.version;
  checkEqual(response.created, true, "created");
  checkEqual([version2.index, version2.state, [...version2.tags]], [1, "VERSION_STATE_COMMITTED", ["one-call"]], "index, state, tags");
  checkEqual(version2.digest, sha256(canonicalManifest([{ path: f.path, hash: f.hash, size: f.size }])), "digest");
  return version2.name;
});

await step("SetAlias with compare-and-set (expect_unset, then expected_index)", async () => {
  const first = await call("SetAlias", { name: "resnet:v0", alias: "best", expect_unset: true, request_id: randomUUID() });
  checkEqual([first.parent, first.alias.alias, first.alias.index], [`${ENTITY}/${PROJECT}/resnet`, "best", 0], "best -> v0");
  checkEqual(first._previous_index, undefined, "previous_index of a new alias");
  const moved = await call("SetAlias", { name: "resnet:v1", alias: "best", expected_index: 0, request_id: randomUUID() });
  checkEqual([moved.alias.index, moved.previous_index], [1, 0], "best -> v1 (index, previous_index)");
  return "best: unset -> v0 -> v1 (expected_index 0)";
});

await step("SetAlias with a wrong expected_index -> FAILED_PRECONDITION", async () => {
  const error = await expectError(
    call("SetAlias", { name: "resnet:v0", alias: "best", expected_index: 0, request_id: randomUUID() }),
    grpc.status.FAILED_PRECONDITION,
  );
  errors.alias = statusDetails(error);
  const resolved = await call("ResolveReference", { name: "resnet:best" });
  checkEqual(resolved.version.index, 1, "best still names v1");
  return `"${errors.alias.message}"`;
});

await step("CreateRegisteredModel", async () => {
  const response = await call("CreateRegisteredModel", {
    name: "Image Classifier",
    type: "model",
    description: "# Image classifier\nModel card.",
    request_id: randomUUID(),
  });
  registeredModel = response.registered_model;
  checkEqual(registeredModel.name, `${ENTITY}/${PROJECT}/Image Classifier`, "name");
  checkEqual(registeredModel.type, "model", "type");
  return registeredModel.name;
});

await step("CreateLink (with alias staging)", async () => {
  const response = await call("CreateLink", {
    version: "resnet:best",
    parent: "Image Classifier",
    aliases: ["staging"],
    request_id: randomUUID(),
  });
  link = response.link;
  checkEqual(response.created, true, "created");
  checkEqual([link.name, link.index], [`${registeredModel.name}:v0`, 0], "link name and index");
  checkEqual(link.version.name, version2.name, "linked version");
  check(link.aliases.includes("staging"), `link aliases ${JSON.stringify(link.aliases)} lack staging`);
  return `${link.name} -> ${link.version.name}`;
});

await step("ResolveReference by alias through the registered model", async () => {
  const response = await call("ResolveReference", { name: "Image Classifier:staging" });
  checkEqual(response.link?.name, link.name, "link");
  checkEqual(response.version.name, version2.name, "version");
  checkEqual(response.version.digest, version2.digest, "digest");
  checkEqual(
    response.version.manifest.map((e) => [e.path, e.digest.hash, e.digest.size_bytes]),
    [["config.json", files["config.json"].hash, files["config.json"].size]],
    "manifest",
  );
  return `Image Classifier:staging -> ${response.version.name}`;
});

await step("BlobService.Read the content back (stream)", async () => {
  const resolved = await call("ResolveReference", { name: "resnet:candidate" });
  const entry = resolved.version.manifest.find((e) => e.path === "weights/model.bin");
  const chunks = await readStream(blobs, { digest: entry.digest });
  const data = Buffer.concat(chunks);
  check(data.equals(files["weights/model.bin"].bytes), `read ${data.length} bytes that differ from those written`);
  checkEqual(sha256(data), entry.digest.hash, "sha256 of the bytes read");
  check(chunks.length >= 2, `expected several chunks, got ${chunks.length}`);
  for (const c of chunks.slice(0, -1)) checkEqual(c.length, capabilities.read_chunk_size_bytes, "chunk size");
  const small = Buffer.concat(await readStream(blobs, { digest: digestOf(files["README.md"]) }));
  check(small.equals(files["README.md"].bytes), "README.md read back differs");
  return `${data.length} B in ${chunks.length} chunks, identical`;
});

await step("UpdateVersion (description, tags, metadata merge)", async () => {
  const response = await call("UpdateVersion", {
    name: "resnet:v0",
    description: "evaluated",
    add_tags: ["evaluated"],
    remove_tags: ["node"],
    metadata: toStruct({ val_loss: 0.125, framework: null }),
    metadata_mode: "METADATA_UPDATE_MODE_MERGE",
    request_id: randomUUID(),
  });
  const v = response.version;
  checkEqual([v.name, v.description, v.tags], [version1.name, "evaluated", ["evaluated"]], "name, description, tags");
  checkSameJson(fromStruct(v.metadata), { val_loss: 0.125 }, "merged metadata");
  checkEqual(v.digest, version1.digest, "digest (never changes)");
  return `${v.name}: tags ${JSON.stringify(v.tags)}, metadata ${JSON.stringify(fromStruct(v.metadata))}`;
});

await step("ListArtifacts with a filter", async () => {
  const parent = `${ENTITY}/${PROJECT}`;
  const hit = await call("ListArtifacts", { parent, filter: 'name = "res*" AND type = "model"' });
  checkEqual(hit.artifacts.map((a) => [a.name, a.type, a.version_count]), [[`${parent}/resnet`, "model", 2], ], "artifacts");
  const miss = await call("ListArtifacts", { parent, filter: 'type = "dataset"' });
  checkEqual(miss.artifacts.length, 0, "artifacts of type dataset");
  return `${hit.artifacts.length} matched name = "res*" AND type = "model", none of type dataset`;
});

await step("Watch (first messages, then cancel)", async () => {
  const messages = await watchFirst(registry, { start_after: 0, resource_prefix: `${ENTITY}/${PROJECT}/` }, 6, headers);
  check(!messages[0].event, "the first Watch message carries an event; expected only the starting sequence");
  const events = messages.slice(1).map((m) => m.event);
  for (const e of events) {
    check(e, "a replayed message carries no event");
    check(e.resource.startsWith(`${ENTITY}/${PROJECT}/`), `event resource ${e.resource} outside the prefix`);
    check(e.sequence > 0 && e.sequence <= messages.at(-1).sequence, `event sequence ${e.sequence} out of range`);
  }
  const sequences = events.map((e) => e.sequence);
  checkEqual(sequences, [...sequences].sort((a, b) => a - b), "event order");
  const committed = events.find((e) => e.kind === "version.committed");
  check(committed, `no version.committed among ${JSON.stringify(events.map((e) => e.kind))}`);
  checkEqual(committed.resource, version1.name, "resource of the first version.committed");
  // Without authentication the actor is what the mreg-actor header declares; with it, the
  // token's name (GetCaller), whatever the header says.
  for (const e of events) checkEqual(e.actor, actor, `actor of ${e.kind}`);
  return events.map((e) => `${e.sequence} ${e.kind} ${e.resource}`).join("; ");
});

await step("CreateLink into a missing registered model -> NOT_FOUND", async () => {
  const error = await expectError(
    call("CreateLink", { version: "resnet:v0", parent: "No Such Model", request_id: randomUUID() }),
    grpc.status.NOT_FOUND,
  );
  errors.link = statusDetails(error);
  return `"${errors.link.message}"`;
});

await step("CommitVersion naming a blob never uploaded -> FAILED_PRECONDITION + PreconditionFailure", async () => {
  const created = await call("CreateVersion", { parent: "incomplete", type: "model", request_id: randomUUID() });
  const ghost = randomBytes(64);
  const digest = { hash: sha256(ghost), size_bytes: ghost.length };
  const request_id = randomUUID();
  const error = await expectError(
    call("CommitVersion", {
      uid: created.version.uid,
      manifest: [{ path: "ghost.bin", digest }, { path: "config.json", digest: digestOf(files["config.json"]) }],
      request_id,
    }),
    grpc.status.FAILED_PRECONDITION,
  );
  errors.missing = statusDetails(error);
  const failure = detailOf(errors.missing, "google.rpc.PreconditionFailure");
  check(failure, `no google.rpc.PreconditionFailure in ${JSON.stringify(errors.missing.details.map((d) => d.typeName))}`);
  checkEqual(
    failure.violations.map((v) => [v.type, v.subject]),
    [["MISSING_BLOB", `blobs/${digest.hash}/${digest.size_bytes}`]],
    "violations (type, subject)",
  );
  // A refused commit records nothing: upload the blob, retry with the same request_id.
  const { responses } = await unary(blobs, "BatchUpdateBlobs", { requests: [{ digest, data: ghost }] });
  check(responses[0].status === null || responses[0].status.code === 0, "uploading the missing blob failed");
  const retried = await call("CommitVersion", {
    uid: created.version.uid,
    manifest: [{ path: "ghost.bin", digest }, { path: "config.json", digest: digestOf(files["config.json"]) }],
    request_id,
  });
  checkEqual(retried.version.name, `${ENTITY}/${PROJECT}/incomplete:v0`, "the retried commit");
  return `violation MISSING_BLOB blobs/${digest.hash.slice(0, 12)}.../${digest.size_bytes}; retry after upload committed`;
});

await step(`ErrorInfo (domain ${ERROR_DOMAIN}) on the errors above`, () => {
  const link = checkErrorInfo(errors.link, "REGISTERED_MODEL_NOT_FOUND");
  const alias = checkErrorInfo(errors.alias, "ALIAS_EXPECTATION_FAILED", { alias: "best", current_index: "1" });
  const missing = checkErrorInfo(errors.missing, "MISSING_BLOB");
  return [link, `${alias} current_index=1`, missing].join("; ");
});

if (token) {
  await step("authentication: no token is UNAUTHENTICATED, another entity PERMISSION_DENIED", async () => {
    const anonymous = new api.mreg.metadata.v1.MetadataService(metadataAddr, credentials);
    const missing = await expectError(
      unary(anonymous, "ListArtifacts", { parent: `${ENTITY}/${PROJECT}` }),
      grpc.status.UNAUTHENTICATED,
    );
    anonymous.close();
    const unauthenticated = checkErrorInfo(statusDetails(missing), "TOKEN_MISSING");
    const outside = await expectError(
      call("ListArtifacts", { parent: "elsewhere/not-granted" }),
      grpc.status.PERMISSION_DENIED,
    );
    const denied = checkErrorInfo(statusDetails(outside), "PERMISSION_DENIED", { scope: "elsewhere/not-granted" });
    const anonymousBlobs = new api.mreg.blob.v1.BlobService(blobAddr, credentials);
    await expectError(unary(anonymousBlobs, "GetCapabilities", {}), grpc.status.UNAUTHENTICATED);
    anonymousBlobs.close();
    return `${unauthenticated}; ${denied}; blob service UNAUTHENTICATED too`;
  });
}

registry.close();
blobs.close();
console.log(`conformance passed: ${stepNumber} steps`);
