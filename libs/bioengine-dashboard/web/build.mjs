// Build the page into ../src/bioengine_dashboard/static (committed with the Python package, so
// serving it needs no Node.js): `npm ci && npm run build`. The output is reproducible: the same
// sources and lock give the same bytes. build-info.json records the digest of the sources, which
// a Python test recomputes (bioengine_dashboard.source_digest) to catch a stale build.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "bioengine_dashboard", "static");
const SOURCES = ["package.json", "package-lock.json", "build.mjs", "index.html", "src"];

function files(root, names) {
  const found = [];
  const walk = (path) => {
    const info = statSync(path, { throwIfNoEntry: false });
    if (!info) return;
    if (info.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
    else if (info.isFile()) found.push(path);
  };
  for (const name of names) walk(join(root, name));
  const key = (p) => relative(root, p).split("\\").join("/");
  return found.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0)).map((p) => [key(p), p]);
}

function digest(root) {
  const hash = createHash("sha256");
  for (const [name, path] of files(root, SOURCES)) {
    const data = readFileSync(path);
    hash.update(`${name}\n${data.length}\n`);
    hash.update(data);
  }
  return hash.digest("hex");
}

// hypha-rpc looks up typed array classes by name with eval() when it loads, which the page's
// Content Security Policy (script-src 'self', no 'unsafe-eval') refuses: the same lookup without
// eval. The build fails if hypha-rpc's code changed so that the line is gone.
const EVAL_LINE = "typedArrayToDtypeKeys.push(eval(arrType));";
const noEval = {
  name: "hypha-rpc-without-eval",
  setup(build) {
    build.onLoad({ filter: /hypha-rpc-websocket\.mjs$/ }, (args) => {
      const code = readFileSync(args.path, "utf8");
      if (!code.includes(EVAL_LINE)) throw new Error(`${args.path}: "${EVAL_LINE}" not found; check the patch`);
      return { contents: code.replace(EVAL_LINE, "typedArrayToDtypeKeys.push(globalThis[arrType]);"), loader: "js" };
    });
  },
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: { dashboard: join(here, "src", "main.js") },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  legalComments: "linked",
  plugins: [noEval],
  outdir: out,
  logLevel: "warning",
});
await esbuild.build({
  entryPoints: { dashboard: join(here, "src", "style.css") },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
const versions = Object.fromEntries(
  Object.entries(lock.packages || {})
    .filter(([path, info]) => path.startsWith("node_modules/") && !info.dev)
    .map(([path, info]) => [path.slice("node_modules/".length), info.version]),
);
writeFileSync(
  join(out, "build-info.json"),
  `${JSON.stringify({ sources_sha256: digest(here), packages: versions }, null, 2)}\n`,
);
console.log(`built ${relative(process.cwd(), out)}`);
