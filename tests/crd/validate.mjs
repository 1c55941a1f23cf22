// Validates custom resources against their published schemas.
// stdin: a JSON array of objects; stdout: a JSON array with, per object, null (valid) or the error.
import { readFileSync } from "node:fs";

const PACKAGES = {
  "networking.istio.io": "@kubernetes-models/istio",
  "security.istio.io": "@kubernetes-models/istio",
  "argoproj.io": "@kubernetes-models/argo-cd",
  "cert-manager.io": "@kubernetes-models/cert-manager",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

async function check(obj) {
  const [group, version] = obj.apiVersion.split("/");
  const pkg = PACKAGES[group];
  if (!pkg) return `no published schema for ${obj.apiVersion}`;
  const mod = await import(`${pkg}/${group}/${version}/${obj.kind}`);
  const Model = mod[obj.kind] ?? mod.default;
  try {
    new Model(obj).validate();
    return null;
  } catch (err) {
    return String(err.message ?? err);
  }
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) results.push(await check(obj));
process.stdout.write(JSON.stringify(results));
