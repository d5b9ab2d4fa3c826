// Validates a Prisma schema with @prisma/prisma-schema-wasm (Prisma's own schema engine,
// compiled to Wasm; no database, no network) and prints a compact JSON description of
// its models as the database sees them: table and column names, native types,
// nullability, defaults, primary keys, unique keys, indexes and foreign keys. Used by
// tests/prisma.rs, which compares it with a migrated PostgreSQL database.
//
//   node tests/prisma/dmmf.mjs path/to/schema.prisma
//
// The package comes from $MEMSHIFT_NODE_MODULES (a node_modules directory; scripts/test
// installs the pinned version there) or else from normal module resolution.
//
// Exit status: 0 valid (JSON on stdout); 1 the schema is invalid (Prisma's errors on
// stderr); 2 usage or I/O error; 3 the package cannot be loaded.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const PACKAGE = "@prisma/prisma-schema-wasm";

function fail(code, message) {
  process.stderr.write(`dmmf.mjs: ${message}\n`);
  process.exit(code);
}

const stripAnsi = (s) => String(s).replace(/\u001b\[[0-9;]*m/g, "");

// Prisma's errors come as JSON `{"error_code", "message"}` inside a thrown Error.
function prismaError(e) {
  const raw = e instanceof Error ? e.message : String(e);
  try {
    const parsed = JSON.parse(raw);
    return stripAnsi(`${parsed.error_code ?? ""} ${parsed.message ?? raw}`.trim());
  } catch {
    return stripAnsi(raw);
  }
}

function loadPackage() {
  const require = createRequire(import.meta.url);
  const dir = process.env.MEMSHIFT_NODE_MODULES;
  const target = dir ? path.resolve(dir, PACKAGE) : PACKAGE;
  // Without a registry, a panic inside the Wasm module hides its message behind a TypeError.
  globalThis.PRISMA_WASM_PANIC_REGISTRY ??= {
    set_message(message) {
      process.stderr.write(`dmmf.mjs: ${PACKAGE} panicked: ${message}\n`);
    },
  };
  let wasm, version;
  try {
    wasm = require(target);
    version = require(path.join(path.dirname(require.resolve(target)), "..", "package.json")).version;
  } catch (e) {
    fail(
      3,
      `cannot load ${PACKAGE} from ${dir ? `MEMSHIFT_NODE_MODULES=${dir}` : "the module path"}: ` +
        `${e.message}\nInstall it with scripts/test (which caches the pinned version and sets ` +
        `MEMSHIFT_NODE_MODULES), or: npm install --prefix DIR --no-audit --no-fund ` +
        `${PACKAGE}@VERSION and export MEMSHIFT_NODE_MODULES=DIR/node_modules`,
    );
  }
  return { wasm, version };
}

const file = process.argv[2];
if (!file || process.argv.length > 3) fail(2, "usage: node tests/prisma/dmmf.mjs SCHEMA.prisma");
let schema;
try {
  schema = readFileSync(file, "utf8");
} catch (e) {
  fail(2, `cannot read ${file}: ${e.message}`);
}

const { wasm, version } = loadPackage();
const files = [[path.basename(file), schema]];

// `validate` throws on an invalid schema; get_dmmf and get_config would too, but validate
// is the documented check (the one `prisma validate` runs).
try {
  wasm.validate(JSON.stringify({ prismaSchema: files, noColorErrors: true }));
} catch (e) {
  fail(1, `${file} is not a valid Prisma schema:\n${prismaError(e)}`);
}

let datamodel, config, formatted;
try {
  datamodel = JSON.parse(wasm.get_dmmf(JSON.stringify({ prismaSchema: files }))).datamodel;
  config = JSON.parse(
    wasm.get_config(JSON.stringify({ prismaSchema: files, ignoreEnvVarErrors: true, env: {} })),
  );
  const formatParams = { textDocument: { uri: "file:/schema.prisma" }, options: { tabSize: 2, insertSpaces: true } };
  formatted = JSON.parse(wasm.format(JSON.stringify(files), JSON.stringify(formatParams)))[0][1];
} catch (e) {
  fail(1, `${PACKAGE} could not describe ${file}:\n${prismaError(e)}`);
}
if (config.errors?.length) fail(1, `${file}: ${JSON.stringify(config.errors)}`);

// The DMMF leaves out two things the database has: `Unsupported("...")` fields (the client
// cannot read them) and the names of foreign-key constraints (`@relation(map: ...)`). Both
// are read from Prisma's own formatting of the (already valid) schema: one field a line.
function modelBlocks(text) {
  const blocks = new Map();
  let current = null;
  for (const line of text.split("\n")) {
    const start = /^model\s+(\w+)\s*\{/.exec(line);
    if (start) {
      current = [];
      blocks.set(start[1], current);
    } else if (current && /^\}/.test(line)) {
      current = null;
    } else if (current) {
      current.push(line.replace(/\/\/.*$/, ""));
    }
  }
  return blocks;
}
const blocks = modelBlocks(formatted);
const stringArg = (attrs, name) => {
  const m = new RegExp(`${name}\\s*:\\s*"((?:[^"\\\\]|\\\\.)*)"`).exec(attrs);
  return m ? m[1] : null;
};

const models = new Map(datamodel.models.map((m) => [m.name, m]));
const tableOf = (model) => model.dbName ?? model.name;
const columnOf = (model, fieldName) => {
  const field = model.fields.find((f) => f.name === fieldName);
  return field?.dbName ?? fieldName;
};
// Prisma's default constraint names (what it expects in the database when no `map:`).
const defaultName = (table, columns, suffix) => (suffix === "pkey" ? `${table}_pkey` : [table, ...columns, suffix].join("_")).slice(0, 63);

const description = datamodel.models.map((model) => {
  const table = tableOf(model);
  const columns = model.fields
    .filter((f) => f.kind === "scalar" || f.kind === "enum")
    .map((f) => ({
      field: f.name,
      column: f.dbName ?? f.name,
      type: f.type,
      nativeType: f.nativeType ? { name: f.nativeType[0], args: f.nativeType[1] } : null,
      unsupported: null,
      optional: !f.isRequired,
      list: f.isList,
      default: f.hasDefaultValue ? f.default : null,
      updatedAt: f.isUpdatedAt,
    }));
  const relations = [];
  for (const line of blocks.get(model.name) ?? []) {
    const unsupported = /^\s*(\w+)\s+Unsupported\("((?:[^"\\]|\\.)*)"\)(\?|\[\])?\s*(.*)$/.exec(line);
    if (unsupported) {
      const [, name, type, modifier, attrs] = unsupported;
      const map = /@map\(\s*(?:name\s*:\s*)?"((?:[^"\\]|\\.)*)"/.exec(attrs);
      const dflt = /@default\((.*)\)/.exec(attrs);
      columns.push({
        field: name,
        column: map ? map[1] : name,
        type: "Unsupported",
        nativeType: null,
        unsupported: type,
        optional: modifier === "?",
        list: modifier === "[]",
        default: dflt ? { raw: dflt[1] } : null,
        updatedAt: false,
      });
    }
  }
  for (const f of model.fields.filter((f) => f.kind === "object" && f.relationFromFields?.length)) {
    const target = models.get(f.type);
    const cols = f.relationFromFields.map((n) => columnOf(model, n));
    const line = (blocks.get(model.name) ?? []).find((l) => new RegExp(`^\\s*${f.name}\\s`).test(l)) ?? "";
    const relation = /@relation\((.*)\)/.exec(line);
    const mapped = relation ? stringArg(relation[1], "map") : null;
    relations.push({
      field: f.name,
      name: mapped ?? defaultName(table, cols, "fkey"),
      columns: cols,
      referencesTable: tableOf(target),
      referencesColumns: f.relationToFields.map((n) => columnOf(target, n)),
      // Prisma's defaults when the schema names no action.
      onDelete: f.relationOnDelete ?? (f.isRequired ? "Restrict" : "SetNull"),
      onUpdate: f.relationOnUpdate ?? "Cascade",
    });
  }
  const indexes = datamodel.indexes
    .filter((i) => i.model === model.name)
    .map((i) => {
      const cols = i.fields.map((f) => columnOf(model, f.name));
      const suffix = { id: "pkey", unique: "key", normal: "idx", fulltext: "idx" }[i.type];
      return {
        kind: i.type,
        name: i.dbName ?? defaultName(table, cols, suffix),
        columns: cols,
        algorithm: i.algorithm ?? "BTree",
      };
    });
  return {
    model: model.name,
    table,
    schema: model.schema,
    columns,
    primaryKey: indexes.find((i) => i.kind === "id") ?? null,
    uniques: indexes.filter((i) => i.kind === "unique"),
    indexes: indexes.filter((i) => i.kind !== "id" && i.kind !== "unique"),
    relations,
  };
});

const datasource = config.config.datasources[0] ?? null;
process.stdout.write(
  JSON.stringify({
    package: `${PACKAGE}@${version}`,
    formatted: formatted === schema,
    datasource: datasource && {
      provider: datasource.provider,
      urlEnv: datasource.url?.fromEnvVar ?? null,
    },
    previewFeatures: config.config.generators.flatMap((g) => g.previewFeatures),
    models: description,
  }) + "\n",
);
