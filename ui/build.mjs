// Bundles the pages into loader/ui/static: index.html plus app.HASH.js and app.HASH.css,
// minified, every library from node_modules inlined (the page never fetches anything from the
// web). The hash (of the content) in the names lets the server cache them for a year
// (loader/ui/API.md); index.html names the current pair. Prints each file's gzip size and the
// total, which must stay under the 500 KB page budget of issue 16.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "loader", "ui", "static");
const BUDGET = 500 * 1024; // bytes of JS + CSS after gzip

let result;
try {
  result = await build({
    entryPoints: { app: join(here, "src", "main.js") },
    bundle: true,
    minify: true,
    format: "iife",
    target: ["chrome100", "firefox100", "safari15"],
    outdir: out,
    write: false,
    legalComments: "eof", // the libraries' licence headers stay in the bundle
    logLevel: "warning",
  });
} catch {
  // esbuild has printed each error with its file:line; its JS stack would only hide them
  console.error("build-ui: the bundle did not build (errors above)");
  process.exit(1);
}

mkdirSync(out, { recursive: true });
for (const old of readdirSync(out)) {
  if (/^app\.[0-9a-f]+\.(js|css)$/.test(old)) rmSync(join(out, old));
}
const names = {};
let total = 0;
for (const file of result.outputFiles) {
  const ext = extname(file.path);
  const hash = createHash("sha256").update(file.contents).digest("hex").slice(0, 12);
  const name = `${basename(file.path, ext)}.${hash}${ext}`;
  writeFileSync(join(out, name), file.contents);
  names[ext] = name;
  const gz = gzipSync(file.contents, { level: 9 }).length;
  total += gz;
  console.log(`build-ui: ${name} ${(file.contents.length / 1024).toFixed(1)} KB, ${(gz / 1024).toFixed(1)} KB gzip`);
}
const html = readFileSync(join(here, "src", "index.html"), "utf8")
  .replace("APP_JS", names[".js"]).replace("APP_CSS", names[".css"]);
writeFileSync(join(out, "index.html"), html);
console.log(`build-ui: page weight ${(total / 1024).toFixed(1)} KB gzip (budget ${BUDGET / 1024} KB)`);
if (total > BUDGET) {
  console.error(`build-ui: the page weighs ${total} bytes gzip, over the ${BUDGET}-byte budget: ` +
    "import fewer library modules (echarts/charts, echarts/components) or drop one");
  process.exit(1);
}
