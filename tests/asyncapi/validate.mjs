// Parse an AsyncAPI document with the reference parser (@asyncapi/parser) and print its
// diagnostics, one a line: "<severity> <code> at <path> (line <n>): <message>", then a count.
// Exit status: 0 when no diagnostic is an error, 1 when any is, 2 when the file cannot be read.
//   node tests/asyncapi/validate.mjs docs/schemas/asyncapi.json
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";

import asyncapiParser from "@asyncapi/parser";

const { Parser } = asyncapiParser;
// Spectral's DiagnosticSeverity: 0 error, 1 warning, 2 information, 3 hint.
const SEVERITY = ["error", "warning", "information", "hint"];

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node validate.mjs <asyncapi document>");
  process.exit(2);
}
const source = resolve(file);
let text;
try {
  text = await readFile(source, "utf8");
} catch (error) {
  console.error(`cannot read ${source}: ${error.message}`);
  process.exit(2);
}

const { diagnostics } = await new Parser().parse(text, { source });
const counts = [0, 0, 0, 0];
for (const d of diagnostics) {
  counts[d.severity] += 1;
  const where = d.path.length ? d.path.join(".") : "(document)";
  const line = d.range.start.line + 1;
  console.log(`${SEVERITY[d.severity]} ${d.code} at ${where} (line ${line}): ${d.message}`);
}
console.log(
  `${file}: ${counts[0]} error(s), ${counts[1]} warning(s), ` +
    `${counts[2]} information, ${counts[3]} hint(s)`,
);
process.exit(counts[0] > 0 ? 1 : 0);
